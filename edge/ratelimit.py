"""Request rate limits shared by every edge replica, counted in Redis.

A fixed window per client: one Lua script increments the client's counter and starts its expiry
on the first hit, atomically, so concurrent replicas never lose a count or leave a counter without
an expiry. The result carries what the ``RateLimit-*`` response headers need
(draft-ietf-httpapi-ratelimit-headers: Limit, Remaining, Reset in seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RateLimitResult", "RateLimiter"]

_SCRIPT: Final = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """One counted hit: whether it is allowed, and the numbers for the response headers."""

    limit: int
    count: int
    reset_s: int

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


@final
class RateLimiter:
    """Fixed-window counters in Redis under ``<prefix>rl:<scope>:<client>``."""

    def __init__(self, redis: Redis, *, prefix: str, window_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_ms = window_s * 1000
        self._script: Any = redis.register_script(_SCRIPT)

    async def hit(self, scope: str, client: str, limit: int) -> RateLimitResult:
        """Count one request by ``client`` in ``scope`` (``ip`` or ``sub``) against ``limit``.

        Raises:
            redis.RedisError: Redis cannot be reached (the caller decides to fail open or closed).
        """
        key = f"{self._prefix}rl:{scope}:{client}"
        count, ttl_ms = await self._script(keys=[key], args=[self._window_ms])
        return RateLimitResult(
            limit=limit, count=int(count), reset_s=max(1, math.ceil(int(ttl_ms) / 1000))
        )
