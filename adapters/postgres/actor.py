"""Postgres for an actor, wired into the runtime: subclass :class:`PostgresActor` instead of
:class:`~runtime.actor.Actor` and every handler runs exactly once per message, in a transaction.

    class Orders(PostgresActor):
        name = "orders"
        inbox = PlaceOrder

        async def place(self, msg: PlaceOrder, ctx: Context) -> OrderPlaced:
            tx = transaction(ctx)                      # this message's unit of work
            await tx.conn.execute("INSERT INTO orders ...", ...)
            await ctx.emit(OrderCreated(...))         # outbox row, published after commit
            return OrderPlaced(...)

What the runtime gets, and where:

- ``on_start`` provisions the role and schema when ``Settings.postgres_url`` is an admin DSN (in
  production it is the actor's own pre-provisioned login, used as is), connects as the role,
  applies Greenroom's and the actor's migrations, and puts the :class:`Database` in
  ``ctx.resources["db"]``. Subclasses that override it call ``await super().on_start(ctx)`` first.
- ``handler_for`` (which the dispatcher calls once per contract) wraps each handler in
  :func:`~adapters.postgres.inbox.handle_once`; a duplicate returns the stored reply.
- Inside a handler, ``ctx.publish``/``ctx.emit`` write outbox rows in the message's transaction
  (``runtime.actor.outbox_scope``), so an event is published only if the effects committed.
- :meth:`PostgresActor.supervised_children` runs the outbox relay beside the consumer.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar

from adapters.postgres.database import Database, postgres_policy
from adapters.postgres.inbox import (
    Replayed,
    UnitOfWork,
    current_unit_of_work,
    handle_once,
    replay_struct,
)
from adapters.postgres.migrations import (
    GREENROOM_MIGRATIONS,
    Migration,
    apply_migrations,
    migrations_from_package,
)
from adapters.postgres.outbox import run_outbox_relay
from adapters.postgres.provision import actor_credentials
from runtime.actor import Actor, Context, NodeContext
from runtime.resilience import PolicyConfig
from runtime.supervision import ChildSpec, Restart

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus

    from runtime.node import Node

__all__ = ["PostgresActor", "add_outbox_relay", "transaction"]


def transaction(ctx: Context) -> UnitOfWork:
    """The unit of work (open transaction + outbox) of the message ``ctx`` belongs to.

    Raises:
        RuntimeError: not inside a handler of a :class:`PostgresActor`.
    """
    return current_unit_of_work(ctx.envelope)


class PostgresActor(Actor):
    """An actor with its own Postgres schema and exactly-once handlers (module docstring).

    Class attributes:

    * ``data_name``: name of the role/schema (``gr_<data_name>``/``<data_name>``); default
      ``name``. Tests set it to a unique name.
    * ``migrations_package``: where the actor's ``NNNN_*.sql`` files are; default the
      ``migrations`` package beside the actor's module, if there is one.
    * ``postgres_policy_config``: the resilience policy of the ``postgres`` dependency. A whole
      handler run is one call through it, so its ``timeout_s`` bounds a handler's transaction.
    """

    data_name: ClassVar[str] = ""
    migrations_package: ClassVar[str | None] = None
    postgres_policy_config: ClassVar[PolicyConfig] = PolicyConfig()

    database: Database

    def migrations(self) -> list[Migration]:
        """Greenroom's migrations, then the actor's, in the order they are applied."""
        package = self.migrations_package
        if package is None:
            parent = type(self).__module__.rpartition(".")[0]
            candidate = f"{parent}.migrations" if parent else "migrations"
            package = candidate if importlib.util.find_spec(candidate) is not None else None
        own = migrations_from_package(package) if package else []
        return [*migrations_from_package(GREENROOM_MIGRATIONS), *own]

    async def on_start(self, ctx: NodeContext) -> None:
        """Provision, connect and migrate; then ``ctx.resources["db"]`` is the database.

        Raises:
            RuntimeError: ``GREENROOM_POSTGRES_URL`` is not set.
            MigrationError: a migration was edited after it was applied, or failed.
            asyncpg.PostgresError, OSError, CircuitOpenError, ...: Postgres could not be used.
        """
        admin_dsn = ctx.settings.postgres_url
        if not admin_dsn:
            raise RuntimeError(
                f"actor {self.name!r} needs Postgres: set GREENROOM_POSTGRES_URL (an admin DSN)"
            )
        data_name = self.data_name or self.name
        credentials = await actor_credentials(admin_dsn, data_name)
        self.database = await Database.connect(
            credentials, policy=postgres_policy(data_name, self.postgres_policy_config)
        )
        try:
            await apply_migrations(self.database, self.migrations())
        except BaseException:
            await self.database.close()
            raise
        ctx.resources["db"] = self.database

    async def on_stop(self, ctx: NodeContext) -> None:
        """Close the pool (waits for connections in use)."""
        database = getattr(self, "database", None)
        if database is not None:
            await database.close()

    def supervised_children(self, node: Node) -> Sequence[ChildSpec]:
        """The outbox relay, unless :func:`add_outbox_relay` already added a tuned one."""
        if any(child.id == RELAY_CHILD_ID for child in node.extra_children):
            return ()
        return (outbox_relay_spec(node),)

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        """The handler of ``type_tag`` run through the inbox (once per message id, in one
        transaction with its outbox rows); a duplicate gets the stored reply."""
        inner = super().handler_for(type_tag)
        events_topic = f"{self.name}.events"

        async def exactly_once(message: Any, ctx: Context) -> Any:
            async def run(_unit: UnitOfWork) -> Any:
                return await inner(message, ctx)

            outcome = await handle_once(
                self.database,
                ctx.envelope,
                run,
                events_topic=events_topic,
                topic=ctx.settings.topic,
            )
            if isinstance(outcome, Replayed):
                ctx.log.info("inbox.duplicate", replayed_reply=bool(outcome.reply_type))
                if outcome.reply_type:
                    return replay_struct(outcome.reply_type, outcome.reply_body)
                return None
            return outcome.result

        return exactly_once


RELAY_CHILD_ID = "outbox_relay"


def add_outbox_relay(node: Node, *, poll_interval_s: float = 0.5) -> ChildSpec:
    """Append the outbox relay of ``node``'s :class:`PostgresActor` to its supervision tree with a
    custom ``poll_interval_s`` (call before ``node.run``); return the child spec.

    A :class:`PostgresActor` runs its relay by itself (:meth:`PostgresActor.supervised_children`);
    this is only needed to tune it, and then replaces the default one.

    Raises:
        TypeError: the node's actor is not a :class:`PostgresActor`.
    """
    spec = outbox_relay_spec(node, poll_interval_s=poll_interval_s)
    node.extra_children.append(spec)
    return spec


def outbox_relay_spec(node: Node, *, poll_interval_s: float = 0.5) -> ChildSpec:
    """The child spec of ``node``'s outbox relay.

    The relay is ``permanent``: a relay that fails (Postgres or the bus down) is restarted with
    the supervisor's backoff, and unsent rows wait in the table.

    Raises:
        TypeError: the node's actor is not a :class:`PostgresActor`.
    """
    actor = node.actor
    if not isinstance(actor, PostgresActor):
        raise TypeError(f"{type(actor).__qualname__} is not a PostgresActor")

    async def relay(*, task_status: TaskStatus[None]) -> None:
        # Resolved at start: the database exists once on_start ran, the broker once run() began.
        await run_outbox_relay(
            actor.database, node.broker, poll_interval_s=poll_interval_s, task_status=task_status
        )

    return ChildSpec(id=RELAY_CHILD_ID, start=relay, restart=Restart.PERMANENT, shutdown_s=5.0)
