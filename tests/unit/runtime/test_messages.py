"""The envelope, its ids, and its mapping to Kafka record headers + value."""

from __future__ import annotations

import pytest

from runtime.messages import (
    Envelope,
    InvalidRecordError,
    envelope_from_record,
    envelope_to_headers,
    new_id,
)


def through_kafka(envelope: Envelope) -> Envelope:
    """The envelope rebuilt from the record (key, value, headers) it travels as on Kafka."""
    return envelope_from_record(
        topic="t",
        partition=2,
        offset=9,
        key=envelope.key.encode() or None,
        value=envelope.body,
        headers=envelope_to_headers(envelope),
    )


def test_full_envelope_round_trips_through_headers() -> None:
    sent = Envelope(
        id=new_id(),
        type="orders.PlaceOrder",
        key="order-1",
        body=b'{"qty": 1}',
        correlation_id="c-1",
        causation_id="m-0",
        reply_to="replies.edge-1",
        deadline=1_900_000_000_000,
        attempt=4,
        headers={"traceparent": "00-abc-def-01", "x-tenant": "acme"},
    )
    assert through_kafka(sent) == sent


def test_minimal_envelope_omits_empty_fields_and_round_trips() -> None:
    sent = Envelope(id=new_id(), type="t.Ping", key="", body=b"")
    headers = envelope_to_headers(sent)
    assert [name for name, _ in headers] == ["gr-id", "gr-type"]
    got = envelope_from_record(
        topic="t", partition=0, offset=0, key=None, value=b"", headers=headers
    )
    assert got == sent


def test_new_defaults_correlation_to_its_own_id() -> None:
    envelope = Envelope.new("t.Ping", b"x", key="k", headers={"a": "b"})
    assert envelope.correlation_id == envelope.id
    assert envelope.headers == {"a": "b"}


def test_deadline_helpers() -> None:
    envelope = Envelope.new("t.Ping", b"", deadline=1_000)
    assert envelope.remaining_ms(now_ms=400) == 600
    assert not envelope.expired(now_ms=999)
    assert envelope.expired(now_ms=1_000)
    assert Envelope.new("t.Ping", b"").remaining_ms() is None


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"x", [], "missing gr-id"),
        (b"x", [("gr-id", b"1")], "missing gr-id or gr-type"),
        (None, [("gr-id", b"1"), ("gr-type", b"t")], "tombstone"),
        (b"x", [("gr-id", b"1"), ("gr-type", b"t"), ("gr-deadline", b"soon")], "malformed"),
        (b"x", [("gr-id", b"1"), ("gr-type", b"t"), ("gr-attempt", b"")], None),
        (b"x", [("gr-id", b"\xff\xfe"), ("gr-type", b"t")], "not UTF-8"),
    ],
)
def test_invalid_records_name_where_they_are(
    value: bytes | None, headers: list[tuple[str, bytes]], reason: str | None
) -> None:
    if reason is None:  # an empty optional header means "default", not an error
        got = envelope_from_record(
            topic="orders.commands", partition=3, offset=42, key=None, value=value, headers=headers
        )
        assert got.attempt == 1
        return
    with pytest.raises(InvalidRecordError) as caught:
        envelope_from_record(
            topic="orders.commands", partition=3, offset=42, key=None, value=value, headers=headers
        )
    error = caught.value
    assert (error.topic, error.partition, error.offset) == ("orders.commands", 3, 42)
    assert reason in error.reason
    assert "orders.commands[3]@42" in str(error)


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    made = [new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)
