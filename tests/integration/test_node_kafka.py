"""Actor nodes on Kafka (Tansu): the DLQ, graceful SIGTERM under load, and backpressure.

Node subprocesses run ``greenroom run tests.support.demo:Demo`` with ``GREENROOM_*`` settings;
the demo counts every handled ``Work`` id in a Redis hash (``HINCRBY``), so a count above 1 is a
handler run repeated for an acknowledged message.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
import pytest
import redis.asyncio as redis
from anyio.abc import Process

from runtime.bus.base import Broker
from runtime.codec import encode
from runtime.config import ENV_PREFIX, Settings
from runtime.dlq import DeadLetter
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from runtime.node import Node
from tests.contract.conftest import kafka_broker
from tests.support.demo import Demo, Poison, Work
from tests.support.wait import eventually, eventually_async

ROOT = Path(__file__).resolve().parents[2]
GREENROOM = Path(sys.executable).with_name("greenroom")
REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = [pytest.mark.kafka]


def kafka_settings(tansu: TansuServer, unique: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "broker": "kafka",
        "kafka_bootstrap": tansu.bootstrap,
        "kafka_idempotence": False,
        "kafka_fetch_max_wait_ms": 5,
        "kafka_session_timeout_ms": 6_000,
        "kafka_heartbeat_interval_ms": 500,
        "commit_interval_s": 0.2,
        "topic_prefix": f"{unique}.",
        "partitions": 4,
        "shutdown_timeout_s": 10.0,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


def work(seq: int, key: str, pad: str = "") -> Envelope:
    type_tag, body = encode(Work(seq=seq, pad=pad))
    return Envelope.new(type_tag, body, key=key)


@asynccontextmanager
async def node_process(
    settings: Settings, extra_env: Mapping[str, str], health_file: Path
) -> AsyncIterator[Process]:
    """``greenroom run tests.support.demo:Demo`` in a subprocess; killed if still alive at exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.env())
    env.update(extra_env)
    process = await anyio.open_process(
        [str(GREENROOM), "run", "tests.support.demo:Demo", "--health-file", str(health_file)],
        env=env,
        cwd=ROOT,
        stdout=None,
        stderr=None,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


async def health(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(await anyio.Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


async def test_a_poison_message_reaches_the_dlq_after_n_attempts_and_the_partition_moves_on(
    tansu: TansuServer, unique: str
) -> None:
    settings = kafka_settings(tansu, unique)
    demo = Demo()
    node = Node(demo, settings)
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            await tg.start(node.run)
            broker = node.broker
            type_tag, body = encode(Poison(note="always fails"))
            poison = Envelope.new(type_tag, body, key="p")
            commands = Demo.commands_topic(settings)
            await broker.publish(commands, poison)
            await broker.publish_many(commands, [work(i, "p") for i in range(1, 6)])
            await eventually(lambda: len(demo.handled) == 5, within=60)
            dead = await _read_one(broker, Demo.dlq_topic(settings), unique)
            node.drain()
    assert demo.attempts[poison.id] == [1, 2, 3]
    assert [seq for _, seq, _ in demo.handled] == [1, 2, 3, 4, 5]
    assert dead.envelope is not None
    assert dead.envelope.id == poison.id
    assert dead.envelope.body == poison.body
    letter = DeadLetter.from_delivery(dead)
    print("dead letter:", msgspec.json.encode(letter).decode())
    assert letter.error_type == "RuntimeError"
    assert letter.error_message == "poison message: always fails"
    assert letter.attempts == Demo.retry_attempts == 3
    assert letter.source_topic == commands
    assert letter.key == "p"


async def _read_one(broker: Broker, topic: str, unique: str) -> Any:
    async with broker.subscribe([topic], f"dlq-reader-{unique}") as sub:
        async for delivery in sub:
            delivery.ack()
            return delivery
    raise AssertionError("DLQ subscription ended without a record")


@pytest.mark.slow
async def test_sigterm_under_load_exits_zero_in_time_and_repeats_no_acknowledged_work(
    tansu: TansuServer, unique: str, run_dir: Path
) -> None:
    settings = kafka_settings(tansu, unique, shutdown_timeout_s=10.0)
    redis_key = f"test:{unique}:handled"
    client = redis.Redis.from_url(REDIS_URL)
    extra = {
        "DEMO_REDIS_URL": REDIS_URL,
        "DEMO_REDIS_KEY": redis_key,
        "DEMO_SLEEP_S": "0.002",
        "DEMO_CONCURRENCY": "4",
        "DEMO_MAILBOX_SIZE": "200",
    }
    total = 3_000
    try:
        async with kafka_broker(tansu.bootstrap) as broker:
            commands = Demo.commands_topic(settings)
            await broker.ensure_topics({commands: settings.partitions})
            await broker.publish_many(commands, [work(i, f"k{i % 40}") for i in range(total)])
            async with node_process(settings, extra, run_dir / f"{unique}-1.json") as first:

                async def some_handled() -> bool:
                    return int(await client.hlen(redis_key)) >= total // 5

                await eventually_async(some_handled, within=90)
                handled_at_signal = await client.hlen(redis_key)
                first.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                with anyio.fail_after(settings.shutdown_timeout_s + 5):
                    code = await first.wait()
                exit_s = time.monotonic() - signalled
            handled_by_first = await client.hlen(redis_key)
            print(
                f"SIGTERM at {handled_at_signal} handled; exit code {code} after {exit_s:.2f}s; "
                f"first node handled {handled_by_first} of {total}"
            )
            assert code == 0
            assert handled_by_first < total, "the first node must be stopped under load"
            async with node_process(settings, extra, run_dir / f"{unique}-2.json") as second:

                async def all_handled() -> bool:
                    return int(await client.hlen(redis_key)) >= total

                await eventually_async(all_handled, within=120)
                second.send_signal(signal.SIGTERM)
                with anyio.fail_after(settings.shutdown_timeout_s + 5):
                    assert await second.wait() == 0
            counts = {k.decode(): int(v) for k, v in (await client.hgetall(redis_key)).items()}
    finally:
        await client.delete(redis_key)
        await client.aclose()
    duplicates = {k: v for k, v in counts.items() if v > 1}
    print(f"handled {len(counts)} distinct messages; duplicates: {len(duplicates)}")
    assert len(counts) == total
    assert duplicates == {}


@pytest.mark.slow
async def test_backpressure_keeps_rss_flat_and_pauses_and_resumes_the_consumer(
    tansu: TansuServer, unique: str, run_dir: Path
) -> None:
    settings = kafka_settings(tansu, unique, shutdown_timeout_s=10.0)
    extra = {"DEMO_SLEEP_S": "0.005", "DEMO_CONCURRENCY": "2", "DEMO_MAILBOX_SIZE": "20"}
    health_file = run_dir / f"{unique}-bp.json"
    total = 100_000
    pad = "x" * 512  # 100k x ~0.6 KB: a backlog that would add well over 100 MiB if buffered
    async with kafka_broker(tansu.bootstrap) as broker:
        commands = Demo.commands_topic(settings)
        await broker.ensure_topics({commands: settings.partitions})
        started = time.monotonic()
        batch = 5_000
        for start in range(0, total, batch):
            await broker.publish_many(
                commands, [work(i, f"k{i % 64}", pad) for i in range(start, start + batch)]
            )
        print(f"published {total} messages in {time.monotonic() - started:.1f}s")
    async with node_process(settings, extra, health_file) as node:
        proc = psutil.Process(node.pid)

        async def running() -> bool:
            return (await health(health_file)).get("state") == "running"

        await eventually_async(running, within=60)
        samples: list[float] = []
        states: list[dict[str, Any]] = []
        with anyio.fail_after(60):
            for _ in range(30):
                await anyio.sleep(0.5)
                samples.append(proc.memory_info().rss / 2**20)
                states.append((await health(health_file)).get("mailbox") or {})
        node.send_signal(signal.SIGTERM)
        with anyio.fail_after(settings.shutdown_timeout_s + 5):
            code = await node.wait()
    print("RSS MiB samples:", " ".join(f"{s:.1f}" for s in samples))
    last = states[-1]
    print(f"mailbox at the end: {last}; exit code {code}")
    # Flat = no upward trend once warmed up. Fetch buffers are refilled and dropped on every
    # pause/resume, so single samples wobble by a few MiB; a consumer that buffered the backlog
    # would instead climb by 100+ MiB over the run.
    third = len(samples) // 3
    early, late = sorted(samples[3 : third + 3]), sorted(samples[-third:])
    growth = late[len(late) // 2] - early[len(early) // 2]
    print(f"RSS median growth, first to last third: {growth:+.1f} MiB; peak {max(samples):.1f}")
    assert growth < 25, "RSS must stay flat while 100k messages wait"
    assert max(s.get("held", 0) for s in states) <= 20
    assert last["pauses"] >= 1
    assert last["resumes"] >= 1
    assert code == 0
