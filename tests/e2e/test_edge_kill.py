"""SIGKILL of a responder node during a stream of HTTP requests: every request still ends.

Two ``Things`` replicas share the command topic's partitions behind one edge. A paced stream of
:data:`REQUESTS` ``GET /ping/{n}`` calls runs over about :data:`STREAM_S` seconds; a third of the
way in, one replica is SIGKILLed. Requests it held, and those routed to its partitions until the
group gives them to the survivor (session timeout + a few seconds on Tansu), get no reply: the
edge must answer them 504 at their deadline. Every other request succeeds. None may hang: the
client's timeout is the deadline plus :data:`MARGIN_S`, and a request that reaches it counts as
hung. Afterwards the survivor answers every key, so it took over all partitions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.support.edge_helpers import EdgeStack, StackFactory
from tests.support.wait import eventually_async

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.slow]

REQUESTS = 300
STREAM_S = 10.0
CONCURRENCY = 32
DEADLINE_S = 2.0
MARGIN_S = 3.0
KILL_AFTER = REQUESTS // 3
KEYS = 16


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Iterator[EdgeStack]:
    # Rate limits off: this test is about the bus, and 300 requests would trip the defaults.
    edge_args = ["--rate-limit-ip", "0", "--rate-limit-subject", "0"]
    with start_stack(things_replicas=2, edge_args=edge_args, request_timeout_s=DEADLINE_S) as s:
        yield s


async def test_sigkill_of_a_responder_mid_stream_ends_every_request_in_success_or_504(
    stack: EdgeStack,
) -> None:
    victim, survivor = stack.things
    outcomes: Counter[str] = Counter()
    after_kill: Counter[str] = Counter()
    slowest = 0.0
    killed_at: float | None = None
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal slowest
        async with limiter:
            started = time.monotonic()
            try:
                response = await client.get(f"/ping/{n}", timeout=DEADLINE_S + MARGIN_S)
            except httpx.TimeoutException:
                outcome = "hung"
            except httpx.HTTPError as exc:
                outcome = f"transport error {type(exc).__name__}"
            else:
                if response.status_code == 200 and response.json() == {"type": "e2e.Pong", "n": n}:
                    outcome = "ok"
                else:
                    outcome = f"{response.status_code} {response.json().get('error', '')}".strip()
            slowest = max(slowest, time.monotonic() - started)
            outcomes[outcome] += 1
            if killed_at is not None and started > killed_at:
                after_kill[outcome] += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=stack.url, limits=limits) as client:
        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(REQUESTS):
                # Paced, not all at once: a steady stream that the kill lands in the middle of.
                await anyio.sleep(max(0.0, began + i * STREAM_S / REQUESTS - time.monotonic()))
                if i == KILL_AFTER:
                    victim.kill()
                    killed_at = time.monotonic()
                    print(f"SIGKILL {victim.name} (pid {victim.pid}) after {i} requests")
                tg.start_soon(one, client, i % KEYS)
        stream_s = time.monotonic() - began

        # The survivor now owns every partition: each key gets an answer again.
        async def every_key_answers() -> bool:
            for n in range(KEYS):
                response = await client.get(f"/ping/{n}", timeout=DEADLINE_S + MARGIN_S)
                if response.status_code != 200:
                    return False
            return True

        await eventually_async(every_key_answers, within=60, interval=0.5)
        recovered_s = time.monotonic() - (killed_at or began)

    print(
        f"{REQUESTS} requests over {stream_s:.1f}s: {dict(outcomes)}; "
        f"after the kill: {dict(after_kill)}; slowest {slowest:.2f}s "
        f"(deadline {DEADLINE_S}s, client timeout {DEADLINE_S + MARGIN_S}s); "
        f"every key answered again {recovered_s:.1f}s after the kill"
    )
    assert survivor.alive
    assert outcomes["hung"] == 0
    assert set(outcomes) <= {"ok", "504 deadline"}, outcomes
    assert sum(outcomes.values()) == REQUESTS
    assert outcomes["ok"] > 0
