"""What happens to one delivery: decode, deadline check, handler with retries, reply or DLQ.

The :class:`Dispatcher` is the mailbox's handler callback. It never raises for anything a message
can cause (bad record, failing handler, domain error); it raises only when the broker will not take
a reply or dead letter, and then the delivery stays unacked and is delivered again later.

Outcomes, each counted in ``greenroom_messages_total{actor, outcome}``:

==============  ===========================================================================
``handled``     the handler returned; a request got its reply
``domain``      the handler raised a :class:`DomainError`: not retried; a request gets an
                :class:`ErrorReply` of that kind, anything else is logged and acknowledged
``dead``        the handler raised on every one of ``retry_attempts`` runs: dead-lettered, and
                a request gets ``ErrorReply(kind="internal")`` with no details
``invalid``     not a valid envelope, an unknown type, or a body that does not decode:
                dead-lettered at once (a request gets ``kind="invalid"`` naming the field)
``expired``     a request whose deadline passed before it was dequeued: dropped unhandled
==============  ===========================================================================
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio
import msgspec

from runtime.actor.actor import Actor
from runtime.actor.context import Context, NodeContext
from runtime.actor.reply import publish_error_reply, publish_reply
from runtime.bus.base import Delivery
from runtime.codec import DecodeError
from runtime.dlq import dead_letter
from runtime.errors import DomainError, ErrorReply
from runtime.messages import Envelope
from runtime.metrics import registry
from runtime.resilience.deadline import deadline_scope

__all__ = ["Dispatcher", "backoff_delay"]

_outcomes = registry.counter("greenroom_messages_total", "Messages finished, by actor and outcome")
_retries = registry.counter(
    "greenroom_handler_retries_total", "Handler runs retried after an error"
)
_latency = registry.histogram("greenroom_handler_seconds", "Handler run time, by actor and type")


def backoff_delay(
    retry: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retry`` (1-based): full jitter over
    ``min(cap_s, base_s * 2 ** (retry - 1))``, so the result is in ``[0, that bound)``."""
    return rand() * min(cap_s, base_s * 2.0 ** (retry - 1))


