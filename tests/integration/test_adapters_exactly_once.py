"""Exactly-once effects through a real node (MemoryBroker bus, real Postgres): a message delivered
twice acts once and a request gets the same reply twice; a failing handler leaves nothing behind;
the outbox relay publishes every committed row, in order, and rows left by a "crash" are published
within a bound (printed, never asserted)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import msgspec
import pytest

from adapters.postgres import (
    Database,
    Migration,
    PostgresActor,
    UnitOfWork,
    add_outbox_relay,
    apply_migrations,
    drop_actor,
    handle_once,
    provision_actor,
    run_outbox_relay,
    transaction,
)
from runtime.actor import Context
from runtime.bus.memory import MemoryBroker
from runtime.codec import encode
from runtime.config import Settings
from runtime.errors import ConflictError
from runtime.messages import Envelope
from runtime.node import Node
from tests.support.wait import eventually

pytestmark = pytest.mark.postgres

REPLIES = "replies.eo"


class Deposit(msgspec.Struct, frozen=True, kw_only=True, tag="bank.Deposit"):
    account: str
    amount: int


class Deposited(msgspec.Struct, frozen=True, kw_only=True, tag="bank.Deposited"):
    account: str
    balance: int


class BalanceChanged(msgspec.Struct, frozen=True, kw_only=True, tag="bank.BalanceChanged"):
    account: str
    balance: int


ACCOUNTS = Migration(
    source="bank",
    name="0001_accounts.sql",
    sql="""
    CREATE TABLE accounts (id text PRIMARY KEY, balance int NOT NULL CHECK (balance <= 1000));
    CREATE TABLE runs (message_id text NOT NULL);
    """,
)


class Bank(PostgresActor):
    name = "bank"
    inbox = Deposit

    def migrations(self) -> list[Migration]:
        return [*super().migrations(), ACCOUNTS]

    async def deposit(self, msg: Deposit, ctx: Context) -> Deposited:
        tx = transaction(ctx)
        await tx.conn.execute("INSERT INTO runs VALUES ($1)", ctx.envelope.id)
        balance = await tx.conn.fetchval(
            "INSERT INTO accounts VALUES ($1, $2) ON CONFLICT (id) DO UPDATE"
            " SET balance = accounts.balance + $2 RETURNING balance",
            msg.account,
            msg.amount,
        )
        # ctx.emit, not the bus: inside a PostgresActor handler it writes an outbox row in this
        # transaction, so a rolled-back handler publishes nothing.
        await ctx.emit(BalanceChanged(account=msg.account, balance=balance))
        if msg.amount < 0:
            raise ConflictError("no withdrawals here")  # after writes: they must roll back
        return Deposited(account=msg.account, balance=balance)


@dataclass
class Harness:
    node: Node
    actor: Bank
    broker: MemoryBroker
    settings: Settings

    @property
    def db(self) -> Database:
        return self.actor.database

    async def send(self, envelope: Envelope) -> None:
        await self.broker.publish(Bank.commands_topic(self.settings), envelope)

    async def collect(self, topic: str, group: str, count: int) -> list[Envelope]:
        got: list[Envelope] = []
        async with self.broker.subscribe([topic], group) as sub:
            with anyio.fail_after(10):
                async for delivery in sub:
                    assert delivery.envelope is not None
                    got.append(delivery.envelope)
                    delivery.ack()
                    if len(got) == count:
                        break
        return got


def request(message: msgspec.Struct, *, key: str) -> Envelope:
    type_tag, body = encode(message)
    return Envelope.new(type_tag, body, key=key, reply_to=REPLIES)


@asynccontextmanager
async def running(postgres_url: str, unique: str) -> AsyncIterator[Harness]:
    settings = Settings(
        broker="memory",
        topic_prefix=f"{unique}.",
        partitions=2,
        postgres_url=postgres_url,
        shutdown_timeout_s=5.0,
    )
    actor_type = type("UniqueBank", (Bank,), {"data_name": f"bank_{unique}"})
    actor = actor_type()
    broker = MemoryBroker(commit_interval_s=0.02)
    try:
        async with broker:
            await broker.ensure_topics({REPLIES: 1})
            node = Node(actor, settings, broker=broker)
            add_outbox_relay(node, poll_interval_s=0.05)
            async with anyio.create_task_group() as tg:
                await tg.start(node.run)
                try:
                    yield Harness(node, actor, broker, settings)
                finally:
                    node.drain()
                    await eventually(lambda: node.state == "stopped")
    finally:
        await drop_actor(postgres_url, f"bank_{unique}")


async def test_same_message_twice_acts_once_and_replays_the_reply(
    postgres_url: str, unique: str
) -> None:
    async with running(postgres_url, unique) as h:
        first = request(Deposit(account="acc-1", amount=10), key="acc-1")
        await h.send(first)
        await h.send(first)  # redelivered: same id
        replies = await h.collect(REPLIES, f"{unique}.r", 2)
        assert [r.type for r in replies] == ["bank.Deposited", "bank.Deposited"]
        assert replies[0].body == replies[1].body  # the stored reply, byte for byte
        assert msgspec.json.decode(replies[1].body, type=Deposited).balance == 10
        assert {r.causation_id for r in replies} == {first.id}
        assert await h.db.fetchval("SELECT balance FROM accounts WHERE id = 'acc-1'") == 10
        assert await h.db.fetchval("SELECT count(*) FROM runs") == 1
        assert await h.db.fetchval("SELECT count(*) FROM inbox") == 1

        events = await h.collect(Bank.events_topic(h.settings), f"{unique}.e", 1)
        assert [e.type for e in events] == ["bank.BalanceChanged"]
        assert events[0].causation_id == first.id
        assert events[0].correlation_id == first.correlation_id
        await _all_sent(h.db)


async def test_failed_handler_leaves_no_trace_and_events_keep_key_order(
    postgres_url: str, unique: str
) -> None:
    async with running(postgres_url, unique) as h:
        refused = request(Deposit(account="acc-2", amount=-5), key="acc-2")
        await h.send(refused)
        [reply] = await h.collect(REPLIES, f"{unique}.r", 1)
        assert reply.type == "greenroom.ErrorReply"
        assert await h.db.fetchval("SELECT count(*) FROM runs") == 0
        assert await h.db.fetchval("SELECT count(*) FROM inbox") == 0
        assert await h.db.fetchval("SELECT count(*) FROM outbox") == 0

        for amount in range(1, 21):
            type_tag, body = encode(Deposit(account="acc-3", amount=amount))
            await h.send(Envelope.new(type_tag, body, key="acc-3"))
        events = await h.collect(Bank.events_topic(h.settings), f"{unique}.e", 20)
        balances = [msgspec.json.decode(e.body, type=BalanceChanged).balance for e in events]
        assert balances == [sum(range(1, n + 1)) for n in range(1, 21)]  # in commit order


async def test_rows_left_by_a_crash_are_published_within_a_bound(
    postgres_url: str, unique: str
) -> None:
    """Rows committed while no relay ran (their node died right after its commits): a fresh relay
    publishes them all, in order per key; how long it took is printed."""
    data_name = f"bank_{unique}"
    settings = Settings(broker="memory", topic_prefix=f"{unique}.", partitions=2)
    topic = Bank.events_topic(settings)
    db = await Database.connect(await provision_actor(postgres_url, data_name))
    try:
        await apply_migrations(db, Bank().migrations())
        rows = 200
        for i in range(rows):
            envelope = Envelope.new("bank.Deposit", b"{}", key=f"acc-{i % 7}")

            async def unit(work: UnitOfWork, i: int = i) -> None:
                await work.emit(BalanceChanged(account=f"acc-{i % 7}", balance=i))

            await handle_once(db, envelope, unit, events_topic=topic)
        broker = MemoryBroker(commit_interval_s=0.02)
        async with broker:
            await broker.ensure_topics({topic: 2})
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                await tg.start(run_outbox_relay, db, broker)
                await _all_sent(db)
                elapsed = time.perf_counter() - started
                tg.cancel_scope.cancel()
            harness = Harness(None, Bank(), broker, settings)  # type: ignore[arg-type]
            events = await harness.collect(topic, f"{unique}.late", rows)
        print(f"\noutbox after crash: {rows} rows published in {elapsed * 1000:.1f} ms")
        assert len({e.id for e in events}) == rows
        per_key: dict[str, list[int]] = {}
        for e in events:
            per_key.setdefault(e.key, []).append(
                msgspec.json.decode(e.body, type=BalanceChanged).balance
            )
        assert len(per_key) == 7
        assert all(v == sorted(v) for v in per_key.values())
    finally:
        await db.close()
        await drop_actor(postgres_url, data_name)


async def _all_sent(db: Database) -> None:
    with anyio.fail_after(10):
        # Polling on purpose: the relay, in another task, exposes no event for "all sent".
        while await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):  # noqa: ASYNC110
            await anyio.sleep(0.01)
