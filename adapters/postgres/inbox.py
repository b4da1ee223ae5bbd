"""Exactly-once effects: a message's effects, its inbox row and its outbox rows in one transaction.

:func:`handle_once` runs a handler's unit of work so that (DESIGN.md, delivery contract 3):

1. the inbox row (``message_id`` primary key) is inserted *first*: a second delivery of the same
   message, even one running at the same moment in another process, blocks on that row until the
   first transaction ends, then finds it and does nothing (or takes over if the first rolled back);
2. the handler's statements and outbox rows (:meth:`UnitOfWork.publish`) share the transaction;
3. a request's reply is stored in the inbox row, so a redelivered request gets the same reply
   (:class:`Replayed`) without the handler running again.

The events in the outbox reach the bus through :func:`adapters.postgres.outbox.run_outbox_relay`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, final

import msgspec

from adapters.postgres.database import Connection, Database
from runtime.actor.context import outbox_scope
from runtime.codec import encode
from runtime.messages import Envelope, new_id

__all__ = [
    "Handled",
    "Replayed",
    "UnitOfWork",
    "current_unit_of_work",
    "handle_once",
    "outbox_channel",
    "replay_struct",
]

R = TypeVar("R")

_current: ContextVar[UnitOfWork | None] = ContextVar("greenroom_unit_of_work", default=None)

_INSERT_INBOX: Final = (
    "INSERT INTO inbox (message_id, type) VALUES ($1, $2) "
    "ON CONFLICT (message_id) DO NOTHING RETURNING true"
)
_INSERT_OUTBOX: Final = (
    "INSERT INTO outbox (message_id, topic, key, type, body, headers, correlation_id,"
    " causation_id) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)"
)


def outbox_channel(schema: str) -> str:
    """The NOTIFY channel the relay of ``schema`` listens on."""
    return f"{schema}_outbox"


@final
class UnitOfWork:
    """One message's open transaction: ``conn`` for the handler's statements, plus the outbox.

    ``topic`` turns a logical topic name (``"orders.events"``) into the deployment's (the
    settings' prefix); ``events_topic`` is where :meth:`emit` writes.
    """

    def __init__(
        self,
        conn: Connection,
        envelope: Envelope,
        *,
        schema: str,
        events_topic: str,
        topic: Callable[[str], str] = str,
    ) -> None:
        self.conn = conn
        self.envelope = envelope
        self._schema = schema
        self._events_topic = events_topic
        self._topic = topic
        self.published: list[Envelope] = []

    async def publish(
        self,
        topic: str,
        message: msgspec.Struct,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Write ``message`` to the outbox for ``topic`` (logical name); it is published after the
        transaction commits, caused by this unit's message (same correlation id, causation id =
        its id, its key unless ``key`` is given, its ``traceparent``). Returns the envelope that
        will be sent; its id is fixed now, so a re-publish after a crash carries the same id.

        Raises:
            asyncpg.PostgresError: the insert failed (the transaction is then aborted).
        """
        env = self.envelope
        trace = env.headers.get("traceparent")
        all_headers = {**({"traceparent": trace} if trace else {}), **(headers or {})}
        type_tag, body = encode(message)
        out = Envelope(
            id=new_id(),
            type=type_tag,
            key=env.key if key is None else key,
            body=body,
            correlation_id=env.correlation_id,
            causation_id=env.id,
            headers=all_headers,
        )
        await self.conn.execute(
            _INSERT_OUTBOX,
            out.id,
            self._topic(topic),
            out.key,
            out.type,
            out.body,
            msgspec.json.encode(out.headers).decode(),
            out.correlation_id,
            out.causation_id,
        )
        if not self.published:
            # Delivered on commit only; one per transaction is enough to wake the relay.
            await self.conn.execute("SELECT pg_notify($1, '')", outbox_channel(self._schema))
        self.published.append(out)
        return out

    async def emit(self, message: msgspec.Struct, *, key: str | None = None) -> Envelope:
        """:meth:`publish` to this actor's own events topic."""
        return await self.publish(self._events_topic, message, key=key)


