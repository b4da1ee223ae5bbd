"""What a handler can reach: the message's envelope, a bound logger, publishing, nested requests
and the actor's resources (adapters such as a Postgres pool, filled by later layers).

:class:`NodeContext` lives as long as the node (hooks get it); :class:`Context` is made per message
around it, so it is cheap: a few attribute assignments and one logger bind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, final

import msgspec

from runtime.bus.base import Broker
from runtime.codec import encode
from runtime.config import Settings
from runtime.messages import Envelope

if TYPE_CHECKING:
    from runtime.request import Requester

__all__ = ["Context", "NodeContext", "TransactionalOutbox", "outbox_scope"]


class TransactionalOutbox(Protocol):
    """Where a handler's publishes go while its message's transaction is open.

    An adapter (``adapters.postgres``) installs one with :func:`outbox_scope` around a handler so
    that ``ctx.publish``/``ctx.emit`` write outbox rows in the same transaction as the handler's
    effects, instead of reaching the bus before the commit (DESIGN.md, delivery contract 3-4).
    """

    async def publish(
        self, topic: str, message: msgspec.Struct, *, key: str | None = None
    ) -> Envelope: ...


_outbox: ContextVar[TransactionalOutbox | None] = ContextVar("greenroom_outbox", default=None)


@contextmanager
def outbox_scope(outbox: TransactionalOutbox) -> Iterator[None]:
    """Route ``Context.publish``/``emit`` in this task (and tasks it starts) to ``outbox``."""
    token = _outbox.set(outbox)
    try:
        yield
    finally:
        _outbox.reset(token)


@final
class NodeContext:
    """Node-wide services for one actor: settings, broker, logger and ``resources``.

    ``resources`` is a plain dict that ``on_start`` (or an adapter layer) fills, e.g.
    ``ctx.resources["db"] = pool``; handlers read it through :attr:`Context.resources`.
    """

    __slots__ = ("broker", "log", "name", "requester", "resources", "settings")

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        broker: Broker,
        log: Any,
        requester: Requester | None = None,
        resources: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.broker = broker
        self.log = log
        self.requester = requester
        self.resources: dict[str, Any] = resources if resources is not None else {}

    async def publish(
        self,
        topic: str,
        message: msgspec.Struct,
        *,
        key: str = "",
        correlation_id: str = "",
        causation_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Publish ``message`` to ``topic`` (a logical name such as ``"orders.events"``, prefixed
        through ``Settings.topic``) and return the envelope sent.

        Raises:
            BrokerError: the broker did not take the record.
        """
        type_tag, body = encode(message)
        envelope = Envelope.new(
            type_tag,
            body,
            key=key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=headers,
        )
        await self.broker.publish(self.settings.topic(topic), envelope)
        return envelope


@final
class Context:
    """Per-message context handed to a handler.

    ``envelope`` is what the handler sees (its ``attempt`` counts this run); ``log`` is bound with
    ``correlation_id``, ``message_id`` and ``type``.
    """

    __slots__ = ("_log", "envelope", "node")

    def __init__(self, node: NodeContext, envelope: Envelope) -> None:
        self.node = node
        self.envelope = envelope
        self._log: Any = None

    @property
    def log(self) -> Any:
        """The actor's logger bound with ``correlation_id``, ``message_id`` and ``type``."""
        # Bound on first use: most messages log nothing, and binding costs more than the rest
        # of a no-op handler's context.
        if self._log is None:
            env = self.envelope
            self._log = self.node.log.bind(
                correlation_id=env.correlation_id, message_id=env.id, type=env.type
            )
        return self._log

    @property
    def resources(self) -> Mapping[str, Any]:
        """The actor's adapters and other node-wide objects (see :class:`NodeContext`)."""
        return self.node.resources

    @property
    def settings(self) -> Settings:
        return self.node.settings

    def remaining_s(self) -> float | None:
        """Seconds left before the message's deadline (may be negative), or None without one."""
        remaining = self.envelope.remaining_ms()
        return None if remaining is None else remaining / 1000

    async def publish(
        self, topic: str, message: msgspec.Struct, *, key: str | None = None
    ) -> Envelope:
        """Publish ``message`` to ``topic`` (logical name, e.g. ``"payments.commands"``), caused
        by this message: same correlation id, causation id = this message's id, and the key of
        this message unless ``key`` is given. W3C ``traceparent`` is carried along.

        Inside a transactional handler (an adapter's :func:`outbox_scope`), the message is written
        to the outbox instead and published after the commit.

        Raises:
            BrokerError: the broker did not take the record.
        """
        outbox = _outbox.get()
        if outbox is not None:
            return await outbox.publish(topic, message, key=key)
        env = self.envelope
        trace = env.headers.get("traceparent")
        return await self.node.publish(
            topic,
            message,
            key=env.key if key is None else key,
            correlation_id=env.correlation_id,
            causation_id=env.id,
            headers={"traceparent": trace} if trace else None,
        )

    async def emit(self, message: msgspec.Struct, *, key: str | None = None) -> Envelope:
        """Publish an event of this actor to its own ``<name>.events`` topic.

        Raises:
            BrokerError: the broker did not take the record.
        """
        return await self.publish(f"{self.node.name}.events", message, key=key)

    async def request(
        self,
        service: str,
        message: msgspec.Struct,
        *,
        reply_type: Any,
        key: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Ask ``service`` and wait for its reply, within what is left of this message's deadline.

        The handler runs under ``deadline_scope(envelope.deadline)``, so the requester never gives
        the nested call more time than this message has left, whatever ``timeout_s`` says. The
        request carries this message's correlation id and ``traceparent``, and this message's id
        as its causation id; ``key`` defaults to this message's key.

        Raises:
            DeadlineExceededError: this message's deadline passed, or no reply came in time.
            DomainError: the subclass matching the error the other service replied with.
            UnavailableError: the bus refused the publish, or the requester is closed.
            RuntimeError: this node has no requester.
        """
        requester = self.node.requester
        if requester is None:
            raise RuntimeError(f"actor {self.node.name!r} runs without a requester")
        env = self.envelope
        trace = env.headers.get("traceparent")
        return await requester.request(
            service,
            message,
            key=env.key if key is None else key,
            reply_type=reply_type,
            timeout_s=timeout_s,
            headers={"traceparent": trace} if trace else None,
            correlation_id=env.correlation_id,
            causation_id=env.id,
        )
