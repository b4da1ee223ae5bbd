"""An actor's Redis ACL user: its own password, its own key prefix and channels, no admin commands.

The rules (``ACL SETUSER gr_<actor> reset on >pw ~<actor>:* &<actor>:* ...``), and why this
command set rather than ``+@all -@admin -@dangerous``:

- ``-@all`` then the data families (``@read @write @keyspace`` and the type categories),
  ``@transaction`` (MULTI/EXEC/WATCH), ``@pubsub`` and ``@connection`` (AUTH, HELLO, PING);
- ``-@admin -@dangerous``: no CONFIG, FLUSHALL, FLUSHDB, KEYS, DEBUG, CLIENT KILL, ...;
- ``-scan -randomkey -pubsub``: key patterns do not filter them, so they would list other
  actors' key and channel names;
- ``-select -move``: every actor lives in database 0; other databases are nobody's key space;
- no ``@scripting``: functions (FUNCTION LOAD/FLUSH) are one library shared by every user.

``reset`` first, so running it again always leaves the same user (idempotent); the password is
derived from the admin URL (:func:`adapters.derive_secret`), so every replica computes the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, final
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis

from adapters._names import ActorNames, derive_secret

__all__ = [
    "ACL_COMMAND_RULES",
    "RedisCredentials",
    "actor_redis_credentials",
    "drop_redis_user",
    "provision_redis_user",
]

ACL_COMMAND_RULES: Final = (
    "-@all",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@string",
    "+@hash",
    "+@list",
    "+@set",
    "+@sortedset",
    "+@stream",
    "+@bitmap",
    "+@hyperloglog",
    "+@geo",
    "+@transaction",
    "+@pubsub",
    "+@connection",
    "-@admin",
    "-@dangerous",
    "-scan",
    "-randomkey",
    "-pubsub",
    "-select",
    "-move",
)


@final
@dataclass(frozen=True, slots=True)
class RedisCredentials:
    """How the actor connects as itself: the admin URL's server with the actor's user."""

    url: str
    username: str
    password: str = field(repr=False)
    prefix: str


async def provision_redis_user(
    admin_url: str, actor: str, *, secret: str | None = None
) -> RedisCredentials:
    """Create or reset the ACL user ``gr_<actor>`` (see the module docstring); idempotent.

    ``secret`` is what the password is derived from (default: ``admin_url``).

    Raises:
        InvalidNameError: ``actor`` is not a valid actor name.
        redis.RedisError: the admin connection or ``ACL SETUSER`` failed.
    """
    names = ActorNames(actor)
    password = derive_secret(secret or admin_url, f"redis:{names.role}")
    admin = aioredis.Redis.from_url(admin_url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            "ACL",
            "SETUSER",
            names.role,
            "reset",
            "on",
            f">{password}",
            f"~{names.key_prefix}*",
            f"&{names.key_prefix}*",
            *ACL_COMMAND_RULES,
        )
    finally:
        await admin.aclose()
    return RedisCredentials(
        url=admin_url, username=names.role, password=password, prefix=names.key_prefix
    )


async def drop_redis_user(admin_url: str, actor: str, *, delete_keys: bool = True) -> None:
    """Delete ``actor``'s ACL user (its connections are closed) and, by default, its keys.

    Raises:
        InvalidNameError: ``actor`` is not a valid actor name.
        redis.RedisError: the admin connection or a command failed.
    """
    names = ActorNames(actor)
    admin = aioredis.Redis.from_url(admin_url)
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            "ACL", "DELUSER", names.role
        )
        if delete_keys:
            batch: list[bytes] = []
            async for key in admin.scan_iter(match=f"{names.key_prefix}*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await admin.unlink(*batch)
                    batch.clear()
            if batch:
                await admin.unlink(*batch)
    finally:
        await admin.aclose()


async def actor_redis_credentials(url: str, actor: str) -> RedisCredentials:
    """The credentials ``actor`` runs with, given the configured ``GREENROOM_REDIS_URL``.

    An admin URL (development) provisions the ACL user ``gr_<actor>``
    (:func:`provision_redis_user`).
    A URL whose user may not run ``ACL SETUSER`` is taken as the actor's own ACL user, made
    beforehand by an operator (``deploy/scripts/init_infra.py``) and limited to ``<actor>:*``;
    it is used as is, with the same key prefix.

    Raises:
        InvalidNameError: ``actor`` is not a valid actor name.
        redis.RedisError: the server could not be reached, or failed otherwise.
    """
    try:
        return await provision_redis_user(url, actor)
    except aioredis.ResponseError as exc:
        # NOPERM (redis.exceptions.NoPermissionError is a ResponseError): not an admin.
        if "NOPERM" not in str(exc) and "permission" not in str(exc).lower():
            raise
    parts = urlsplit(url)
    return RedisCredentials(
        url=url,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        prefix=ActorNames(actor).key_prefix,
    )
