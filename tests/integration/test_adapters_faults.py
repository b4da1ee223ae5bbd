"""Each adapter behind a fault proxy that blackholes its server: the breaker opens after its
window, calls then fail fast (latency printed), a half-open trial succeeds once the proxy heals and
the breaker closes; with retries allowed, they stop at the deadline.

The same scenario runs against Postgres, Redis and S3 (SeaweedFS), through each adapter's own
client and error classification, so what is tested is what an actor would meet.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from runtime.errors import DeadlineExceededError
from runtime.infra.seaweedfs import SeaweedFSServer
from runtime.resilience import (
    BreakerConfig,
    BreakerState,
    CallTimeoutError,
    CircuitOpenError,
    PolicyConfig,
    ResiliencePolicy,
    RetryConfig,
    deadline_after,
    deadline_scope,
)
from runtime.testing import FaultProxy

pytestmark = pytest.mark.slow

TIMEOUT_S = 0.3
OPEN_FOR_S = 1.0
WINDOW = 4

# The breaker under test: opens when half of the last 4 calls failed, stays open 1 s, and closes
# after one successful trial. One attempt per call, so each call is one window entry.
BREAKER_POLICY = PolicyConfig(
    timeout_s=TIMEOUT_S,
    retry=RetryConfig(max_attempts=1),
    breaker=BreakerConfig(
        window_size=WINDOW,
        minimum_calls=WINDOW,
        failure_rate_threshold=0.5,
        open_for_s=OPEN_FOR_S,
        half_open_calls=1,
    ),
)
# Retries as far as the deadline allows: many attempts, short waits, the breaker out of the way.
RETRY_POLICY = PolicyConfig(
    timeout_s=0.2,
    retry=RetryConfig(max_attempts=1000, backoff_initial_s=0.01, backoff_max_s=0.05),
    breaker=BreakerConfig(window_size=1000, minimum_calls=1000),
)


@dataclass
class Subject:
    """One dependency reached through a fault proxy: a cheap call and the policy it goes through."""

    proxy: FaultProxy
    call: Callable[[], Awaitable[object]]
    policy: ResiliencePolicy


Factory = Callable[[PolicyConfig], "AsyncIterator[Subject]"]


@asynccontextmanager
async def postgres_subject(url: str, unique: str, config: PolicyConfig) -> AsyncIterator[Subject]:
    from adapters.postgres import Database, drop_actor, postgres_policy, provision_actor

    actor = f"fault_{unique}"
    credentials = await provision_actor(url, actor)
    host, port = _address(url, 5432)
    try:
        async with FaultProxy(host, port) as proxy:
            db = await Database.connect(
                credentials,
                policy=postgres_policy(actor, config),
                host=proxy.host,
                port=proxy.port,
                min_size=0,
                max_size=4,
                connect_timeout_s=TIMEOUT_S,
            )
            try:
                yield Subject(proxy, lambda: db.fetchval("SELECT 1"), db.policy)
            finally:
                with anyio.move_on_after(5):
                    await db.close()
                db.pool.terminate()
    finally:
        await drop_actor(url, actor)


@asynccontextmanager
async def redis_subject(url: str, unique: str, config: PolicyConfig) -> AsyncIterator[Subject]:
    from adapters.redis import ActorRedis, drop_redis_user, provision_redis_user, redis_policy

    actor = f"fault_{unique}"
    credentials = await provision_redis_user(url, actor)
    host, port = _address(url, 6379)
    try:
        async with FaultProxy(host, port) as proxy:
            client = ActorRedis.connect(
                credentials,
                policy=redis_policy(actor, config),
                host=proxy.host,
                port=proxy.port,
                socket_timeout_s=TIMEOUT_S,
            )
            try:
                yield Subject(proxy, lambda: client.get("probe"), client.policy)
            finally:
                await client.aclose()
    finally:
        await drop_redis_user(url, actor)


@asynccontextmanager
async def s3_subject(
    server: SeaweedFSServer, unique: str, config: PolicyConfig
) -> AsyncIterator[Subject]:
    from adapters.storage import ObjectStore, SeaweedFSProvisioner, s3_policy

    actor = f"fault_{unique}"
    credentials = await SeaweedFSProvisioner(server).provision(actor)
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        store = ObjectStore(
            credentials,
            policy=s3_policy(actor, config),
            endpoint=f"http://{proxy.host}:{proxy.port}",
            connect_timeout_s=TIMEOUT_S,
            read_timeout_s=TIMEOUT_S,
        )
        async with store:
            await store.put("probe", b"ok")
            yield Subject(proxy, lambda: store.get("probe"), store.policy)


def _address(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("s3", marks=pytest.mark.s3),
    ]
)
def subject(request: pytest.FixtureRequest, unique: str) -> Callable[[PolicyConfig], object]:
    """A factory of :class:`Subject` context managers for the parametrised dependency."""
    kind = request.param
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        return lambda config: postgres_subject(url, unique, config)
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda config: redis_subject(url, unique, config)
    server = request.getfixturevalue("seaweed")
    return lambda config: s3_subject(server, unique, config)


async def test_breaker_opens_fails_fast_and_recovers_after_heal(
    subject: Callable[[PolicyConfig], object], request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.id
    async with subject(BREAKER_POLICY) as s:  # type: ignore[attr-defined]
        assert isinstance(s, Subject)
        await s.call()  # healthy through the proxy
        s.proxy.blackhole()
        failures = 0
        while s.policy.breaker.state is BreakerState.CLOSED:
            with pytest.raises(CallTimeoutError):
                await s.call()
            failures += 1
            assert failures <= WINDOW, "the breaker should have opened within its window"
        assert s.policy.breaker.state is BreakerState.OPEN

        fast: list[float] = []
        for _ in range(20):
            started = time.perf_counter()
            with pytest.raises(CircuitOpenError) as refused:
                await s.call()
            fast.append(time.perf_counter() - started)
            assert 0 < refused.value.retry_after_s <= OPEN_FOR_S
        fast.sort()
        print(
            f"\n[{name}] breaker opened after {failures} timed-out calls of {TIMEOUT_S}s; while "
            f"open, calls fail in median {fast[10] * 1e6:.0f} us, max {fast[-1] * 1e6:.0f} us"
        )

        s.proxy.heal()
        await anyio.sleep(OPEN_FOR_S)
        assert s.policy.breaker.state is BreakerState.HALF_OPEN
        started = time.perf_counter()
        await s.call()  # the trial: a fresh connection through the healed proxy
        print(
            f"[{name}] half-open trial succeeded in {(time.perf_counter() - started) * 1e3:.1f} ms"
        )
        assert s.policy.breaker.state is BreakerState.CLOSED
        await s.call()


async def test_retries_stop_at_the_deadline(
    subject: Callable[[PolicyConfig], object], request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.id
    budget_s = 1.0
    async with subject(RETRY_POLICY) as s:  # type: ignore[attr-defined]
        assert isinstance(s, Subject)
        await s.call()
        s.proxy.blackhole()
        started = time.perf_counter()
        with deadline_scope(deadline_after(budget_s)), pytest.raises(DeadlineExceededError):
            await s.call()
        elapsed = time.perf_counter() - started
        print(
            f"\n[{name}] retries gave up at the deadline: {elapsed:.3f}s for a {budget_s}s budget"
        )
        # Behaviour, not speed: 1000 attempts of 0.2 s would take minutes; it stopped at the budget.
        assert elapsed < budget_s + 1.0
        s.proxy.heal()
        await s.call()
