"""A Redis client confined to one actor: every key and channel gets the ``<actor>:`` prefix, and
every command goes through the actor's ``redis`` resilience policy.

Callers name keys without the prefix (``await r.get("session:42")`` reads ``orders:session:42``);
the ACL user (:mod:`adapters.redis.provision`) enforces the same boundary on the server, so a
forgotten prefix is a NOPERM error, never another actor's data. The client's own retries are off:
the policy retries, within the deadline, and its breaker sees every failure.

:data:`CACHE_POLICY` is the policy for a Redis that only holds a cache (the actor answers from its
source of truth without it): a call that has not answered in half a second is given up rather
than retried, and a few failures open the breaker, so while Redis is slow or unreachable readers
skip it at once instead of spending their deadline on it. The default policy suits a Redis the
actor cannot do without.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, cast, final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff

from adapters.errors import redis_transient
from adapters.redis.provision import RedisCredentials
from runtime.resilience import BreakerConfig, PolicyConfig, ResiliencePolicy, RetryConfig

__all__ = ["CACHE_POLICY", "ActorRedis", "redis_policy"]

CACHE_POLICY: Final = PolicyConfig(
    # A cache read on a healthy Redis takes well under a millisecond: one that has not answered
    # in half a second is abandoned and the source asked instead, not retried (a lost
    # connection still gets one more attempt, on a fresh connection).
    timeout_s=0.5,
    retry_on_timeout=False,
    retry=RetryConfig(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.05),
    # Opens when half of the last 10 calls failed (so at most 5 failing calls after a healthy
    # spell), skips Redis for 10 s, then two trial calls decide.
    breaker=BreakerConfig(
        window_size=10,
        minimum_calls=5,
        failure_rate_threshold=0.5,
        open_for_s=10.0,
        half_open_calls=2,
    ),
)
"""The ``redis`` policy of an actor whose Redis is only a cache (module docstring)."""


def redis_policy(actor: str, config: PolicyConfig | None = None) -> ResiliencePolicy:
    """The ``<actor>.redis`` policy with redis-py's errors classified (see adapters.errors)."""
    return ResiliencePolicy(
        f"{actor}.redis", config, transient=redis_transient, is_failure=redis_transient
    )


@final
class ActorRedis:
    """One actor's view of Redis. Build with :meth:`connect`; close with :meth:`aclose`.

    Every method raises, besides what it names: CircuitOpenError, BulkheadFullError,
    CallTimeoutError, DeadlineExceededError (from the policy) and redis.RedisError (from the
    server: NoPermissionError for a command or key outside the ACL, after retries for transient
    ones).
    """

    def __init__(self, client: aioredis.Redis, prefix: str, policy: ResiliencePolicy) -> None:
        self.client = client
        self.prefix = prefix
        self.policy = policy

    @classmethod
    def connect(
        cls,
        credentials: RedisCredentials,
        *,
        policy: ResiliencePolicy | None = None,
        socket_timeout_s: float = 5.0,
        host: str | None = None,
        port: int | None = None,
        **client_kwargs: Any,
    ) -> ActorRedis:
        """A client for ``credentials`` (connections are opened lazily, on first use).

        ``host``/``port`` override the URL's address (e.g. to go through a proxy); other
        ``client_kwargs`` go to ``redis.asyncio.BlockingConnectionPool.from_url``.
        """
        # A blocking pool, so concurrent handlers queue for a connection (bounded by the socket
        # timeout) rather than failing with "Too many connections" past the pool's size.
        client_kwargs.setdefault("max_connections", 64)
        pool = aioredis.BlockingConnectionPool.from_url(
            credentials.url,
            username=credentials.username,
            password=credentials.password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=RedisRetry(NoBackoff(), 0),
            timeout=socket_timeout_s,
            **client_kwargs,
        )
        client = aioredis.Redis.from_pool(pool)  # from_pool: closing the client closes the pool
        # from_url lets the URL win over keyword arguments, so the address is replaced after.
        address = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        client.connection_pool.connection_kwargs.update(address)
        return cls(client, credentials.prefix, policy or redis_policy(credentials.prefix[:-1]))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    def key(self, name: str) -> str:
        """The server-side key for ``name``: the actor's prefix + ``name``."""
        return self.prefix + name

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        # redis-py types every reply as "bytes or str" (it cannot know decode_responses); this
        # client never decodes, so each method states the bytes type it returns.
        return await self.policy.call(fn, *args, **kwargs)

    # -- strings -----------------------------------------------------------------------------------

    async def get(self, name: str) -> bytes | None:
        """The value of ``name``, or None if it does not exist."""
        return cast("bytes | None", await self._call(self.client.get, self.key(name)))

    async def mget(self, *names: str) -> list[bytes | None]:
        """The values of ``names``, None for missing ones, in order."""
        return cast(
            "list[bytes | None]", await self._call(self.client.mget, [self.key(n) for n in names])
        )

    async def set(
        self,
        name: str,
        value: bytes | str | int | float,
        *,
        ttl_s: float | None = None,
        only_if_absent: bool = False,
    ) -> bool:
        """Set ``name`` (expiring after ``ttl_s``); with ``only_if_absent``, only if it is not
        there. True if it was set."""
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        result = await self._call(self.client.set, self.key(name), value, px=px, nx=only_if_absent)
        return bool(result)

    async def incr(self, name: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer at ``name`` (0 if missing) and return the new value."""
        return cast("int", await self._call(self.client.incrby, self.key(name), amount))

    # -- keys --------------------------------------------------------------------------------------

    async def delete(self, *names: str) -> int:
        """Delete ``names``; return how many existed."""
        return cast("int", await self._call(self.client.delete, *(self.key(n) for n in names)))

    async def exists(self, *names: str) -> int:
        """How many of ``names`` exist."""
        return cast("int", await self._call(self.client.exists, *(self.key(n) for n in names)))

    async def expire(self, name: str, ttl_s: float) -> bool:
        """Make ``name`` expire after ``ttl_s``; False if it does not exist."""
        return bool(await self._call(self.client.pexpire, self.key(name), int(ttl_s * 1000)))

    async def ttl(self, name: str) -> float | None:
        """Seconds until ``name`` expires; None if it has no expiry or does not exist."""
        ms = await self._call(self.client.pttl, self.key(name))
        return None if ms < 0 else ms / 1000

    # -- hashes ------------------------------------------------------------------------------------

    async def hset(self, name: str, mapping: dict[str, bytes | str | int | float]) -> int:
        """Set fields of the hash ``name``; return how many were new."""
        return cast("int", await self._call(self.client.hset, self.key(name), mapping=mapping))

    async def hgetall(self, name: str) -> dict[bytes, bytes]:
        """Every field of the hash ``name`` (empty if missing)."""
        return cast("dict[bytes, bytes]", await self._call(self.client.hgetall, self.key(name)))

    # -- pub/sub -----------------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes | str) -> int:
        """Publish to the actor's ``channel``; return how many subscribers got it."""
        return cast("int", await self._call(self.client.publish, self.key(channel), message))
