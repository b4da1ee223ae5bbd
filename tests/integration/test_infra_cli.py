"""``greenroom infra up`` as a user runs it: a subprocess that prints settings for another shell.

Nothing is configured, so it starts all four servers itself (Tansu, SeaweedFS, and embedded
Postgres and Redis from the machine's binaries). The test reaches each one with its real client
from the printed settings, then stops the command with SIGINT (exit 0) or SIGKILL, and finds no
process of its tree left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.s3,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]

READY = "# infra ready"


def _start_infra_up(run_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str], list[str]]:
    """Start ``greenroom infra up`` with no server configured; its printed settings and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env["GREENROOM_RUN_DIR"] = str(run_dir)
    script = Path(sys.executable).with_name("greenroom")
    proc = subprocess.Popen(
        [str(script), "infra", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    settings: dict[str, str] = {}
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("export "):
            name, _, value = shlex.split(line.removeprefix("export "))[0].partition("=")
            settings[name] = value
        if line.startswith(READY):
            return proc, settings, lines
    proc.wait(10)
    proc.stdout.close()
    raise AssertionError("greenroom infra up never got ready:\n" + "\n".join(lines))


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


async def test_infra_up_serves_all_four_and_sigint_leaves_nothing(
    run_dir: Path, unique: str
) -> None:
    proc, settings, lines = _start_infra_up(run_dir / f"cli-{unique}")
    try:
        tree = _tree(proc.pid)
        names = {p.name() for p in tree}
        assert {"postgres", "redis-server", "weed"} <= names, names
        assert settings["GREENROOM_KAFKA_IDEMPOTENCE"] == "false"
        assert (run_dir / f"cli-{unique}" / "infra" / "infra.env").is_file()

        # Kafka protocol (Tansu): produce and consume one record.
        topic = f"infra-cli-{unique}"
        producer = AIOKafkaProducer(bootstrap_servers=settings["GREENROOM_KAFKA_BOOTSTRAP"])
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings["GREENROOM_KAFKA_BOOTSTRAP"],
            group_id=f"g-{unique}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
        await consumer.start()
        try:
            record = await consumer.getone()
            assert record.value == b"hello"
        finally:
            await consumer.stop()

        # S3 (SeaweedFS) with the printed admin keys.
        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=settings["GREENROOM_S3_ENDPOINT"],
            aws_access_key_id=settings["GREENROOM_S3_ACCESS_KEY"],
            aws_secret_access_key=settings["GREENROOM_S3_SECRET_KEY"],
            region_name=settings["GREENROOM_S3_REGION"],
        ) as s3:
            await s3.create_bucket(Bucket=f"cli-{unique}")
            await s3.put_object(Bucket=f"cli-{unique}", Key="k", Body=b"v")
            got = await s3.get_object(Bucket=f"cli-{unique}", Key="k")
            async with got["Body"] as body:
                assert await body.read() == b"v"

        # Postgres (embedded, not the machine's 5432).
        assert ":5432/" not in settings["GREENROOM_POSTGRES_URL"]
        conn = await asyncpg.connect(settings["GREENROOM_POSTGRES_URL"])
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()

        # Redis (embedded, not the machine's 6379).
        assert ":6379/" not in settings["GREENROOM_REDIS_URL"]
        client = redis.asyncio.Redis.from_url(settings["GREENROOM_REDIS_URL"])
        try:
            await client.set(f"k-{unique}", "v")
            assert await client.get(f"k-{unique}") == b"v"
        finally:
            await client.aclose()

        tree = _tree(proc.pid)  # Postgres forks workers after start-up; take them too.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        lines.extend(proc.stdout.read().splitlines())
        proc.stdout.close()
    assert _gone(tree, timeout=5) == [], "\n".join(lines)
    assert "# infra stopped" in lines
    assert not (run_dir / f"cli-{unique}" / "infra" / "infra.json").exists()


def test_sigkilled_infra_up_takes_its_servers_with_it(run_dir: Path, unique: str) -> None:
    proc, _settings, lines = _start_infra_up(run_dir / f"cli-kill-{unique}")
    try:
        tree = _tree(proc.pid)
        assert len(tree) >= 4
        proc.kill()  # no handler runs: only PR_SET_PDEATHSIG can stop the servers now
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    # Postgres's own workers notice their postmaster is gone within a second or so.
    assert _gone(tree, timeout=15) == [], "\n".join(lines)
