"""The outbox relay: publishes an actor's committed outbox rows to the bus, in order, and marks
them sent (DESIGN.md, delivery contract 4).

Run :func:`run_outbox_relay` as a supervised child of the node (it reports ``started`` once it is
connected). Guarantees and their reasons:

- **One active relay per schema.** Every replica runs one, but only the holder of a session
  advisory lock publishes; the others wait for it. Two relays publishing at once could
  interleave the rows of one key out of order. If the holder's process dies, its session ends,
  the lock is freed and another relay takes over within ``poll_interval_s``.
- **Order.** Rows are published one after another in ``id`` (insertion) order, each awaited, so
  rows of one key reach their partition in the order their transactions wrote them.
- **At least once.** A row is marked sent only after the broker took it; a crash in between
  publishes it again, with the same message id, which the receivers' inboxes absorb.
- **Wakes quickly.** The writing transaction NOTIFYs the relay's channel on commit; polling every
  ``poll_interval_s`` covers a lost notification (or a relay that reconnected).

A failure (Postgres or the bus down) raises out of the relay, so its supervisor restarts it with
backoff; rows wait in the table meanwhile.
"""

from __future__ import annotations

from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskStatus

from adapters.postgres.database import Database
from adapters.postgres.inbox import outbox_channel
from adapters.postgres.provision import advisory_key
from runtime.bus.base import Broker
from runtime.logging import get_logger
from runtime.messages import Envelope
from runtime.metrics import registry

__all__ = ["relay_lock_key", "run_outbox_relay"]

_log = get_logger("adapters.postgres.outbox")
_published = registry.counter("greenroom_outbox_published_total", "Outbox rows published")
_backlog = registry.gauge("greenroom_outbox_backlog", "Unsent outbox rows seen by the relay")

_UNSENT: Final = (
    "SELECT id, message_id, topic, key, type, body, headers, correlation_id, causation_id"
    " FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1"
)
_headers_decoder: Final = msgspec.json.Decoder(dict[str, str])


def relay_lock_key(schema: str) -> int:
    """The advisory-lock key that elects the one active relay of ``schema``."""
    return advisory_key(f"greenroom.outbox_relay:{schema}")


def _envelope(row: Any) -> Envelope:
    headers = row["headers"]
    return Envelope(
        id=row["message_id"],
        type=row["type"],
        key=row["key"],
        body=bytes(row["body"]),
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        headers=_headers_decoder.decode(headers) if isinstance(headers, str | bytes) else headers,
    )


async def run_outbox_relay(
    db: Database,
    broker: Broker,
    *,
    batch_size: int = 100,
    poll_interval_s: float = 0.5,
    retention_s: float = 3600.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Publish ``db``'s outbox until cancelled (see the module docstring).

    Sent rows older than ``retention_s`` are deleted as the relay goes.

    Raises:
        asyncpg.PostgresError, OSError, CircuitOpenError, ...: Postgres failed; restart me.
        BrokerError: the bus refused a record; restart me (the row stays unsent).
    """
    wake = anyio.Event()

    def on_notify(*_: object) -> None:
        wake.set()

    log = _log.bind(schema=db.schema)
    # A dedicated pooled connection for the whole run: it holds the leader lock and LISTENs.
    async with db.connection() as conn:
        task_status.started()
        lock = relay_lock_key(db.schema)
        waiting_logged = False
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
            if not waiting_logged:
                log.info("outbox.relay_standby")
                waiting_logged = True
            await anyio.sleep(poll_interval_s)
        channel = outbox_channel(db.schema)
        await conn.add_listener(channel, on_notify)
        log.info("outbox.relay_active")
        try:
            last_prune = anyio.current_time()
            while True:
                # Reset before reading, so a commit that lands while we publish wakes us again.
                wake = anyio.Event()
                sent = await _publish_batch(db, broker, batch_size)
                if sent == batch_size:
                    continue  # more waiting: no sleep between full batches
                if anyio.current_time() - last_prune >= min(retention_s, 60.0):
                    await db.execute(
                        "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
                        retention_s,
                    )
                    last_prune = anyio.current_time()
                with anyio.move_on_after(poll_interval_s):
                    await wake.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await conn.remove_listener(channel, on_notify)
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)


async def _publish_batch(db: Database, broker: Broker, batch_size: int) -> int:
    rows = await db.fetch(_UNSENT, batch_size)
    _backlog.set(len(rows), schema=db.schema)
    if not rows:
        return 0
    sent: list[int] = []
    try:
        for row in rows:
            await broker.publish(row["topic"], _envelope(row))
            sent.append(row["id"])
            _published.inc(schema=db.schema)
    finally:
        if sent:
            # Mark what made it even when a later row failed, so it is not sent twice needlessly.
            with anyio.CancelScope(shield=True):
                await db.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", sent
                )
    return len(rows)
