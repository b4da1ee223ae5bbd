"""``kill -9`` between the database commit and the acknowledgement (DESIGN.md: "kill -9 of any
process at any instant loses no acknowledged work and repeats no side effect").

A real node runs in a child process on Tansu and real Postgres. Its handler is wrapped so that,
once the exactly-once transaction has committed, it writes a marker file and hangs: the message is
committed in Postgres but never acknowledged on the bus. The test SIGKILLs it, starts a second
node in the same group, and checks that the request is redelivered, deduplicated by the inbox (the
handler's effect happened once), answered with the stored reply, and that the outbox row the dead
node never published reaches the bus (time printed).

Run as a script, this module is the child: ``python test_adapters_kill.py DATA_NAME MARKER MODE``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from adapters.postgres import Migration, PostgresActor, add_outbox_relay, drop_actor, transaction
from runtime.actor import Context
from runtime.codec import encode
from runtime.messages import Envelope

ROOT = Path(__file__).resolve().parents[2]  # the child runs with PYTHONPATH=ROOT
REPLIES = "replies.kill"


class Credit(msgspec.Struct, frozen=True, kw_only=True, tag="ledger.Credit"):
    account: str
    amount: int


class Credited(msgspec.Struct, frozen=True, kw_only=True, tag="ledger.Credited"):
    account: str
    balance: int


class LedgerChanged(msgspec.Struct, frozen=True, kw_only=True, tag="ledger.Changed"):
    account: str
    balance: int


class Ledger(PostgresActor):
    name = "ledger"
    inbox = Credit

    def migrations(self) -> list[Migration]:
        return [
            *super().migrations(),
            Migration(
                source="ledger",
                name="0001_init.sql",
                sql="CREATE TABLE balances (id text PRIMARY KEY, balance int NOT NULL);"
                " CREATE TABLE runs (message_id text NOT NULL);",
            ),
        ]

    async def credit(self, msg: Credit, ctx: Context) -> Credited:
        tx = transaction(ctx)
        await tx.conn.execute("INSERT INTO runs VALUES ($1)", ctx.envelope.id)
        balance = await tx.conn.fetchval(
            "INSERT INTO balances VALUES ($1, $2) ON CONFLICT (id) DO UPDATE"
            " SET balance = balances.balance + $2 RETURNING balance",
            msg.account,
            msg.amount,
        )
        await tx.emit(LedgerChanged(account=msg.account, balance=balance))
        return Credited(account=msg.account, balance=balance)


class HangingLedger(Ledger):
    """Commits, then announces it and never returns: the delivery is never acknowledged."""

    marker: Path

    def supervised_children(self, node: Any) -> Any:
        # No relay: the committed outbox row must wait for the next node's relay, so the test can
        # see it unsent after the kill (PostgresActor runs a relay by itself, which would race).
        return ()

    def handler_for(self, type_tag: str) -> Any:
        committed = super().handler_for(type_tag)

        async def commit_then_hang(message: Any, ctx: Context) -> Any:
            await committed(message, ctx)
            self.marker.write_text(ctx.envelope.id)
            await anyio.sleep_forever()

        return commit_then_hang


async def child(data_name: str, marker: str, mode: str) -> None:
    from runtime.config import load_settings
    from runtime.node import Node

    settings = load_settings()
    actor_type = HangingLedger if mode == "hang" else Ledger
    actor = type("Member", (actor_type,), {"data_name": data_name})()
    if isinstance(actor, HangingLedger):
        actor.marker = Path(marker)
    node = Node(actor, settings)
    if mode != "hang":
        # A quick relay on the next node; the hanging one has none (HangingLedger).
        add_outbox_relay(node, poll_interval_s=0.05)
    await node.run()


# -- the test ------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
async def test_killed_after_commit_before_ack_is_redelivered_and_deduplicated(
    tansu: Any, postgres_url: str, unique: str, tmp_path: Path
) -> None:
    import asyncpg

    from tests.contract.conftest import kafka_broker

    data_name = f"ledger_{unique}"
    prefix = f"{unique}."
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
        "PYTHONPATH": str(ROOT),
        "GREENROOM_BROKER": "kafka",
        "GREENROOM_KAFKA_BOOTSTRAP": tansu.bootstrap,
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": "5",
        "GREENROOM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "GREENROOM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "GREENROOM_COMMIT_INTERVAL_S": "0.2",
        "GREENROOM_PARTITIONS": "1",
        "GREENROOM_TOPIC_PREFIX": prefix,
        "GREENROOM_POSTGRES_URL": postgres_url,
    }
    marker = tmp_path / "committed"
    argv = [sys.executable, __file__, data_name, str(marker)]
    broker = kafka_broker(tansu.bootstrap)
    commands, events = f"{prefix}ledger.commands", f"{prefix}ledger.events"
    admin = await asyncpg.connect(postgres_url)
    first = second = None
    try:
        async with broker:
            await broker.ensure_topics({REPLIES: 1, commands: 1, events: 1})
            first = await anyio.open_process([*argv, "hang"], env=env, cwd=ROOT, stdout=None)
            type_tag, body = encode(Credit(account="acc-1", amount=7))
            request = Envelope.new(type_tag, body, key="acc-1", reply_to=REPLIES)
            await broker.publish(commands, request)
            with anyio.fail_after(90):
                while not marker.exists():  # noqa: ASYNC110  (the child's file is the only signal)
                    await anyio.sleep(0.02)
            assert marker.read_text() == request.id
            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed_at = time.perf_counter()
            runs = f'SELECT count(*) FROM "{data_name}".runs'
            assert await admin.fetchval(runs) == 1  # committed before the kill
            unsent = f'SELECT count(*) FROM "{data_name}".outbox WHERE sent_at IS NULL'
            assert await admin.fetchval(unsent) == 1  # and never published

            second = await anyio.open_process([*argv, "normal"], env=env, cwd=ROOT, stdout=None)
            async with broker.subscribe([REPLIES], f"{unique}.replies") as replies:
                with anyio.fail_after(90):
                    delivery = await anext(aiter(replies))
            reply = delivery.envelope
            assert reply is not None
            assert reply.correlation_id == request.correlation_id
            assert msgspec.json.decode(reply.body, type=Credited) == Credited(
                account="acc-1", balance=7
            )
            redelivered_after = time.perf_counter() - killed_at
            with anyio.fail_after(30):
                while await admin.fetchval(unsent):  # noqa: ASYNC110  (polling the database)
                    await anyio.sleep(0.01)
            outbox_after = time.perf_counter() - killed_at
            assert await admin.fetchval(runs) == 1  # deduplicated: acted once
            balance = f'SELECT balance FROM "{data_name}".balances'
            assert await admin.fetchval(balance) == 7
            async with broker.subscribe([events], f"{unique}.events") as published:
                with anyio.fail_after(30):
                    event = (await anext(aiter(published))).envelope
            assert event is not None
            assert event.causation_id == request.id
            print(
                f"\nkill -9 after commit: reply from the next node {redelivered_after:.2f}s after "
                f"the kill; every outbox row published {outbox_after:.2f}s after the kill"
            )
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
        await admin.close()
        await drop_actor(postgres_url, data_name)


if __name__ == "__main__":
    from runtime.logging import configure_logging

    configure_logging("warning")
    anyio.run(child, *sys.argv[1:4])
