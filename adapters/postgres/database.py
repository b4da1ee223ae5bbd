"""An actor's connection pool, every call made through its ``postgres`` resilience policy.

Single statements (:meth:`Database.fetch` and friends) are retried on transient errors, each
attempt on a connection from the pool. A transaction is retried as a whole: the unit of work is a
function of its connection (:meth:`Database.transaction`), because after an error inside a
transaction only starting again from ``BEGIN`` is meaningful.

A connection lost *during* ``COMMIT`` leaves the outcome unknown; a retried unit of work may then
run twice. The inbox (:mod:`adapters.postgres.inbox`) makes that harmless for message handlers;
other callers should keep their units idempotent or use ``max_attempts=1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar, final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from adapters.errors import postgres_transient
from adapters.postgres.provision import PostgresCredentials
from runtime.resilience import PolicyConfig, ResiliencePolicy

__all__ = ["Connection", "Database", "Isolation", "postgres_policy"]

T = TypeVar("T")

Connection = asyncpg.Connection | PoolConnectionProxy
"""What a unit of work receives: a pooled connection inside an open transaction."""

Isolation = Literal["read_committed", "repeatable_read", "serializable"]


def postgres_policy(actor: str, config: PolicyConfig | None = None) -> ResiliencePolicy:
    """The ``<actor>.postgres`` policy with asyncpg's errors classified (see adapters.errors)."""
    return ResiliencePolicy(
        f"{actor}.postgres", config, transient=postgres_transient, is_failure=postgres_transient
    )


@final
class Database:
    """A pool connected as one actor's role, in its schema. Build with :meth:`connect`."""

    def __init__(self, pool: asyncpg.Pool, policy: ResiliencePolicy, *, schema: str) -> None:
        self.pool = pool
        self.policy = policy
        self.schema = schema

    @classmethod
    async def connect(
        cls,
        credentials: PostgresCredentials,
        *,
        policy: ResiliencePolicy | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        **connect_kwargs: Any,
    ) -> Database:
        """Open a pool as ``credentials.user``; ``connect_kwargs`` (e.g. ``host``, ``port``)
        override the DSN's address. Opening the pool goes through the policy too.

        Raises:
            CircuitOpenError, DeadlineExceededError: from the policy.
            asyncpg.PostgresError, OSError: the server refused or could not be reached.
        """
        policy = policy or postgres_policy(credentials.schema)

        async def open_pool() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                credentials.dsn,
                user=credentials.user,
                password=credentials.password,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout_s,
                # The role's search_path already says this; stating it per session as well
                # keeps unqualified names in the actor's schema even if the role is altered.
                server_settings={"search_path": credentials.schema},
                **connect_kwargs,
            )

        pool = await policy.call(open_pool)
        return cls(pool, policy, schema=credentials.schema)

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released."""
        await self.pool.close()

    # -- single statements -----------------------------------------------------------------------

    async def execute(self, query: str, *args: object) -> str:
        """Run ``query`` with bind parameters; return its status tag (``"INSERT 0 1"``).

        Raises:
            CircuitOpenError, BulkheadFullError, CallTimeoutError, DeadlineExceededError: policy.
            asyncpg.PostgresError: the statement failed (non-transient, or retries ran out).
        """
        return await self.policy.call(self.pool.execute, query, *args)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        """All rows of ``query``. Raises as :meth:`execute`."""
        return await self.policy.call(self.pool.fetch, query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        """The first row of ``query``, or None. Raises as :meth:`execute`."""
        return await self.policy.call(self.pool.fetchrow, query, *args)

    async def fetchval(self, query: str, *args: object) -> Any:
        """The first column of the first row, or None. Raises as :meth:`execute`."""
        return await self.policy.call(self.pool.fetchval, query, *args)

    # -- transactions ----------------------------------------------------------------------------

    async def transaction(
        self,
        unit: Callable[[Connection], Awaitable[T]],
        *,
        isolation: Isolation = "read_committed",
    ) -> T:
        """Run ``unit(conn)`` inside one transaction and return its result.

        The transaction commits when ``unit`` returns and rolls back when it raises. The whole unit
        is one policy call: on a transient error (a serialization failure, a lost connection) it
        is run again from the start, so ``unit`` must do nothing outside the database that it
        cannot repeat.

        Raises:
            CircuitOpenError, BulkheadFullError, CallTimeoutError, DeadlineExceededError: policy.
            Exception: whatever ``unit`` raised (after retries, if transient).
        """

        async def attempt() -> T:
            async with self.pool.acquire() as conn, conn.transaction(isolation=isolation):
                return await unit(conn)

        return await self.policy.call(attempt)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool for the duration of the block, acquired through the policy
        (the block's own statements are not: use it for LISTEN or session-level locks).

        Raises:
            CircuitOpenError, BulkheadFullError, CallTimeoutError, DeadlineExceededError: policy.
            asyncpg.PostgresError, OSError: no connection could be made.
        """
        conn = await self.policy.call(self.pool.acquire)
        try:
            yield conn
        finally:
            await self.pool.release(conn)
