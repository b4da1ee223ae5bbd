"""Bus throughput: KafkaBroker vs raw aiokafka on the same Tansu, and MemoryBroker.

    python tests/bench/bus_throughput.py [--count 100000] [--json PATH]

Starts its own Tansu (runtime.infra.tansu), then for each bus measures, on fresh topics:

* publish: ``count`` small records sent pipelined and acknowledged (acks=all);
* consume: the same records read by a new consumer group and acknowledged one by one, timed
  from the first record to the last (the group join is not counted), the median of three
  passes by new groups; raw aiokafka is also measured decoding each record into an Envelope,
  to separate the envelope's price from the rest of Greenroom's delivery path;
* end-to-end: a joined consumer reads while a producer publishes, timed from the first send to
  the last record read.

Prints msgs/s for each and the KafkaBroker/raw ratios, and writes JSON (default
bench-results/bus_throughput.json). It measures; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from runtime.bus.base import Broker  # noqa: E402
from runtime.bus.kafka import KafkaBroker  # noqa: E402
from runtime.bus.memory import MemoryBroker  # noqa: E402
from runtime.infra.tansu import TansuServer  # noqa: E402
from runtime.messages import Envelope, envelope_from_record, envelope_to_headers  # noqa: E402

PARTITIONS = 4
CHUNK = 1_000  # envelopes per publish_many call, so memory stays bounded for large counts
TARGET_RATIO = 0.8
TARGET_MEMORY = 200_000
FETCH_MAX_WAIT_MS = 5  # Tansu does not wake a waiting fetch on new data (DESIGN.md)
MAX_BATCH = 500
CONSUME_RUNS = 3  # each consume figure is the median of this many passes, each a new group


def make_envelopes(count: int) -> list[Envelope]:
    return [
        Envelope.new("bench.Ping", b"%016d" % i, key=f"key-{i % 100}", headers={"traceparent": "x"})
        for i in range(count)
    ]


async def median_of(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    """The median of ``runs`` measurements: one consume pass lasts well under a second, so a
    single pass swings with whatever else the machine does."""
    return statistics.median([await measure() for _ in range(runs)])


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# --- Greenroom brokers (KafkaBroker and MemoryBroker share this code)


async def broker_publish(broker: Broker, topic: str, sent: Sequence[Envelope]) -> None:
    for start in range(0, len(sent), CHUNK):
        await broker.publish_many(topic, sent[start : start + CHUNK])


async def broker_round(broker: Broker, sent: Sequence[Envelope]) -> dict[str, float]:
    count = len(sent)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await broker.ensure_topics({topic: PARTITIONS})
    began = time.perf_counter()
    await broker_publish(broker, topic, sent)
    publish_s = time.perf_counter() - began

    consume_s = await median_of(
        CONSUME_RUNS, lambda: broker_consume(broker, topic, f"g-{uuid.uuid4().hex[:8]}", count)
    )

    topic2 = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    await broker.ensure_topics({topic2: PARTITIONS})
    async with broker.subscribe([topic2], f"g-{uuid.uuid4().hex[:8]}") as sub:
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker_publish, broker, topic2, sent)
            seen = 0
            async for batch in sub.batches():
                for delivery in batch:
                    delivery.ack()
                seen += len(batch)
                if seen >= count:
                    break
        e2e_s = time.perf_counter() - began
    return {
        "publish": rate(count, publish_s),
        "consume": rate(count, consume_s),
        "end_to_end": rate(count, e2e_s),
    }


async def broker_consume(broker: Broker, topic: str, group: str, count: int) -> float:
    async with broker.subscribe([topic], group) as sub:
        seen = 0
        began = 0.0
        # The consumer's fast path, as the actor node's mailbox feed uses it.
        async for batch in sub.batches():
            if not seen:
                began = time.perf_counter()
            for delivery in batch:
                delivery.ack()
            seen += len(batch)
            if seen >= count:
                break
        return time.perf_counter() - began


# --- raw aiokafka, doing the same work without Greenroom in between


async def raw_publish(producer: AIOKafkaProducer, topic: str, records: Sequence[Any]) -> None:
    for start in range(0, len(records), CHUNK):
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records[start : start + CHUNK]
        ]
        for future in futures:
            await future


async def raw_consume_until(
    consumer: AIOKafkaConsumer, count: int, on_first: Callable[[], None], *, decode: bool = False
) -> None:
    """Read ``count`` records; with ``decode``, rebuild each one's Envelope as any consumer of
    these records must (the same function KafkaBroker uses), and nothing more."""
    seen = 0
    while seen < count:
        batches = await consumer.getmany(timeout_ms=200, max_records=MAX_BATCH)
        for records in batches.values():
            for record in records:
                if not seen:
                    on_first()
                if decode:
                    envelope_from_record(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                    )
                seen += 1
    await consumer.commit()


async def raw_consume_once(bootstrap: str, topic: str, count: int, *, decode: bool) -> float:
    """Seconds a new group takes from its first record to its ``count``-th."""
    first: list[float] = []
    consumer = raw_consumer(bootstrap, topic)
    await consumer.start()
    try:
        await raw_consume_until(
            consumer, count, lambda: first.append(time.perf_counter()), decode=decode
        )
        return time.perf_counter() - first[0]
    finally:
        await consumer.stop()


def raw_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_poll_records=MAX_BATCH,
    )


async def raw_round(
    bootstrap: str, admin_broker: Broker, sent: Sequence[Envelope]
) -> dict[str, float]:
    count = len(sent)
    records = [
        (e.key.encode(), e.body, envelope_to_headers(e)) for e in sent
    ]  # the same records KafkaBroker writes
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    await admin_broker.ensure_topics({topic: PARTITIONS})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    await producer.start()
    try:
        began = time.perf_counter()
        await raw_publish(producer, topic, records)
        publish_s = time.perf_counter() - began

        consume_s = await median_of(
            CONSUME_RUNS, lambda: raw_consume_once(bootstrap, topic, count, decode=False)
        )
        consume_decoded_s = await median_of(
            CONSUME_RUNS, lambda: raw_consume_once(bootstrap, topic, count, decode=True)
        )

        topic2 = f"bench-raw-e2e-{uuid.uuid4().hex[:8]}"
        await admin_broker.ensure_topics({topic2: PARTITIONS})
        consumer = raw_consumer(bootstrap, topic2)
        await consumer.start()
        try:
            # Join the group before timing, as the KafkaBroker round does in subscribe().
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(raw_publish, producer, topic2, records)
                await raw_consume_until(consumer, count, lambda: None)
            e2e_s = time.perf_counter() - began
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return {
        "publish": rate(count, publish_s),
        "consume": rate(count, consume_s),
        "consume_decoded": rate(count, consume_decoded_s),
        "end_to_end": rate(count, e2e_s),
    }


async def run(count: int, bootstrap: str) -> dict[str, Any]:
    sent = make_envelopes(count)
    results: dict[str, dict[str, float]] = {}
    kafka = KafkaBroker(
        bootstrap,
        idempotence=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_batch=MAX_BATCH,
        session_timeout_ms=10_000,
    )
    async with kafka:
        results["raw_aiokafka"] = await raw_round(bootstrap, kafka, sent)
        results["kafka_broker"] = await broker_round(kafka, sent)
    async with MemoryBroker(max_batch=MAX_BATCH) as memory:
        results["memory_broker"] = await broker_round(memory, sent)
    ratio = {
        phase: results["kafka_broker"][phase] / results["raw_aiokafka"][phase]
        for phase in ("publish", "consume", "end_to_end")
    }
    # The raw loop above does no work per record; the decoded one rebuilds each Envelope. Their
    # gap is the price of the envelope itself, the rest is Greenroom's own delivery machinery.
    ratio["consume_vs_raw_decoded"] = (
        results["kafka_broker"]["consume"] / results["raw_aiokafka"]["consume_decoded"]
    )
    return {
        "count": count,
        "partitions": PARTITIONS,
        "python": platform.python_version(),
        "results": results,
        "ratio_kafka_broker_vs_raw": ratio,
        "targets": {"ratio": TARGET_RATIO, "memory_broker_msgs_per_s": TARGET_MEMORY},
    }


def report(data: dict[str, Any]) -> None:
    print(f"bus throughput: {data['count']} messages, {data['partitions']} partitions")
    print(f"{'bus':<16}{'publish/s':>14}{'consume/s':>14}{'end-to-end/s':>16}")
    for name, phases in data["results"].items():
        print(
            f"{name:<16}{phases['publish']:>14,.0f}{phases['consume']:>14,.0f}"
            f"{phases['end_to_end']:>16,.0f}"
        )
    ratio = data["ratio_kafka_broker_vs_raw"]
    print(
        f"KafkaBroker/raw aiokafka: publish {ratio['publish']:.2f}, consume {ratio['consume']:.2f},"
        f" end-to-end {ratio['end_to_end']:.2f} (target >= {TARGET_RATIO})"
    )
    decoded = data["results"]["raw_aiokafka"]["consume_decoded"]
    print(
        f"raw aiokafka consume with the envelope decoded per record: {decoded:,.0f} msgs/s;"
        f" KafkaBroker consume / that: {ratio['consume_vs_raw_decoded']:.2f}"
    )
    memory = data["results"]["memory_broker"]["end_to_end"]
    print(f"MemoryBroker end-to-end: {memory:,.0f} msgs/s (target >= {TARGET_MEMORY:,})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "bus_throughput.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        server = TansuServer(Path(tmp))
        server.start()
        try:
            data = anyio.run(run, args.count, server.bootstrap)
        finally:
            server.stop()
    report(data)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
