"""The responder side of request/reply: how a reply envelope is built and published.

A reply goes to the request's ``reply_to`` topic (already a full topic name, never prefixed again),
keyed like the request, with the request's ``correlation_id`` and ``causation_id`` = the request's
id, so the requester can match it to its waiting future. Errors travel as :class:`ErrorReply`
contracts with envelope type :data:`ERROR_REPLY_TYPE`.
"""

from __future__ import annotations

import msgspec

from runtime.bus.base import Broker
from runtime.codec import encode
from runtime.errors import DomainError, ErrorReply
from runtime.messages import Envelope

__all__ = ["INTERNAL_ERROR_MESSAGE", "publish_error_reply", "publish_reply", "reply_envelope"]

INTERNAL_ERROR_MESSAGE = "internal error"
"""What an unexpected failure says to the caller: nothing more; the logs have the details."""


def reply_envelope(request: Envelope, message: msgspec.Struct) -> Envelope:
    """The envelope answering ``request`` with ``message`` (a result contract or ErrorReply).

    Raises:
        ValueError: ``request`` has no ``reply_to``.
        TypeError: ``message`` is not a tagged contract.
    """
    if not request.reply_to:
        raise ValueError(f"message {request.id} is not a request (no reply_to)")
    type_tag, body = encode(message)
    trace = request.headers.get("traceparent")
    return Envelope.new(
        type_tag,
        body,
        key=request.key,
        correlation_id=request.correlation_id,
        causation_id=request.id,
        headers={"traceparent": trace} if trace else None,
    )


async def publish_reply(broker: Broker, request: Envelope, message: msgspec.Struct) -> Envelope:
    """Publish ``message`` as the reply to ``request`` and return the envelope sent.

    Raises:
        ValueError: ``request`` has no ``reply_to``.
        BrokerError: the broker did not take the record.
    """
    envelope = reply_envelope(request, message)
    await broker.publish(request.reply_to, envelope)
    return envelope


async def publish_error_reply(
    broker: Broker, request: Envelope, error: DomainError | ErrorReply | None = None
) -> Envelope:
    """Publish a typed error as the reply to ``request``.

    ``error`` is a :class:`DomainError` a handler raised, an :class:`ErrorReply`, or None for an
    unexpected failure, which the caller sees only as ``kind="internal"`` with
    :data:`INTERNAL_ERROR_MESSAGE` (never the exception text or a stack trace).

    Raises:
        ValueError: ``request`` has no ``reply_to``.
        BrokerError: the broker did not take the record.
    """
    if error is None:
        reply = ErrorReply(kind="internal", message=INTERNAL_ERROR_MESSAGE)
    elif isinstance(error, DomainError):
        reply = error.to_reply()
    else:
        reply = error
    return await publish_reply(broker, request, reply)
