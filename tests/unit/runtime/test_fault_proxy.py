"""The fault proxy against the machine's real Redis and Postgres: each switch changes what a real
client sees, and heal() restores service. Assertions are about outcomes (answered, timed out,
refused, reset), never about durations."""

from __future__ import annotations

import uuid

import anyio
import pytest

from runtime.resilience import (
    BreakerConfig,
    BreakerState,
    CallTimeoutError,
    CircuitOpenError,
    PolicyConfig,
    ResiliencePolicy,
    RetryConfig,
)
from runtime.testing import FaultProxy

redis = pytest.importorskip("redis.asyncio")
asyncpg = pytest.importorskip("asyncpg")

from redis.asyncio.retry import Retry  # noqa: E402  (after the importorskip guard)
from redis.backoff import NoBackoff  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402
from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: E402

REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)


def redis_via(proxy: FaultProxy, timeout_s: float = 5.0) -> redis.Redis:
    """A client through the proxy that never retries on its own, so tests see each failure."""
    return redis.Redis(
        host=proxy.host,
        port=proxy.port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.mark.redis
async def test_traffic_passes_when_healthy() -> None:
    key = f"fault-proxy:{uuid.uuid4().hex}"
    async with FaultProxy(*REDIS) as proxy:
        client = redis_via(proxy)
        try:
            await client.set(key, "v", ex=60)
            assert await client.get(key) == b"v"
            assert proxy.connections == 1
        finally:
            await client.delete(key)
            await client.aclose()


@pytest.mark.redis
async def test_latency_outlasts_a_short_timeout_but_not_a_long_one() -> None:
    async with FaultProxy(*REDIS) as proxy:
        proxy.latency(0.3)
        impatient, patient = redis_via(proxy, 0.05), redis_via(proxy, 10.0)
        try:
            with pytest.raises(RedisTimeoutError):
                await impatient.ping()
            assert await patient.ping() is True  # delayed, not dropped
        finally:
            await impatient.aclose()
            await patient.aclose()


@pytest.mark.redis
async def test_blackhole_hangs_open_connections_until_heal() -> None:
    async with FaultProxy(*REDIS) as proxy:
        client = redis_via(proxy, 0.2)
        try:
            assert await client.ping() is True
            proxy.blackhole()
            with pytest.raises(RedisTimeoutError):
                await client.ping()
            proxy.heal()
            # The timed-out connection is discarded; the next command reconnects.
            assert await client.ping() is True
        finally:
            await client.aclose()


@pytest.mark.redis
async def test_reset_breaks_an_established_connection() -> None:
    async with FaultProxy(*REDIS) as proxy:
        client = redis_via(proxy)
        try:
            assert await client.ping() is True
            proxy.reset()
            with pytest.raises(RedisConnectionError):
                await client.ping()
            assert await client.ping() is True  # reset is one-shot: reconnecting works
        finally:
            await client.aclose()


@pytest.mark.redis
async def test_refuse_fails_new_connections_until_heal() -> None:
    async with FaultProxy(*REDIS) as proxy:
        established = redis_via(proxy)
        try:
            assert await established.ping() is True
            proxy.refuse()
            with pytest.raises(OSError) as refused:
                await anyio.connect_tcp(proxy.host, proxy.port)
            assert isinstance(refused.value.__cause__, ConnectionRefusedError)
            newcomer = redis_via(proxy)
            with pytest.raises(RedisConnectionError):
                await newcomer.ping()
            await newcomer.aclose()
            assert await established.ping() is True  # open connections are left alone
            proxy.heal()
            newcomer = redis_via(proxy)
            assert await newcomer.ping() is True
            await newcomer.aclose()
        finally:
            await established.aclose()


@pytest.mark.postgres
async def test_postgres_blackhole_times_out_and_reset_breaks_the_connection() -> None:
    async with FaultProxy(*POSTGRES) as proxy:

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                host=proxy.host, port=proxy.port, user="postgres", database="postgres", timeout=5
            )

        conn = await connect()
        try:
            assert await conn.fetchval("select 1") == 1
            proxy.blackhole()
            with pytest.raises(TimeoutError):
                await conn.fetchval("select 1", timeout=0.2)
        finally:
            conn.terminate()
        proxy.heal()
        conn = await connect()
        try:
            assert await conn.fetchval("select 2") == 2
            proxy.reset()
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, OSError)):
                await conn.fetchval("select 3")
        finally:
            conn.terminate()
        conn = await connect()
        assert await conn.fetchval("select 4") == 4
        await conn.close()


@pytest.mark.redis
async def test_policy_breaker_opens_on_a_blackholed_redis_and_closes_after_heal() -> None:
    name = f"redis-{uuid.uuid4().hex[:8]}"
    policy = ResiliencePolicy(
        name,
        PolicyConfig(
            timeout_s=0.1,
            retry=RetryConfig(max_attempts=1),
            breaker=BreakerConfig(
                window_size=4, minimum_calls=4, open_for_s=0.2, half_open_calls=1
            ),
        ),
        transient=lambda exc: isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError),
    )
    async with FaultProxy(*REDIS) as proxy:
        client = redis_via(proxy)
        try:
            assert await policy.call(client.ping) is True
            proxy.blackhole()
            # One success and three timeouts fill the window at a 75 % failure rate.
            for _ in range(3):
                with pytest.raises(CallTimeoutError):
                    await policy.call(client.ping)
            assert policy.breaker.state is BreakerState.OPEN
            with pytest.raises(CircuitOpenError):
                await policy.call(client.ping)
            proxy.heal()
            await anyio.sleep(0.25)  # the open period (0.2 s) passes
            assert policy.breaker.state is BreakerState.HALF_OPEN
            assert await policy.call(client.ping) is True
            assert policy.breaker.state is BreakerState.CLOSED
        finally:
            await client.aclose()
