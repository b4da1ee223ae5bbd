"""The users actor: each user's own profile, in Postgres, read through a Redis cache.

* A profile is created when ``auth.UserRegistered`` arrives on ``auth.events`` (only auth's
  contracts module is imported, never its handlers).
* Reads go through a cache-aside :class:`~adapters.redis.Cache` under ``<data_name>:profile:<id>``
  in the service's own Redis ACL user (key prefix ``users:`` in production). A read has no
  effects, so it skips the inbox: a cached read costs one Redis GET and no Postgres write. While
  Redis is slow or unreachable, reads are answered from Postgres (the cache's policy gives up
  quickly, then its breaker skips Redis until it answers again).
* An update commits, emits :class:`~actors.users.contracts.ProfileUpdated` through the outbox,
  and drops the cached copy as soon as the commit is done. The service also consumes its own
  ``users.events`` and drops the key again on ``ProfileUpdated``: that second invalidation is
  the one that cannot be lost (the event is in the outbox), and it also removes a stale copy
  that a read running alongside the update may have stored after the first one.

One user never reaches another's profile: the edge fills ``user_id`` from the token's subject,
and the actor refuses a command whose ``user_id`` differs from its envelope key (which the edge
also sets from the subject), so a caller inside the bus that sets only one of them is refused too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec
from redis import RedisError

from actors.auth.contracts import UserRegistered
from actors.users.contracts import Address, GetProfile, Profile, ProfileUpdated, UpdateProfile
from adapters.postgres import PostgresActor, transaction
from adapters.redis import (
    CACHE_POLICY,
    ActorRedis,
    Cache,
    actor_redis_credentials,
    redis_policy,
)
from runtime.actor import Actor, Context, NodeContext
from runtime.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from runtime.resilience import PolicyConfig

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Users"]

# Contracts whose handlers have no Postgres effects: no inbox row, no transaction.
_NO_INBOX: Final = frozenset({"users.GetProfile", "users.ProfileUpdated"})

_PHONE: Final = re.compile(r"^\+?[0-9 ()./-]{3,32}$")
_COUNTRY: Final = re.compile(r"^[A-Z]{2}$")
_MAX_TEXT: Final = 200
_MAX_NAME: Final = 100

_SELECT: Final = (
    "SELECT user_id, email, display_name, phone, address::text AS address, version,"
    " (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,"
    " (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms FROM profiles"
)


def _profile(row: asyncpg.Record) -> Profile:
    return Profile(
        user_id=str(row["user_id"]),
        email=row["email"],
        display_name=row["display_name"],
        phone=row["phone"],
        address=msgspec.json.decode(row["address"], type=Address),
        version=row["version"],
        created_at_ms=row["created_ms"],
        updated_at_ms=row["updated_ms"],
    )


def _own(user_id: str, ctx: Context) -> uuid.UUID:
    """The caller's id, if the command is about the caller (see the module docstring).

    Raises:
        UnauthorizedError: no valid user id is named.
        ForbiddenError: the envelope is keyed by another user than ``user_id`` names.
    """
    try:
        parsed = uuid.UUID(user_id)
    except ValueError as exc:
        raise UnauthorizedError("no valid user named") from exc
    if ctx.envelope.key and ctx.envelope.key != user_id:
        raise ForbiddenError("a user may only reach their own profile")
    return parsed


def _text(value: str, field: str, limit: int = _MAX_TEXT) -> str:
    value = value.strip()
    if len(value) > limit:
        raise InvalidError(f"{field} must be at most {limit} characters", field=field)
    if any(ch in value for ch in "\r\n\t\x00"):
        raise InvalidError(f"{field} must be a single line", field=field)
    return value


def validate_update(msg: UpdateProfile) -> tuple[str | None, str | None, Address | None]:
    """The cleaned ``display_name``, ``phone`` and ``address`` of ``msg`` (None: unchanged).

    Raises:
        InvalidError: a field is too long, multi-line, or malformed; ``field`` names it
            (``address.country`` for a nested one).
    """
    name = None
    if msg.display_name is not None:
        name = _text(msg.display_name, "display_name", _MAX_NAME)
        if not name:
            raise InvalidError("display_name must not be empty", field="display_name")
    phone = None
    if msg.phone is not None:
        phone = _text(msg.phone, "phone", 32)
        if phone and not _PHONE.match(phone):
            raise InvalidError("phone is not a phone number", field="phone")
    address = None
    if msg.address is not None:
        given = msg.address
        country = given.country.strip().upper()
        if country and not _COUNTRY.match(country):
            raise InvalidError(
                "country must be an ISO 3166-1 alpha-2 code", field="address.country"
            )
        address = Address(
            line1=_text(given.line1, "address.line1"),
            line2=_text(given.line2, "address.line2"),
            city=_text(given.city, "address.city"),
            postal_code=_text(given.postal_code, "address.postal_code", 16),
            country=country,
        )
    return name, phone, address


class Users(PostgresActor):
    """Profiles: created from auth's events, read through Redis, changed by their owner."""

    name = "users"
    inbox = GetProfile | UpdateProfile | UserRegistered | ProfileUpdated
    subscribes = ("auth.events", "users.events")
    # Named, not found beside the module, so subclasses defined elsewhere (tests) keep them.
    migrations_package = "actors.users.migrations"

    cache_ttl_s: ClassVar[float] = 300.0
    # The profile cache's Redis policy; None: :data:`adapters.redis.CACHE_POLICY`, so a slow or
    # unreachable Redis costs a read half a second at most (nothing once the breaker is open)
    # and profiles are read from Postgres meanwhile.
    redis_policy_config: ClassVar[PolicyConfig | None] = None

    redis: ActorRedis
    profiles: Cache[Profile]

    async def on_start(self, ctx: NodeContext) -> None:
        """Postgres as :class:`PostgresActor`, then the service's own Redis ACL user and the
        profile cache (``ctx.resources["redis"]``).

        Raises:
            RuntimeError: ``GREENROOM_POSTGRES_URL`` or ``GREENROOM_REDIS_URL`` is not set.
            redis.RedisError: the ACL user could not be provisioned.
            Exception: whatever :meth:`PostgresActor.on_start` raises.
        """
        admin_url = ctx.settings.redis_url
        if not admin_url:
            raise RuntimeError(
                f"actor {self.name!r} needs Redis: set GREENROOM_REDIS_URL (an admin URL)"
            )
        await super().on_start(ctx)
        credentials = await actor_redis_credentials(admin_url, self.data_name or self.name)
        policy = redis_policy(credentials.prefix[:-1], self.redis_policy_config or CACHE_POLICY)
        self.redis = ActorRedis.connect(credentials, policy=policy)
        self.profiles = Cache(self.redis, Profile, ttl_s=self.cache_ttl_s, namespace="profile")
        ctx.resources["redis"] = self.redis

    async def on_stop(self, ctx: NodeContext) -> None:
        """Close the Redis client, then the Postgres pool."""
        redis = getattr(self, "redis", None)
        if redis is not None:
            await redis.aclose()
        await super().on_stop(ctx)

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        """Reads and invalidations skip the inbox; an update drops the cached profile once its
        transaction has committed (module docstring)."""
        if type_tag in _NO_INBOX:
            return Actor.handler_for(self, type_tag)
        exactly_once = super().handler_for(type_tag)
        if type_tag != "users.UpdateProfile":
            return exactly_once

        async def then_invalidate(message: Any, ctx: Context) -> Any:
            result = await exactly_once(message, ctx)
            try:
                await self.profiles.invalidate(message.user_id)
            except (RedisError, UnavailableError, OSError) as exc:
                # The update has committed and must be answered as done; the ProfileUpdated
                # event in the outbox drops the key once Redis is back.
                ctx.log.warning("users.invalidate_failed", error=repr(exc))
            return result

        return then_invalidate

    # --- reads ---------------------------------------------------------------------------------

    async def get_profile(self, msg: GetProfile, ctx: Context) -> Profile:
        """The caller's profile, from the cache or Postgres.

        Raises:
            UnauthorizedError: no valid ``user_id``.
            ForbiddenError: ``user_id`` is not the envelope's key (another user).
            NotFoundError: no profile yet (it is created shortly after registration).
        """
        user_id = _own(msg.user_id, ctx)

        async def load() -> Profile:
            row = await self.database.fetchrow(f"{_SELECT} WHERE user_id = $1", user_id)
            if row is None:
                raise NotFoundError("no profile for this user yet")
            return _profile(row)

        return await self.profiles.get_or_load(str(user_id), load)

    # --- writes --------------------------------------------------------------------------------

    async def update_profile(self, msg: UpdateProfile, ctx: Context) -> Profile:
        """Apply the given fields, bump ``version`` and emit :class:`ProfileUpdated`.

        Raises:
            UnauthorizedError, ForbiddenError: as :meth:`get_profile`.
            InvalidError: a field is malformed (``field`` names it).
            NotFoundError: no profile yet.
            ConflictError: ``expected_version`` is given and the profile is at another one.
        """
        user_id = _own(msg.user_id, ctx)
        name, phone, address = validate_update(msg)
        tx = transaction(ctx)
        row = await tx.conn.fetchrow(
            "UPDATE profiles SET display_name = coalesce($2, display_name),"
            " phone = coalesce($3, phone), address = coalesce($4::jsonb, address),"
            " version = version + 1, updated_at = now()"
            " WHERE user_id = $1 AND ($5::bigint IS NULL OR version = $5)"
            " RETURNING user_id, email, display_name, phone, address::text AS address, version,"
            " (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,"
            " (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms",
            user_id,
            name,
            phone,
            None if address is None else msgspec.json.encode(address).decode(),
            msg.expected_version,
        )
        if row is None:
            current = await tx.conn.fetchval(
                "SELECT version FROM profiles WHERE user_id = $1", user_id
            )
            if current is None:
                raise NotFoundError("no profile for this user yet")
            raise ConflictError(
                f"profile is at version {current}, not {msg.expected_version}",
                field="expected_version",
            )
        profile = _profile(row)
        await ctx.emit(
            ProfileUpdated(user_id=profile.user_id, version=profile.version), key=profile.user_id
        )
        return profile

    # --- events --------------------------------------------------------------------------------

    async def on_user_registered(self, msg: UserRegistered, ctx: Context) -> None:
        """Create the profile of a new account (once; a redelivery changes nothing). The
        display name starts as the email's local part."""
        await transaction(ctx).conn.execute(
            "INSERT INTO profiles (user_id, email, display_name) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id) DO NOTHING",
            uuid.UUID(msg.user_id),
            msg.email,
            msg.email.partition("@")[0][:_MAX_NAME] or msg.email,
        )

    async def on_profile_updated(self, msg: ProfileUpdated) -> None:
        """Drop the cached profile (idempotent, so it needs no inbox row).

        Raises:
            redis.RedisError, CircuitOpenError, ...: Redis cannot be reached; the message is
                retried, and dead-lettered if it stays down, rather than keep a stale copy.
        """
        await self.profiles.invalidate(msg.user_id)
