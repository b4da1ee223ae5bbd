"""Cache-aside over an actor's Redis: read the cache, on a miss load, store with a TTL.

Concurrent lookups of one key in this process share a single flight: the first caller reads
Redis and, on a miss, loads and stores; the others wait for its result (or its error), so a cold
key costs its source one call per process, not one per request, and a hot key one Redis read per
burst.

The cache is an optimisation, never a dependency: when Redis fails or its breaker is open, a
read counts as a miss and a failed write is logged, so callers still get the loaded value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, final

import anyio
import msgspec
from redis import RedisError

from adapters.redis.client import ActorRedis
from runtime.errors import UnavailableError
from runtime.logging import get_logger
from runtime.metrics import registry

__all__ = ["Cache"]

T = TypeVar("T")

_log = get_logger("adapters.redis.cache")
_lookups = registry.counter("greenroom_cache_lookups_total", "Cache-aside lookups, by outcome")
# What makes the cache unusable for one call without making the caller's request fail.
_CACHE_DOWN = (RedisError, UnavailableError, OSError)


@final
class _Flight(Generic[T]):
    __slots__ = ("done", "error", "has_value", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.has_value = False
        self.value: T | None = None
        self.error: BaseException | None = None


@final
class Cache(Generic[T]):
    """Values of type ``type`` cached under ``<actor>:<namespace>:<key>`` for ``ttl_s`` seconds,
    encoded as JSON with msgspec."""

    def __init__(
        self, redis: ActorRedis, type: type[T], *, ttl_s: float, namespace: str = "cache"
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.redis = redis
        self.ttl_s = ttl_s
        self.namespace = namespace
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type)
        self._flights: dict[str, _Flight[T]] = {}
        self._name = redis.prefix.rstrip(":")

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    async def get_or_load(self, key: str, loader: Callable[[], Awaitable[T]]) -> T:
        """The cached value of ``key``, or ``await loader()`` stored for ``ttl_s``.

        One caller per key at a time (the leader) reads Redis and, on a miss, loads and stores;
        callers arriving meanwhile wait for the leader's outcome instead of asking Redis or the
        source themselves.

        Raises:
            Exception: whatever ``loader`` raised (waiters of the same flight get it too).
        """
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, loader)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.has_value:
                _lookups.inc(actor=self._name, outcome="shared")
                return flight.value  # type: ignore[return-value]  # has_value says it is a T
            # The leader was cancelled before it had a value: try again, perhaps as leader.

    async def invalidate(self, key: str) -> None:
        """Forget ``key`` so the next lookup loads it again (raises if Redis is unavailable,
        since a stale value that cannot be removed must not be silently kept)."""
        await self.redis.delete(self._key(key))

    async def _lead(self, key: str, loader: Callable[[], Awaitable[T]]) -> T:
        flight: _Flight[T] = _Flight()
        self._flights[key] = flight
        try:
            cached = await self._read(key)
            if cached is not None:
                _lookups.inc(actor=self._name, outcome="hit")
                value = cached
            else:
                _lookups.inc(actor=self._name, outcome="miss")
                value = await loader()
                # Stored before the flight ends, so a caller arriving next finds it in Redis.
                await self._write(key, value)
            flight.value, flight.has_value = value, True
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        return value

    async def _read(self, key: str) -> T | None:
        try:
            raw = await self.redis.get(self._key(key))
        except _CACHE_DOWN as exc:
            _log.warning("cache.read_failed", key=key, error=repr(exc))
            return None
        if raw is None:
            return None
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError:
            # Written by an older version of the type: treat as a miss and overwrite it.
            return None

    async def _write(self, key: str, value: Any) -> None:
        try:
            await self.redis.set(self._key(key), self._encoder.encode(value), ttl_s=self.ttl_s)
        except _CACHE_DOWN as exc:
            _log.warning("cache.write_failed", key=key, error=repr(exc))
