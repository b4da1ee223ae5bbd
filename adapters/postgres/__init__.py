"""Postgres for actors (asyncpg): a role and schema per actor, migrations, transactions, and the
inbox/outbox that make a handler's effects happen exactly once.

Importing this package imports asyncpg.
"""

from adapters.postgres.actor import PostgresActor, add_outbox_relay, transaction
from adapters.postgres.database import Connection, Database, Isolation, postgres_policy
from adapters.postgres.inbox import (
    Handled,
    Replayed,
    UnitOfWork,
    current_unit_of_work,
    handle_once,
    replay_struct,
)
from adapters.postgres.migrations import (
    GREENROOM_MIGRATIONS,
    Migration,
    MigrationError,
    apply_migrations,
    migrations_from_package,
)
from adapters.postgres.outbox import run_outbox_relay
from adapters.postgres.provision import (
    PostgresCredentials,
    ProvisioningError,
    actor_credentials,
    drop_actor,
    provision_actor,
)

__all__ = [
    "GREENROOM_MIGRATIONS",
    "Connection",
    "Database",
    "Handled",
    "Isolation",
    "Migration",
    "MigrationError",
    "PostgresActor",
    "PostgresCredentials",
    "ProvisioningError",
    "Replayed",
    "UnitOfWork",
    "actor_credentials",
    "add_outbox_relay",
    "apply_migrations",
    "current_unit_of_work",
    "drop_actor",
    "handle_once",
    "migrations_from_package",
    "postgres_policy",
    "provision_actor",
    "replay_struct",
    "run_outbox_relay",
    "transaction",
]
