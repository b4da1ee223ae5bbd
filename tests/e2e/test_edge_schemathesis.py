"""schemathesis against the edge's own OpenAPI document: no 5xx but 503/504 for any input.

The edge is the real app under uvicorn on 127.0.0.1, in front of the test actors' real nodes
(signing keys fetched from the ``TestAuth`` node over the bus) on one in-process MemoryBroker,
with Redis for idempotency keys and rate limits off, so every generated request reaches the
pipeline. (test_edge_tansu covers the same path on Kafka; here the fuzzer's own cost dominates.)

For each operation in ``/schema/openapi.json`` schemathesis generates schema-conforming
(positive) and schema-violating (negative) requests, :data:`EXAMPLES` of each at most,
deterministically (Hypothesis ``derandomize``), each sent with a valid bearer token.
Anything 500-599 other than 503 (unavailable) and 504 (deadline) is a failure, listed with the
request that caused it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import pytest

from edge.app import create_app
from edge.config import EdgeConfig
from runtime.bus.memory import MemoryBroker
from runtime.config import Settings
from runtime.node import Node
from tests.support.edge_actors import ROUTES, TestAuth, Things
from tests.support.edge_helpers import AUDIENCE, ISSUER, TEST_KEY, delete_keys, serve

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

EXAMPLES = 175
"""Upper bound per operation and generation mode (Hypothesis may stop early on a small space)."""
MIN_REQUESTS = 1_000
ALLOWED_5XX = frozenset({503, 504})
SENDERS = 8


@asynccontextmanager
async def running_edge(redis_url: str, unique: str) -> AsyncIterator[str]:
    """The test actors as nodes on one MemoryBroker and the edge in front of them, on HTTP."""
    settings = Settings(broker="memory", topic_prefix=f"fuzz{unique}.", redis_url=redis_url)
    config = EdgeConfig(
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        redis_prefix=f"test:fuzz:{unique}:",
        rate_limit_per_ip=0,
        rate_limit_per_subject=0,
    )
    async with MemoryBroker() as broker, anyio.create_task_group() as tg:
        nodes = [Node(TestAuth, settings, broker=broker), Node(Things, settings, broker=broker)]
        for node in nodes:
            await tg.start(node.run)
        try:
            async with serve(create_app(settings, broker, routes=ROUTES, config=config)) as url:
                yield url
        finally:
            for node in nodes:
                node.drain()


@pytest.fixture(scope="module")
def edge_url(redis_url: str) -> Iterator[str]:
    unique = uuid.uuid4().hex[:10]
    # The server runs on an event loop in a thread of its own; schemathesis calls it with
    # blocking HTTP from this one.
    try:
        with (
            anyio.from_thread.start_blocking_portal() as portal,
            portal.wrap_async_context_manager(running_edge(redis_url, unique)) as url,
        ):
            yield url
    finally:
        delete_keys(redis_url, f"test:fuzz:{unique}:")


def fuzz(strategy: Any, send: Callable[[Any], object]) -> None:
    """Run ``send(case)`` for up to :data:`EXAMPLES` cases drawn from ``strategy``.

    Deterministic and bounded. No shrinking: a bad status is recorded, not raised, so one run
    reports every failing input at once.
    """
    import hypothesis
    from hypothesis import HealthCheck, Phase

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        send(case)

    run()


def test_generated_requests_never_get_a_5xx_other_than_503_or_504(edge_url: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    import hypothesis
    import requests

    schema = schemathesis.openapi.from_url(
        f"{edge_url}/schema/openapi.json", config=schemathesis.Config(), timeout=10
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the edge documents no operations"
    headers = TEST_KEY.bearer("fuzzer")
    statuses: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    failures: list[str] = []
    began = time.monotonic()

    sessions = threading.local()
    opened: list[requests.Session] = []
    lock = threading.Lock()

    def send(case: Any, label: str) -> None:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
            with lock:
                opened.append(sessions.session)
        response = case.call(
            base_url=edge_url, session=sessions.session, headers=headers, timeout=15
        )
        status = response.status_code
        with lock:
            statuses[status] += 1
            per_operation[f"{label} {status}"] += 1
            if 500 <= status < 600 and status not in ALLOWED_5XX:
                failures.append(
                    f"{status} for {case.method} {case.formatted_path} query={case.query!r} "
                    f"headers={case.headers!r} body={getattr(case, 'body', None)!r}: "
                    f"{response.text[:200]}"
                )

    # Hypothesis draws cases one by one; a few threads send them while it draws the next, so
    # the run is bounded by generation rather than by a round trip per case.
    with ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="fuzz") as pool:
        sent: list[Future[None]] = []
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                label = f"{operation.label} [{mode.value}]"
                try:
                    fuzz(
                        operation.as_strategy(generation_mode=mode),
                        lambda case, label=label: sent.append(pool.submit(send, case, label)),
                    )
                except hypothesis.errors.Unsatisfiable:
                    # No schema-violating input exists for this operation (e.g. a free string).
                    print(f"{label}: nothing to generate")
        try:
            for future in sent:
                future.result()  # re-raises a transport error (a refused connection, a timeout)
        finally:
            for session in opened:
                session.close()

    total = sum(statuses.values())
    print(
        f"schemathesis: {total} requests in {time.monotonic() - began:.1f}s; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    for label, count in per_operation.items():
        print(f"  {label}: {count}")
    assert not failures, "\n".join(failures[:20])
    assert total >= MIN_REQUESTS, f"only {total} requests generated"
