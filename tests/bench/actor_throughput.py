"""Actor throughput: a no-op handler behind the full node path, over MemoryBroker and Kafka.

    python tests/bench/actor_throughput.py [--count 50000] [--kafka-count 20000] [--json PATH]

For each bus: ``count`` messages over 64 keys are published to ``bench.commands`` first, then a
:class:`~runtime.node.Node` starts and handles them all (consumer -> mailbox lanes -> dispatcher ->
handler -> ack -> commit). Timed from the first message handled to the last, so the group join is
not counted. The handler checks per-key order (each key's sequence numbers must increase) and the
result reports violations, which must be 0. Kafka runs on its own Tansu (runtime.infra.tansu).

Prints msgs/s and writes JSON (default bench-results/actor_throughput.json). It measures; it
asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.actor import Actor, Context  # noqa: E402
from runtime.bus.base import Broker  # noqa: E402
from runtime.bus.memory import MemoryBroker  # noqa: E402
from runtime.codec import encode  # noqa: E402
from runtime.config import Settings  # noqa: E402
from runtime.logging import configure_logging  # noqa: E402
from runtime.messages import Envelope  # noqa: E402
from runtime.node import Node  # noqa: E402

KEYS = 64
PARTITIONS = 4
CHUNK = 1_000


class Tick(msgspec.Struct, frozen=True, kw_only=True, tag="bench.Tick"):
    seq: int


class Bench(Actor):
    name = "bench"
    inbox = Tick
    concurrency = 16
    mailbox_size = 1_000

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.violations = 0
        self.first = 0.0
        self.last = 0.0
        self.done = anyio.Event()
        self._last_seq: dict[str, int] = {}

    async def tick(self, msg: Tick, ctx: Context) -> None:
        key = ctx.envelope.key
        if msg.seq <= self._last_seq.get(key, -1):
            self.violations += 1
        self._last_seq[key] = msg.seq
        if self.count == 0:
            self.first = time.perf_counter()
        self.count += 1
        if self.count == self.expected:
            self.last = time.perf_counter()
            self.done.set()


async def measure(broker: Broker, settings: Settings, count: int) -> dict[str, Any]:
    """Publish ``count`` ticks, run a node over them, return its rate and order check."""
    topic = Bench.commands_topic(settings)
    await broker.ensure_topics({topic: PARTITIONS})
    for start in range(0, count, CHUNK):
        envelopes = []
        for i in range(start, min(start + CHUNK, count)):
            type_tag, body = encode(Tick(seq=i))
            envelopes.append(Envelope.new(type_tag, body, key=f"key-{i % KEYS}"))
        await broker.publish_many(topic, envelopes)
    actor = Bench(count)
    node = Node(actor, settings, broker=broker)
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        with anyio.fail_after(600):
            await actor.done.wait()
        node.drain()
    seconds = actor.last - actor.first
    return {
        "count": count,
        "seconds": seconds,
        "msgs_per_s": count / seconds if seconds > 0 else float("inf"),
        "order_violations": actor.violations,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    memory_settings = Settings(broker="memory", topic_prefix=prefix, partitions=PARTITIONS)
    async with MemoryBroker() as memory:
        results["memory"] = await measure(memory, memory_settings, args.count)
    print(f"memory: {results['memory']['msgs_per_s']:,.0f} msgs/s", results["memory"])

    from runtime.bus.kafka import KafkaBroker
    from runtime.infra.tansu import TansuServer

    with tempfile.TemporaryDirectory() as tmp:
        tansu = TansuServer(Path(tmp))
        tansu.start()
        try:
            settings = Settings(
                broker="kafka",
                kafka_bootstrap=tansu.bootstrap,
                kafka_idempotence=False,
                kafka_fetch_max_wait_ms=5,
                topic_prefix=prefix,
                partitions=PARTITIONS,
            )
            async with KafkaBroker.from_settings(settings) as kafka:
                results["kafka"] = await measure(kafka, settings, args.kafka_count)
        finally:
            tansu.stop()
    print(f"kafka (Tansu): {results['kafka']['msgs_per_s']:,.0f} msgs/s", results["kafka"])
    return results


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--kafka-count", type=int, default=20_000)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench-results" / "actor_throughput.json"
    )
    args = parser.parse_args()
    configure_logging("warning")
    results = anyio.run(main, args)
    report = {
        "python": platform.python_version(),
        "partitions": PARTITIONS,
        "keys": KEYS,
        "concurrency": Bench.concurrency,
        "mailbox_size": Bench.mailbox_size,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run()
