"""Dead letters: the original record plus gr-dlq-* headers, readable from either broker."""

from __future__ import annotations

import anyio

from runtime.bus.base import Delivery, OffsetTracker, TopicPartition
from runtime.bus.memory import MemoryBroker
from runtime.dlq import (
    DLQ_ATTEMPTS,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    DeadLetter,
    dead_letter,
    read_dead_letters,
)
from runtime.messages import Envelope, envelope_from_record, envelope_to_headers


def _delivery(envelope: Envelope | None, **raw: object) -> Delivery:
    return Delivery(
        topic="svc.commands",
        partition=2,
        offset=41,
        tracker=OffsetTracker(41),
        envelope=envelope,
        **raw,  # type: ignore[arg-type]
    )


async def _only_record(broker: MemoryBroker, topic: str) -> Delivery:
    async with broker.subscribe([topic], "reader") as sub:
        with anyio.fail_after(5):
            async for delivery in sub:
                return delivery
    raise AssertionError("no record")


async def test_a_dead_letter_keeps_the_envelope_and_adds_the_error_headers() -> None:
    original = Envelope.new(
        "svc.Do",
        b'{"x":1}',
        key="k",
        correlation_id="corr",
        causation_id="cause",
        headers={"traceparent": "00-a-b-01"},
    )
    async with MemoryBroker() as broker:
        await broker.ensure_topics({"svc.dlq": 1})
        await dead_letter(
            broker,
            "svc.dlq",
            _delivery(original),
            error_type="ValueError",
            error_message="boom " * 500,
            attempts=3,
        )
        dead = await _only_record(broker, "svc.dlq")
    assert dead.envelope is not None
    env = dead.envelope
    assert (env.id, env.type, env.key, env.body) == (original.id, "svc.Do", "k", b'{"x":1}')
    assert (env.correlation_id, env.causation_id) == ("corr", "cause")
    assert env.headers["traceparent"] == "00-a-b-01"
    assert env.headers[DLQ_ERROR_TYPE] == "ValueError"
    assert len(env.headers[DLQ_ERROR_MESSAGE]) == 1_000  # truncated
    assert env.headers[DLQ_ATTEMPTS] == "3"
    assert env.headers[DLQ_SOURCE_TOPIC] == "svc.commands"
    assert env.headers[DLQ_SOURCE_PARTITION] == "2"
    assert env.headers[DLQ_SOURCE_OFFSET] == "41"


async def test_an_invalid_record_is_dead_lettered_raw_without_loss() -> None:
    raw_headers = [("source", b"\xff not utf-8")]
    delivery = _delivery(None, key=b"raw-key", value=b"\x00garbage", headers=raw_headers)
    async with MemoryBroker() as broker:
        await broker.ensure_topics({"svc.dlq": 1})
        await dead_letter(
            broker,
            "svc.dlq",
            delivery,
            error_type="InvalidRecord",
            error_message="no gr-id",
            attempts=0,
        )
        dead = await _only_record(broker, "svc.dlq")
    assert dead.envelope is None  # still not an envelope: nothing was invented
    assert dead.value == b"\x00garbage"
    assert dead.key == b"raw-key"
    assert ("source", b"\xff not utf-8") in list(dead.headers)
    letter = DeadLetter.from_delivery(dead)
    assert letter.error_type == "InvalidRecord"
    assert letter.key == "raw-key"
    assert letter.source_offset == 41


def test_dead_letters_read_back_from_kafka_style_raw_headers() -> None:
    # On Kafka the envelope parser keeps only the gr-* fields it knows; the dlq headers are read
    # from the raw record headers, which a Kafka Delivery carries.
    envelope = Envelope.new("svc.Do", b"{}", key="k", headers={DLQ_ERROR_TYPE: "KeyError"})
    headers = [*envelope_to_headers(envelope), (DLQ_ATTEMPTS, b"5")]
    parsed = envelope_from_record(
        topic="svc.dlq", partition=0, offset=7, key=b"k", value=b"{}", headers=headers
    )
    delivery = Delivery(
        topic="svc.dlq",
        partition=0,
        offset=7,
        tracker=OffsetTracker(7),
        envelope=parsed,
        key=b"k",
        value=b"{}",
        headers=headers,
    )
    letter = DeadLetter.from_delivery(delivery)
    assert letter.error_type == "KeyError"
    assert letter.attempts == 5
    assert letter.id == envelope.id


async def test_listing_moves_nothing_and_replay_republishes_each_letter_once() -> None:
    async with MemoryBroker() as broker:
        await broker.ensure_topics({"svc.dlq": 2, "svc.commands": 2})
        originals = [Envelope.new("svc.Do", b"{}", key=f"k{i}") for i in range(3)]
        for original in originals:
            await dead_letter(
                broker,
                "svc.dlq",
                _delivery(original),
                error_type="ValueError",
                error_message="x",
                attempts=3,
            )
        listed = await read_dead_letters(broker, "svc.dlq", group="list-1", idle_s=0.05)
        assert sorted(letter.id for letter in listed) == sorted(e.id for e in originals)
        assert await broker.committed("list-1", TopicPartition("svc.dlq", 0)) is None

        replayed = await read_dead_letters(
            broker, "svc.dlq", group="replay", idle_s=0.05, replay_to="svc.commands"
        )
        again = await read_dead_letters(
            broker, "svc.dlq", group="replay", idle_s=0.05, replay_to="svc.commands"
        )
        assert len(replayed) == 3
        assert again == []
        async with broker.subscribe(["svc.commands"], "reader") as sub:
            back = []
            with anyio.fail_after(5):
                async for delivery in sub:
                    back.append(delivery.envelope)
                    if len(back) == 3:
                        break
    assert sorted(e.id for e in back if e) == sorted(e.id for e in originals)
    assert all(e is not None and e.attempt == 1 for e in back)
    assert all(e is not None and not any(k.startswith("gr-dlq-") for k in e.headers) for e in back)