def current_unit_of_work(envelope: Envelope | None = None) -> UnitOfWork:
    """The unit of work of the message being handled in this task.

    With ``envelope``, also checks it is that message's (catches a unit leaking across tasks).

    Raises:
        RuntimeError: no unit of work is open here (the actor has no Postgres adapter, or this
            runs outside a handler).
    """
    unit = _current.get()
    if unit is None or (envelope is not None and unit.envelope.id != envelope.id):
        raise RuntimeError(
            "no transaction is open for this message: only handlers of a PostgresActor have one"
        )
    return unit


@final
@dataclass(frozen=True, slots=True)
class Handled(Generic[R]):
    """The handler ran and its transaction committed; ``result`` is what it returned."""

    result: R
    published: list[Envelope]


@final
@dataclass(frozen=True, slots=True)
class Replayed:
    """The message had been handled before; ``reply_type``/``reply_body`` are the stored reply
    (empty when it was not a request, or its handler returned no contract)."""

    reply_type: str
    reply_body: bytes


async def handle_once(
    db: Database,
    envelope: Envelope,
    handler: Callable[[UnitOfWork], Awaitable[R]],
    *,
    events_topic: str,
    topic: Callable[[str], str] = str,
) -> Handled[R] | Replayed:
    """Run ``handler`` at most once per ``envelope.id`` with durable effects (module docstring).

    The whole unit is one call through the database's policy: on a transient error it is rolled
    back and run again, so ``handler`` should keep effects outside Postgres idempotent (keyed by
    the message id, DESIGN.md delivery contract 5).

    Raises:
        Exception: whatever ``handler`` raised; its transaction was rolled back, nothing of it
            (inbox row, statements, outbox rows) remains, so a redelivery runs it afresh.
        CircuitOpenError, BulkheadFullError, CallTimeoutError, DeadlineExceededError: policy.
    """

    async def unit(conn: Connection) -> Handled[R] | Replayed:
        fresh = await conn.fetchval(_INSERT_INBOX, envelope.id, envelope.type)
        if not fresh:
            row = await conn.fetchrow(
                "SELECT reply_type, reply_body FROM inbox WHERE message_id = $1", envelope.id
            )
            assert row is not None  # the conflicting row exists: we just collided with it
            return Replayed(row["reply_type"] or "", bytes(row["reply_body"] or b""))
        work = UnitOfWork(conn, envelope, schema=db.schema, events_topic=events_topic, topic=topic)
        token = _current.set(work)
        try:
            # ctx.publish/ctx.emit inside the handler now write outbox rows in this transaction.
            with outbox_scope(work):
                result = await handler(work)
        finally:
            _current.reset(token)
        if envelope.reply_to and isinstance(result, msgspec.Struct):
            reply_type, reply_body = encode(result)
            await conn.execute(
                "UPDATE inbox SET reply_type = $2, reply_body = $3 WHERE message_id = $1",
                envelope.id,
                reply_type,
                reply_body,
            )
        return Handled(result, work.published)

    return await db.transaction(unit)


_replay_types: dict[tuple[str, str, tuple[str, ...]], type[msgspec.Struct]] = {}


def replay_struct(reply_type: str, reply_body: bytes) -> msgspec.Struct:
    """A contract instance that encodes to ``reply_body`` under tag ``reply_type``.

    The stored reply is replayed without knowing its class: a struct with the same tag and the
    same fields (typed ``Any``, in the same order) encodes to the same JSON. The tag field is
    ``type`` (msgspec's default) unless the body shows another field carrying the tag.

    Raises:
        TypeError: ``reply_body`` is not a JSON object.
    """
    fields: Any = msgspec.json.decode(reply_body)
    if not isinstance(fields, dict):
        raise TypeError("a stored reply must be a JSON object")
    tag_field = (
        "type"
        if fields.get("type") == reply_type
        else next((name for name, value in fields.items() if value == reply_type), "type")
    )
    data = {name: value for name, value in fields.items() if name != tag_field}
    key = (reply_type, tag_field, tuple(data))
    cls = _replay_types.get(key)
    if cls is None:
        cls = msgspec.defstruct(
            "StoredReply",
            [(name, Any) for name in data],
            tag=reply_type,
            tag_field=tag_field,
            frozen=True,
            kw_only=True,
        )
        _replay_types[key] = cls
    return cls(**data)
