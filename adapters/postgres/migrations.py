"""Per-actor schema migrations: ordered SQL files, each applied once, recorded with a checksum.

An actor keeps its migrations in its package (``actors/orders/migrations/0001_init.sql``), found
with :mod:`importlib.resources` so they ship inside the wheel. Files are named
``NNNN_description.sql`` and applied in name order, each in its own transaction together with
its row in ``<schema>.schema_migrations``. Concurrent starters are serialised by a session
advisory lock: the first applies, the others wait, then find nothing left to do.

Greenroom's own tables (the inbox and outbox) are migrations too, recorded under the source
``greenroom``, so an actor's own numbering never collides with them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final, final

from adapters.postgres.database import Connection, Database
from adapters.postgres.provision import advisory_key
from runtime.logging import get_logger

__all__ = [
    "GREENROOM_MIGRATIONS",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "migrations_from_package",
]

_FILE: Final = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
GREENROOM_MIGRATIONS: Final = "adapters.postgres.sql"
"""The package holding Greenroom's own migrations (inbox and outbox)."""

_log = get_logger("adapters.postgres.migrations")


class MigrationError(RuntimeError):
    """A migration cannot be applied safely; the message names the file."""


@final
@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``source`` (the package it came from), ``name`` (file name) and its text."""

    source: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_from_package(package: str) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``package`` in name order (other files are ignored).

    Raises:
        ModuleNotFoundError: ``package`` does not exist.
        MigrationError: two files share a number.
    """
    found = sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in resources.files(package).iterdir()
        if entry.is_file() and _FILE.match(entry.name)
    )
    numbers = [name[:4] for name, _ in found]
    for number in set(numbers):
        if numbers.count(number) > 1:
            clash = [name for name, _ in found if name.startswith(number)]
            raise MigrationError(f"{package}: migrations {clash} share number {number}")
    return [Migration(source=package, name=name, sql=sql) for name, sql in found]


_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    source     text        NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, name)
)
"""


async def apply_migrations(db: Database, migrations: list[Migration]) -> list[str]:
    """Apply the migrations of ``migrations`` not yet recorded, in list order; return their names.

    Raises:
        MigrationError: an applied migration's file changed since (naming the file); or a
            migration failed (naming the file, chained from the database error), in which case
            it was rolled back and the later ones were not tried.
        CircuitOpenError, DeadlineExceededError, ...: the policy refused the connection.
    """
    applied_now: list[str] = []
    async with db.connection() as conn:
        lock = advisory_key(f"greenroom.migrations:{db.schema}")
        # A session lock (not a transaction one): each migration gets its own transaction, and
        # the lock must span all of them. Released in `finally`, or with the session if we die.
        await conn.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            await conn.execute(_TABLE)
            done = {
                (row["source"], row["name"]): row["checksum"]
                for row in await conn.fetch("SELECT source, name, checksum FROM schema_migrations")
            }
            for migration in migrations:
                key = (migration.source, migration.name)
                if key in done:
                    if done[key] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.source}/{migration.name} was edited after it "
                            "was applied; add a new migration instead"
                        )
                    continue
                await _apply(conn, migration)
                applied_now.append(migration.name)
                _log.info("migration.applied", schema=db.schema, name=migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    return applied_now


async def _apply(conn: Connection, migration: Migration) -> None:
    import asyncpg

    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (source, name, checksum) VALUES ($1, $2, $3)",
                migration.source,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"migration {migration.source}/{migration.name} failed: {exc}"
        ) from exc
