"""Actors for the chaos scenarios that need no domain services; nodes load them as module:Class.

Configured by environment variables (a node is a separate process):

``CHAOS_BROKEN_FLAG``   :class:`FragileStart` fails in ``on_start`` while this file exists (a
                        dependency that went away), so a restarted node crashes on start.
``CHAOS_DATA_NAME``     :class:`Ledger`'s Postgres role/schema (unique per test).
``CHAOS_DIE_DIR``       :class:`Ledger` dies (``os._exit``) right after the commit of a message
``CHAOS_DIE_EVERY``     whose ``seq`` is a multiple of ``CHAOS_DIE_EVERY`` (> 0), once per such
                        message (a marker file in ``CHAOS_DIE_DIR`` records the death): the
                        effect is committed, the delivery never acknowledged.
``CHAOS_FAST_BREAKER``  when ``1``, :class:`Ledger`'s Postgres policy times out, trips and
                        probes again within a few seconds (S3), instead of the defaults' tens
                        (:data:`FAST_BREAKER`; the files actor of tests/chaos/shop_actors.py
                        uses it for its bucket under the same variable).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from adapters.postgres import Migration, PostgresActor, transaction
from runtime.actor import Actor, Context, NodeContext
from runtime.resilience import BreakerConfig, PolicyConfig, RetryConfig


class Never(msgspec.Struct, frozen=True, kw_only=True, tag="chaos.Never"):
    """A contract nobody sends."""


class FragileStart(Actor):
    """Starts fine until its dependency is gone (the flag file exists); then crashes on start."""

    name = "fragile"
    inbox = Never

    async def on_start(self, ctx: NodeContext) -> None:
        flag = os.environ.get("CHAOS_BROKEN_FLAG", "")
        if flag and await anyio.Path(flag).exists():
            raise RuntimeError(f"fragile cannot reach its dependency ({flag} says it is down)")

    async def never(self, msg: Never, ctx: Context) -> None:
        raise AssertionError("unreachable")


class Credit(msgspec.Struct, frozen=True, kw_only=True, tag="chaos.Credit"):
    """Add ``amount`` to ``account``; ``seq`` numbers the messages of a test run."""

    account: str
    amount: int
    seq: int


class Credited(msgspec.Struct, frozen=True, kw_only=True, tag="chaos.Credited"):
    """The reply to a :class:`Credit` sent as a request (through the edge)."""

    account: str
    balance: int
    seq: int


FAST_BREAKER = PolicyConfig(
    timeout_s=1.0,
    retry=RetryConfig(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.1),
    breaker=BreakerConfig(
        window_size=10,
        minimum_calls=4,
        failure_rate_threshold=0.5,
        slow_call_s=0.8,
        slow_call_rate_threshold=0.5,
        open_for_s=2.0,
        half_open_calls=2,
    ),
)


class Ledger(PostgresActor):
    """Every credit is one effect row plus a balance update, in the inbox's transaction."""

    name = "ledger"
    inbox = Credit
    data_name = os.environ.get("CHAOS_DATA_NAME", "chaos_ledger")
    if os.environ.get("CHAOS_FAST_BREAKER") == "1":
        postgres_policy_config = FAST_BREAKER
        retry_attempts = 2

    def migrations(self) -> list[Migration]:
        return [
            *super().migrations(),
            Migration(
                source="chaos_ledger",
                name="0001_init.sql",
                # No unique constraint on effects: a duplicate effect must be countable, not hidden.
                sql="CREATE TABLE effects (message_id text NOT NULL, seq int NOT NULL,"
                " account text NOT NULL, amount int NOT NULL);"
                " CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL);",
            ),
        ]

    async def credit(self, msg: Credit, ctx: Context) -> Credited:
        tx = transaction(ctx)
        await tx.conn.execute(
            "INSERT INTO effects VALUES ($1, $2, $3, $4)",
            ctx.envelope.id,
            msg.seq,
            msg.account,
            msg.amount,
        )
        balance = await tx.conn.fetchval(
            "INSERT INTO balances VALUES ($1, $2) ON CONFLICT (account) DO UPDATE"
            " SET balance = balances.balance + $2 RETURNING balance",
            msg.account,
            msg.amount,
        )
        return Credited(account=msg.account, balance=balance, seq=msg.seq)

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        exactly_once = super().handler_for(type_tag)  # commits before it returns
        every = int(os.environ.get("CHAOS_DIE_EVERY", "0"))
        die_dir = Path(os.environ.get("CHAOS_DIE_DIR", "."))

        async def die_after_commit(message: Any, ctx: Context) -> Any:
            result = await exactly_once(message, ctx)
            seq = getattr(message, "seq", 0)
            if every > 0 and seq % every == 0:
                try:
                    # O_EXCL: exactly one death per chosen message, whichever node handles it.
                    fd = os.open(die_dir / f"died-{seq}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return result
                os.write(fd, ctx.envelope.id.encode())
                os.close(fd)
                # Committed in Postgres, never acknowledged on the bus: the worst instant.
                os._exit(137)
            return result

        return die_after_commit