@final
class Dispatcher:
    """Handles deliveries for one actor instance (see the module docstring for the outcomes)."""

    def __init__(self, actor: Actor, node: NodeContext, *, dlq_topic: str) -> None:
        self.actor = actor
        self.node = node
        self.dlq_topic = dlq_topic
        self._name = node.name
        self._codec = actor.codec
        self._attempts = actor.retry_attempts
        self._backoff = (actor.retry_backoff_s, actor.retry_backoff_max_s)
        # Bound methods resolved once, not per message.
        self._handlers: dict[str, Callable[[Any, Context], Awaitable[Any]]] = {
            tag: actor.handler_for(tag) for tag in actor.handlers
        }
        self._log = node.log

    async def __call__(self, delivery: Delivery) -> None:
        """Handle ``delivery`` to one of the outcomes above. Does not ack it (the mailbox does).

        Raises:
            BrokerError: a reply or dead letter could not be published.
        """
        envelope = delivery.envelope
        if envelope is None:
            await self._dead(delivery, "InvalidRecord", str(delivery.error), attempts=0)
            _outcomes.inc(actor=self._name, outcome="invalid")
            return
        handler = self._handlers.get(envelope.type)
        if handler is None:
            reason = f"{self._name} has no handler for message type {envelope.type!r}"
            await self._invalid(delivery, envelope, "UnknownType", reason, "")
            return
        try:
            message = self._codec.decode(envelope.type, envelope.body)
        except DecodeError as exc:
            await self._invalid(delivery, envelope, "DecodeError", str(exc), exc.path)
            return
        if envelope.reply_to and envelope.expired():
            _outcomes.inc(actor=self._name, outcome="expired")
            self._log.info(
                "request.expired",
                message_id=envelope.id,
                correlation_id=envelope.correlation_id,
                type=envelope.type,
                late_ms=-(envelope.remaining_ms() or 0),
            )
            return
        await self._handle(delivery, envelope, message, handler)

    async def _handle(
        self,
        delivery: Delivery,
        envelope: Envelope,
        message: Any,
        handler: Callable[[Any, Context], Awaitable[Any]],
    ) -> None:
        last: Exception | None = None
        runs = 0
        for run in range(self._attempts):
            seen = (
                envelope
                if run == 0
                else msgspec.structs.replace(envelope, attempt=envelope.attempt + run)
            )
            ctx = Context(self.node, seen)
            runs += 1
            started = time.perf_counter()
            try:
                if seen.deadline:
                    # Nested requests, resilience timeouts and retries all read this deadline.
                    with deadline_scope(seen.deadline):
                        result = await handler(message, ctx)
                else:
                    result = await handler(message, ctx)
            except DomainError as exc:
                _latency.observe(time.perf_counter() - started, actor=self._name, type=seen.type)
                await self._domain_error(envelope, ctx, exc)
                return
            except Exception as exc:
                _latency.observe(time.perf_counter() - started, actor=self._name, type=seen.type)
                last = exc
                ctx.log.warning(
                    "handler.failed",
                    attempt=seen.attempt,
                    of=envelope.attempt + self._attempts - 1,
                    error_type=type(exc).__qualname__,
                    error=str(exc),
                )
                if run + 1 < self._attempts and not await self._wait_before_retry(
                    envelope, run + 1
                ):
                    break
                continue
            _latency.observe(time.perf_counter() - started, actor=self._name, type=seen.type)
            await self._succeeded(envelope, ctx, result)
            return
        assert last is not None  # the loop only falls through after a failure
        await self._exhausted(delivery, envelope, last, runs)

    async def _wait_before_retry(self, envelope: Envelope, retry: int) -> bool:
        # False when the message's deadline would pass first: retrying past it helps nobody.
        delay = backoff_delay(retry, *self._backoff)
        remaining = envelope.remaining_ms()
        if remaining is not None and remaining <= delay * 1000:
            return False
        _retries.inc(actor=self._name)
        await anyio.sleep(delay)
        return True

    async def _succeeded(self, envelope: Envelope, ctx: Context, result: Any) -> None:
        if envelope.reply_to:
            if isinstance(result, msgspec.Struct):
                await publish_reply(self.node.broker, envelope, result)
            else:
                # A request must be answered, or its caller waits for the deadline in vain.
                ctx.log.error(
                    "handler.no_reply",
                    returned=type(result).__qualname__,
                    reply_to=envelope.reply_to,
                )
                await publish_error_reply(self.node.broker, envelope, None)
        _outcomes.inc(actor=self._name, outcome="handled")

    async def _domain_error(self, envelope: Envelope, ctx: Context, exc: DomainError) -> None:
        ctx.log.info("handler.domain_error", kind=exc.kind, error=exc.message, field=exc.field)
        if envelope.reply_to:
            await publish_error_reply(self.node.broker, envelope, exc)
        _outcomes.inc(actor=self._name, outcome="domain")

    async def _exhausted(
        self, delivery: Delivery, envelope: Envelope, exc: Exception, runs: int
    ) -> None:
        self._log.error(
            "handler.dead_lettered",
            message_id=envelope.id,
            correlation_id=envelope.correlation_id,
            type=envelope.type,
            attempts=runs,
            dlq=self.dlq_topic,
            exc_info=exc,
        )
        await self._dead(delivery, type(exc).__qualname__, str(exc), attempts=runs)
        if envelope.reply_to:
            await publish_error_reply(self.node.broker, envelope, None)
        _outcomes.inc(actor=self._name, outcome="dead")

    async def _invalid(
        self, delivery: Delivery, envelope: Envelope, error_type: str, reason: str, path: str
    ) -> None:
        self._log.warning(
            "message.invalid",
            message_id=envelope.id,
            type=envelope.type,
            error_type=error_type,
            error=reason,
        )
        await self._dead(delivery, error_type, reason, attempts=0)
        if envelope.reply_to and not envelope.expired():
            await publish_error_reply(
                self.node.broker, envelope, ErrorReply(kind="invalid", message=reason, field=path)
            )
        _outcomes.inc(actor=self._name, outcome="invalid")

    async def _dead(
        self, delivery: Delivery, error_type: str, message: str, *, attempts: int
    ) -> None:
        await dead_letter(
            self.node.broker,
            self.dlq_topic,
            delivery,
            error_type=error_type,
            error_message=message,
            attempts=attempts,
        )
