"""An actor's Postgres role and schema, created with an admin connection on its first start.

What :func:`provision_actor` leaves behind, whatever was there before:

- role ``gr_<actor>``: ``LOGIN``, ``NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT``, a password
  derived from the admin DSN (:func:`adapters.derive_secret`), ``search_path`` = its schema;
- schema ``<actor>`` owned by that role, with every privilege revoked from ``PUBLIC`` and granted
  to no other role. Nothing else in the database is granted to the role.

Concurrent starters (several replicas) are serialised by a transaction-scoped advisory lock, so the
"create if missing" steps cannot race each other.

:func:`actor_credentials` is what an actor calls at start: with an admin DSN (development,
``greenroom up``, tests) it provisions as above; with the actor's own DSN (production, where
``deploy/scripts/init_infra.py`` made the role and schema and the service holds only its own
credentials) it checks the role owns the schema and connects as it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import final
from urllib.parse import unquote, urlsplit

import asyncpg

from adapters._names import ActorNames, derive_secret, quote_ident

__all__ = [
    "PostgresCredentials",
    "ProvisioningError",
    "actor_credentials",
    "drop_actor",
    "provision_actor",
]


class ProvisioningError(RuntimeError):
    """The configured credentials can neither provision the actor nor act as it."""


@final
@dataclass(frozen=True, slots=True)
class PostgresCredentials:
    """How the actor connects as itself: the admin DSN's address with the actor's role."""

    dsn: str
    user: str
    password: str = field(repr=False)
    schema: str


def advisory_key(purpose: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``purpose`` (same in every process)."""
    digest = hashlib.blake2b(purpose.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def provision_actor(
    admin_dsn: str, actor: str, *, secret: str | None = None
) -> PostgresCredentials:
    """Create (or repair) the role and schema of ``actor``; idempotent and safe to run concurrently.

    ``secret`` is what the role's password is derived from (default: ``admin_dsn``, which only an
    operator holds). The returned credentials connect to the same server and database.

    Raises:
        InvalidNameError: ``actor`` is not a valid actor name.
        asyncpg.PostgresError, OSError: the admin connection or a statement failed.
    """
    names = ActorNames(actor)
    role, schema = quote_ident(names.role), quote_ident(names.schema)
    password = derive_secret(secret or admin_dsn, f"postgres:{names.role}")
    conn = await asyncpg.connect(admin_dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", advisory_key(f"greenroom.provision:{actor}")
            )
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", names.role)
            verb = "ALTER" if exists else "CREATE"
            # The password is hex from derive_secret, so the literal cannot break out of quotes;
            # DDL takes no bind parameters.
            await conn.execute(
                f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                f" PASSWORD '{password}'"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}")
            # A schema left by an earlier, different owner is taken over, not trusted.
            await conn.execute(f"ALTER SCHEMA {schema} OWNER TO {role}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
            await conn.execute(f"ALTER ROLE {role} SET search_path = {schema}")
    finally:
        await conn.close()
    return PostgresCredentials(
        dsn=admin_dsn, user=names.role, password=password, schema=names.schema
    )


async def drop_actor(admin_dsn: str, actor: str) -> None:
    """Remove ``actor``'s schema (with every table in it) and role; missing ones are skipped.

    Its open sessions are terminated first, since a role cannot be dropped while it still owns
    the objects they may be creating.

    Raises:
        InvalidNameError: ``actor`` is not a valid actor name.
        asyncpg.PostgresError, OSError: the admin connection or a statement failed.
    """
    names = ActorNames(actor)
    role, schema = quote_ident(names.role), quote_ident(names.schema)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            names.role,
        )
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


async def actor_credentials(dsn: str, actor: str) -> PostgresCredentials:
    """The credentials ``actor`` runs with, given the configured ``GREENROOM_POSTGRES_URL``.

    * ``dsn`` may create roles (superuser or ``CREATEROLE``): an admin DSN, as in development;
      the role ``gr_<actor>`` and schema ``<actor>`` are provisioned (:func:`provision_actor`).
    * Otherwise ``dsn`` is the actor's own login, provisioned beforehand by an operator
      (``deploy/scripts/init_infra.py``); it is used as is, provided its role owns the schema
      ``<actor>``. The service then never holds a credential that reaches another's data.

    Raises:
        ProvisioningError: ``dsn`` can neither create roles nor owns the schema ``<actor>``.
        InvalidNameError: ``actor`` is not a valid actor name.
        asyncpg.PostgresError, OSError: the connection or a query failed.
    """
    names = ActorNames(actor)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper OR rolcreaterole AS admin"
            " FROM pg_roles WHERE rolname = current_user"
        )
        assert row is not None  # current_user always has a pg_roles row
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", names.schema
        )
    finally:
        await conn.close()
    if row["admin"]:
        return await provision_actor(dsn, actor)
    if owner != row["name"]:
        raise ProvisioningError(
            f"GREENROOM_POSTGRES_URL logs in as {row['name']!r}, which cannot create roles and"
            f" does not own schema {names.schema!r} (owner: {owner or 'no such schema'});"
            " give the actor an admin URL (development) or provision it first"
            " (deploy/scripts/init_infra.py)"
        )
    return PostgresCredentials(
        dsn=dsn,
        user=str(row["name"]),
        password=unquote(urlsplit(dsn).password or ""),
        schema=names.schema,
    )
