"""Dead-lettering: how a message that cannot be handled reaches ``<service>.dlq`` without loss.

A dead letter is the original record: the same envelope (id, type, key, body, correlation,
causation, reply_to, deadline, attempt, user headers) published to the DLQ topic with the same key,
plus these headers saying why:

``gr-dlq-error-type``       the exception class (``ValueError``), or ``InvalidRecord`` /
                            ``DecodeError`` / ``UnknownType`` for messages never handled
``gr-dlq-error-message``    the exception text (truncated to 1,000 characters)
``gr-dlq-attempts``         how many times a handler ran (0 when it never could)
``gr-dlq-source-topic``     where the record was read
``gr-dlq-source-partition``
``gr-dlq-source-offset``
``gr-dlq-at``               when it was dead-lettered (epoch ms)

A record that is not a valid envelope at all is republished as-is with
:meth:`Broker.publish_raw` (its original key, value and headers) plus the same ``gr-dlq-*`` headers,
so nothing about it is lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final, final

import anyio
import msgspec

from runtime.bus.base import Broker, Delivery
from runtime.messages import Envelope

__all__ = [
    "DLQ_AT",
    "DLQ_ATTEMPTS",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ERROR_TYPE",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TOPIC",
    "DeadLetter",
    "dead_letter",
    "dead_letter_headers",
    "read_dead_letters",
]

DLQ_ERROR_TYPE: Final = "gr-dlq-error-type"
DLQ_ERROR_MESSAGE: Final = "gr-dlq-error-message"
DLQ_ATTEMPTS: Final = "gr-dlq-attempts"
DLQ_SOURCE_TOPIC: Final = "gr-dlq-source-topic"
DLQ_SOURCE_PARTITION: Final = "gr-dlq-source-partition"
DLQ_SOURCE_OFFSET: Final = "gr-dlq-source-offset"
DLQ_AT: Final = "gr-dlq-at"

_MAX_MESSAGE = 1_000


def dead_letter_headers(
    delivery: Delivery, *, error_type: str, error_message: str, attempts: int
) -> dict[str, str]:
    """The ``gr-dlq-*`` headers for ``delivery`` failing with the given error."""
    return {
        DLQ_ERROR_TYPE: error_type,
        DLQ_ERROR_MESSAGE: error_message[:_MAX_MESSAGE],
        DLQ_ATTEMPTS: str(attempts),
        DLQ_SOURCE_TOPIC: delivery.topic,
        DLQ_SOURCE_PARTITION: str(delivery.partition),
        DLQ_SOURCE_OFFSET: str(delivery.offset),
        DLQ_AT: str(time.time_ns() // 1_000_000),
    }


async def dead_letter(
    broker: Broker,
    dlq_topic: str,
    delivery: Delivery,
    *,
    error_type: str,
    error_message: str,
    attempts: int,
) -> None:
    """Publish ``delivery``'s record to ``dlq_topic`` with the ``gr-dlq-*`` headers; wait for it.

    The caller acknowledges the delivery only after this returns, so a crash in between
    re-delivers the message rather than losing it.

    Raises:
        BrokerError: the broker did not take the record.
    """
    extra = dead_letter_headers(
        delivery, error_type=error_type, error_message=error_message, attempts=attempts
    )
    envelope = delivery.envelope
    if envelope is None:
        raw_headers = [*delivery.headers, *((k, v.encode()) for k, v in extra.items())]
        await broker.publish_raw(
            dlq_topic, key=delivery.key, value=delivery.value, headers=raw_headers
        )
        return
    dead = msgspec.structs.replace(envelope, headers={**envelope.headers, **extra})
    await broker.publish(dlq_topic, dead)


@final
class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """What an operator reads back from a DLQ record (``greenroom dlq list``)."""

    topic: str
    partition: int
    offset: int
    id: str
    type: str
    key: str
    error_type: str
    error_message: str
    attempts: int
    source_topic: str
    source_partition: int
    source_offset: int

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> DeadLetter:
        """Read a DLQ record; tolerates missing headers (a record some other tool wrote)."""
        headers = _headers(delivery)
        envelope = delivery.envelope
        return cls(
            topic=delivery.topic,
            partition=delivery.partition,
            offset=delivery.offset,
            id=envelope.id if envelope else "",
            type=envelope.type if envelope else "",
            key=envelope.key if envelope else (delivery.key or b"").decode(errors="replace"),
            error_type=headers.get(DLQ_ERROR_TYPE, ""),
            error_message=headers.get(DLQ_ERROR_MESSAGE, ""),
            attempts=_int(headers.get(DLQ_ATTEMPTS)),
            source_topic=headers.get(DLQ_SOURCE_TOPIC, ""),
            source_partition=_int(headers.get(DLQ_SOURCE_PARTITION)),
            source_offset=_int(headers.get(DLQ_SOURCE_OFFSET)),
        )


def _int(text: str | None) -> int:
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


def _headers(delivery: Delivery) -> Mapping[str, str]:
    # The gr-dlq-* headers are in the envelope's headers (memory broker) or only in the raw record
    # headers (Kafka, whose envelope parser keeps just the gr-* fields it knows): read both.
    out: dict[str, str] = {}
    raw: Sequence[tuple[str, bytes]] = delivery.headers
    for name, value in raw:
        if name.startswith("gr-dlq-"):
            out[name] = value.decode(errors="replace") if value is not None else ""
    if delivery.envelope is not None:
        out.update({k: v for k, v in delivery.envelope.headers.items() if k.startswith("gr-dlq-")})
    return out


def _without_dlq_headers(envelope: Envelope) -> Envelope:
    headers = {k: v for k, v in envelope.headers.items() if not k.startswith("gr-dlq-")}
    return msgspec.structs.replace(envelope, headers=headers, attempt=1)


async def read_dead_letters(
    broker: Broker,
    dlq_topic: str,
    *,
    group: str,
    idle_s: float = 2.0,
    replay_to: str | None = None,
) -> list[DeadLetter]:
    """Read ``dlq_topic`` with consumer group ``group`` until no record came for ``idle_s``.

    With ``replay_to``, every valid dead letter is published there again (same id, key, body and
    correlation, ``attempt`` reset to 1, the ``gr-dlq-*`` headers removed) before it is
    acknowledged, and the group commits: a second replay with the same group replays nothing
    twice. Invalid records (not envelopes) are listed but never replayed.

    Raises:
        BrokerError: the topic does not exist or the broker cannot be reached.
    """
    letters: list[DeadLetter] = []
    async with broker.subscribe([dlq_topic], group) as subscription:
        while True:
            with anyio.move_on_after(idle_s):
                delivery = await anext(subscription)
                letters.append(DeadLetter.from_delivery(delivery))
                if replay_to is not None and delivery.envelope is not None:
                    await broker.publish(replay_to, _without_dlq_headers(delivery.envelope))
                delivery.ack()
                continue
            break
        if replay_to is None:
            # Listing must not move the group: leave without committing.
            await subscription.abort()
    return letters
