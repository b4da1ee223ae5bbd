"""The cache-aside :class:`~adapters.redis.Cache` under :data:`~adapters.redis.CACHE_POLICY`, with
the real Redis behind a fault proxy: while Redis is cut, lookups are answered by the loader, the
first ones after half a second (the policy's timeout, far inside the caller's deadline), then at
once because the breaker opened; nothing is written meanwhile; after healing the value is stored
and served from Redis again.

(With the default policy a cut Redis made every lookup wait out the caller's whole deadline and
fail with ``DeadlineExceededError``, and the breaker never opened: a deadline-bound call is not a
failure and was not slow enough to count as a slow call.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import msgspec
import pytest

from adapters.redis import (
    CACHE_POLICY,
    ActorRedis,
    Cache,
    drop_redis_user,
    provision_redis_user,
    redis_policy,
)
from runtime.metrics import registry
from runtime.resilience import BreakerState, deadline_after, deadline_scope
from runtime.testing import FaultProxy

pytestmark = pytest.mark.redis

DEADLINE_S = 5.0
OPEN_FOR_S = 0.3  # the product's 10 s, shortened so the test does not wait it out
POLICY = msgspec.structs.replace(
    CACHE_POLICY, breaker=msgspec.structs.replace(CACHE_POLICY.breaker, open_for_s=OPEN_FOR_S)
)


@asynccontextmanager
async def cut_able(redis_url: str, unique: str) -> AsyncIterator[tuple[FaultProxy, ActorRedis]]:
    """An actor's Redis client that reaches Redis only through a fault proxy (a context manager,
    not a fixture: the proxy's task group must be left by the task that entered it)."""
    actor = f"cache_{unique}"
    credentials = await provision_redis_user(redis_url, actor)
    parts = urlsplit(redis_url)
    try:
        async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
            client = ActorRedis.connect(
                credentials,
                policy=redis_policy(actor, POLICY),
                host=proxy.host,
                port=proxy.port,
            )
            try:
                yield proxy, client
            finally:
                proxy.heal()
                await client.aclose()
    finally:
        await drop_redis_user(redis_url, actor)


def _state(client: ActorRedis) -> BreakerState:
    return client.policy.breaker.state


def _unavailable(name: str) -> float:
    return registry.counter("greenroom_cache_lookups_total").value(
        actor=name, outcome="unavailable"
    )


async def test_a_cut_redis_costs_lookups_little_and_the_cache_comes_back(
    redis_url: str, unique: str
) -> None:
    async with cut_able(redis_url, unique) as (proxy, client):
        await _cut_then_heal(proxy, client)


async def _cut_then_heal(proxy: FaultProxy, client: ActorRedis) -> None:
    cache = Cache(client, int, ttl_s=60, namespace="n")
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return 42

    assert await cache.get_or_load("k", load) == 42
    assert await client.get("n:k") == b"42"
    proxy.blackhole()

    name = client.prefix.rstrip(":")
    before = _unavailable(name)
    took: list[float] = []
    for _ in range(CACHE_POLICY.breaker.minimum_calls + 5):
        started = time.monotonic()
        with deadline_scope(deadline_after(DEADLINE_S)):
            assert await cache.get_or_load("k", load) == 42
        took.append(time.monotonic() - started)
    print(f"\nlookups with Redis cut (s): {[round(t, 3) for t in took]}")
    assert _state(client) is BreakerState.OPEN
    # Every lookup went to the loader, none waited for the deadline, and the breaker opened
    # after at most ``minimum_calls`` of them: the rest never touched the socket.
    assert loads == 1 + len(took)
    assert _unavailable(name) - before == len(took)
    assert max(took) < DEADLINE_S / 2
    timed_out = [t for t in took if t >= CACHE_POLICY.timeout_s * 0.9]  # type: ignore[operator]
    assert len(timed_out) <= CACHE_POLICY.breaker.minimum_calls

    proxy.heal()
    await client.client.delete(client.key("n:k"))  # through the healed proxy, no policy
    # After the open period a lookup is a trial call: it misses and stores the value again.
    await anyio.sleep(OPEN_FOR_S)
    assert await cache.get_or_load("k", load) == 42
    assert await client.client.get(client.key("n:k")) == b"42"
    assert _state(client) is BreakerState.CLOSED
    served_by = loads
    assert await cache.get_or_load("k", load) == 42
    assert loads == served_by, "a lookup after healing was not served from Redis"
