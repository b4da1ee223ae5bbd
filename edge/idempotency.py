"""``Idempotency-Key`` for POSTs, remembered in Redis so every edge replica honours it.

The first request with a key claims it (an atomic Lua check-and-set) with a hash of its method,
path and body, runs, and stores its response under the key for ``ttl_s``. Another request with
the same key then gets, depending on that record:

* same hash, response stored: the first response again (header ``Idempotent-Replayed: true``);
* same hash, still in flight: 409, try again shortly;
* a different hash: 422, the key was already used for another request.

Keys are scoped to the caller (token subject, else client IP) so nobody can replay another
client's response. A response with a 5xx status is not stored and releases the key: the work may
not have happened, and the client's retry with the same key must be allowed to run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["IdempotencyStore", "StoredResponse"]

# Returns the existing record, or nil after claiming the key with ARGV[1] for ARGV[2] ms.
_CLAIM: Final = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A remembered request: its hash and, once finished, its response."""

    hash: str
    done: bool = False
    status: int = 0
    body: bytes = b""
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claiming a key: ``existing`` is None when this request now owns the key."""

    key: str
    request_hash: str
    existing: StoredResponse | None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StoredResponse)


@final
class IdempotencyStore:
    """Claims, completes and releases idempotency keys under ``<prefix>idem:``."""

    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int, in_flight_ttl_s: float) -> None:
        """``in_flight_ttl_s`` bounds how long a claim by a crashed edge blocks its key."""
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_s * 1000
        self._in_flight_ms = max(1000, int(in_flight_ttl_s * 1000))
        self._claim: Any = redis.register_script(_CLAIM)

    @staticmethod
    def request_hash(method: str, path: str, body: bytes) -> str:
        """What makes two requests "the same": method, path and exact body bytes."""
        digest = hashlib.sha256()
        for part in (method.encode(), b"\0", path.encode(), b"\0", body):
            digest.update(part)
        return digest.hexdigest()

    async def claim(self, scope: str, key: str, request_hash: str) -> Claim:
        """Claim ``key`` for this request, or return the record of whoever has it.

        Raises:
            redis.RedisError: Redis cannot be reached.
        """
        redis_key = f"{self._prefix}idem:{scope}:{key}"
        record = _encoder.encode(StoredResponse(hash=request_hash))
        raw = await self._claim(keys=[redis_key], args=[record, self._in_flight_ms])
        existing = _decoder.decode(raw) if raw else None
        return Claim(key=redis_key, request_hash=request_hash, existing=existing)

    async def complete(self, claim: Claim, status: int, body: bytes, media_type: str) -> None:
        """Store the response of a claimed request, or release the key for a 5xx."""
        if status >= 500:
            await self.release(claim)
            return
        record = StoredResponse(
            hash=claim.request_hash, done=True, status=status, body=body, media_type=media_type
        )
        await self._redis.set(claim.key, _encoder.encode(record), px=self._ttl_ms)

    async def release(self, claim: Claim) -> None:
        """Forget a claim (the request failed before producing an answer worth replaying)."""
        await self._redis.delete(claim.key)
