"""The message envelope shared by every broker, and its mapping to Kafka records.

On Kafka the envelope's ``body`` is the record value and every other field travels as a record
header (``gr-id``, ``gr-type``, ...), so any Kafka tool can read and route it. User headers (W3C
``traceparent`` and friends) travel under their own names.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import msgspec

__all__ = [
    "HEADER_PREFIX",
    "Envelope",
    "InvalidRecordError",
    "envelope_from_record",
    "envelope_to_headers",
    "new_id",
]

HEADER_PREFIX: Final = "gr-"

_id_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def new_id() -> str:
    """Return a unique, lexically sortable id: 32 hex digits of 48-bit ms time + 80-bit random.

    Ids made in the same millisecond by one process increase monotonically, so sorting ids
    sorts messages by creation order within a process and by time across processes.
    """
    global _last_ms, _last_rand
    now = time.time_ns() // 1_000_000
    with _id_lock:
        if now <= _last_ms:
            now = _last_ms
            _last_rand += 1
        else:
            _last_ms = now
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        value = (now << 80) | (_last_rand & ((1 << 80) - 1))
    # Fixed-width lower-case hex keeps lexical order equal to numeric order, and is the cheapest
    # encoding Python offers in C (base64.b32encode is pure Python, ~20x slower).
    return f"{value:032x}"


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What travels on the bus: routing and tracing fields around an encoded contract (``body``).

    ``deadline`` is absolute, in epoch milliseconds; ``attempt`` counts deliveries to a handler,
    starting at 1. ``headers`` is a string map for cross-cutting data such as ``traceparent``.
    """

    id: str
    type: str
    key: str
    body: bytes
    correlation_id: str = ""
    causation_id: str = ""
    reply_to: str = ""
    deadline: int = 0
    attempt: int = 1
    headers: dict[str, str] = {}

    @classmethod
    def new(
        cls,
        type: str,
        body: bytes,
        *,
        key: str = "",
        correlation_id: str = "",
        causation_id: str = "",
        reply_to: str = "",
        deadline: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Build an envelope with a fresh id; the correlation id defaults to that id."""
        message_id = new_id()
        return cls(
            id=message_id,
            type=type,
            key=key,
            body=body,
            correlation_id=correlation_id or message_id,
            causation_id=causation_id,
            reply_to=reply_to,
            deadline=deadline,
            headers=dict(headers) if headers else {},
        )

    def remaining_ms(self, now_ms: int | None = None) -> int | None:
        """Milliseconds left before the deadline (may be negative), or None without a deadline."""
        if not self.deadline:
            return None
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return self.deadline - now

    def expired(self, now_ms: int | None = None) -> bool:
        """True when the envelope carries a deadline and it has passed."""
        remaining = self.remaining_ms(now_ms)
        return remaining is not None and remaining <= 0


class InvalidRecordError(Exception):
    """A record on the bus is not a valid Greenroom envelope (written by another tool, or corrupt).

    Carries where the record lives so an operator can find it, and why it was refused.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"invalid envelope at {topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


# Header names for each envelope field; precomputed so the hot path does no string work.
_H_ID: Final = "gr-id"
_H_TYPE: Final = "gr-type"
_H_CORR: Final = "gr-correlation-id"
_H_CAUSE: Final = "gr-causation-id"
_H_REPLY: Final = "gr-reply-to"
_H_DEADLINE: Final = "gr-deadline"
_H_ATTEMPT: Final = "gr-attempt"


def envelope_to_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """Kafka record headers for an envelope: its fields (empty ones omitted) then user headers."""
    headers = [(_H_ID, envelope.id.encode()), (_H_TYPE, envelope.type.encode())]
    if envelope.correlation_id:
        headers.append((_H_CORR, envelope.correlation_id.encode()))
    if envelope.causation_id:
        headers.append((_H_CAUSE, envelope.causation_id.encode()))
    if envelope.reply_to:
        headers.append((_H_REPLY, envelope.reply_to.encode()))
    if envelope.deadline:
        headers.append((_H_DEADLINE, str(envelope.deadline).encode()))
    if envelope.attempt != 1:
        headers.append((_H_ATTEMPT, str(envelope.attempt).encode()))
    for name, value in envelope.headers.items():
        headers.append((name, value.encode()))
    return headers


def envelope_from_record(  # noqa: PLR0912 - the flat if-chain is the point (see below)
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | Iterable[tuple[str, bytes]],
) -> Envelope:
    """Rebuild an envelope from a Kafka record.

    Raises:
        InvalidRecordError: the record lacks ``gr-id``/``gr-type``, has a malformed field, or
            has no value; the error names the topic, partition and offset.
    """
    message_id = message_type = correlation_id = causation_id = reply_to = ""
    deadline_ms = 0
    attempt_no = 1
    user: dict[str, str] = {}
    try:
        # One pass, testing the envelope's own names first: this is the consumer's hot path,
        # and a flat if-chain beats both a dict built then popped (~1.4 us a record) and a
        # name -> slot lookup (~1.2 us); it takes ~0.8 us on CPython 3.11.
        for name, raw in headers:
            text = raw.decode() if raw is not None else ""
            if name == _H_ID:
                message_id = text
            elif name == _H_TYPE:
                message_type = text
            elif name == _H_CORR:
                correlation_id = text
            elif name == _H_CAUSE:
                causation_id = text
            elif name == _H_REPLY:
                reply_to = text
            elif name == _H_DEADLINE:
                deadline_ms = int(text) if text else 0
            elif name == _H_ATTEMPT:
                attempt_no = int(text) if text else 1
            else:
                user[name] = text
    except UnicodeDecodeError as exc:
        raise InvalidRecordError(topic, partition, offset, f"header is not UTF-8: {exc}") from exc
    except ValueError as exc:
        raise InvalidRecordError(topic, partition, offset, f"malformed header: {exc}") from exc
    if not message_id or not message_type:
        raise InvalidRecordError(topic, partition, offset, "missing gr-id or gr-type header")
    if value is None:
        raise InvalidRecordError(topic, partition, offset, "record has no value (tombstone)")
    try:
        key_text = key.decode() if key else ""
    except UnicodeDecodeError as exc:
        raise InvalidRecordError(topic, partition, offset, f"key is not UTF-8: {exc}") from exc
    return Envelope(
        id=message_id,
        type=message_type,
        key=key_text,
        body=value,
        correlation_id=correlation_id,
        causation_id=causation_id,
        reply_to=reply_to,
        deadline=deadline_ms,
        attempt=attempt_no,
        headers=user,
    )
