"""Cache-aside over an actor's Redis: read the cache, on a miss load, store with a TTL.

Concurrent lookups of one key in this process share a single flight: the first caller reads
Redis and, on a miss, loads and stores; the others wait for its result (or its error), so a cold
key costs its source one call per process, not one per request, and a hot key one Redis read per
burst.

The cache is an optimisation, never a dependency: when Redis fails or its breaker is open, the
lookup loads from the source (counted as outcome ``unavailable``) without trying to store the
value, since a Redis that just failed a read would only make the caller wait again; a failed write
after a plain miss is logged. Either way callers get the loaded value. Give the client
:data:`~adapters.redis.CACHE_POLICY`, so that a slow or unreachable Redis costs a lookup half a
second at most, and nothing once its breaker is open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar, cast, final

import anyio
import msgspec
from redis import RedisError

from adapters.redis.client import ActorRedis
from runtime.errors import UnavailableError
from runtime.logging import get_logger
from runtime.metrics import registry
from runtime.resilience import CircuitOpenError

__all__ = ["Cache"]

T = TypeVar("T")

_log = get_logger("adapters.redis.cache")
_lookups = registry.counter("greenroom_cache_lookups_total", "Cache-aside lookups, by outcome")
# What makes the cache unusable for one call without making the caller's request fail.
_CACHE_DOWN = (RedisError, UnavailableError, OSError)


@final
class _Unavailable:
    """The type of :data:`_UNAVAILABLE`: Redis did not answer a read (not the same as a miss)."""

    __slots__ = ()


_UNAVAILABLE: Final = _Unavailable()


def _cache_down(exc: BaseException, event: str, key: str) -> None:
    # An open breaker was logged when it opened; a warning per lookup would flood the log.
    log = _log.debug if isinstance(exc, CircuitOpenError) else _log.warning
    log(event, key=key, error=repr(exc))


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
            if cached is _UNAVAILABLE:
                _lookups.inc(actor=self._name, outcome="unavailable")
                value = await loader()
            elif cached is not None:
                _lookups.inc(actor=self._name, outcome="hit")
                value = cast("T", cached)
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

    async def _read(self, key: str) -> T | _Unavailable | None:
        """The cached value, None on a miss, :data:`_UNAVAILABLE` if Redis could not answer."""
        try:
            raw = await self.redis.get(self._key(key))
        except _CACHE_DOWN as exc:
            _cache_down(exc, "cache.read_failed", key)
            return _UNAVAILABLE
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
            _cache_down(exc, "cache.write_failed", key)
