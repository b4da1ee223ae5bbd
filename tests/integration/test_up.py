"""``greenroom up`` against Tansu: a SIGKILLed node is restarted and loses nothing; an actor that
crashes on start is given up; Ctrl-C leaves no process behind.

``greenroom up`` runs as a real subprocess with the session's Tansu (so it starts no infrastructure)
and supervises demo actor nodes (tests/support/demo.py), which count every handled message id in a
Redis hash (``DEMO_REDIS_URL``/``DEMO_REDIS_KEY``) unique to the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest

from runtime.actor import Actor, Context, NodeContext
from runtime.bus.factory import broker_from_settings
from runtime.codec import encode
from runtime.config import load_settings
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from tests.support.demo import Demo, Work
from tests.support.up import UpProcess

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
PARTITIONS = 4

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class Never(msgspec.Struct, frozen=True, kw_only=True, tag="crash.Never"):
    """A contract nobody sends: the actor below never gets that far."""


class CrashOnStart(Actor):
    """An actor whose start hook always fails, as with a dependency that is never reachable."""

    name = "crashy"
    inbox = Never

    async def on_start(self, ctx: NodeContext) -> None:
        raise RuntimeError("crashy cannot reach its payment provider")

    async def never(self, msg: Never, ctx: Context) -> None:
        raise AssertionError("unreachable")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def up_env(tansu: TansuServer, unique: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
        "PYTHONPATH": str(ROOT),
        "GREENROOM_KAFKA_BOOTSTRAP": tansu.bootstrap,
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": "5",
        "GREENROOM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "GREENROOM_TOPIC_PREFIX": f"up{unique}.",
        "GREENROOM_PARTITIONS": str(PARTITIONS),
        "GREENROOM_RUN_DIR": str(tmp_path / "run"),
        "GREENROOM_SHUTDOWN_TIMEOUT_S": "5",
        "GREENROOM_LOG_FORMAT": "json",
        "DEMO_REDIS_URL": REDIS_URL,
        "DEMO_REDIS_KEY": f"test-up:{unique}",
        "DEMO_SLEEP_S": "0.02",
    }


@pytest.fixture
def start_up(up_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    started: list[UpProcess] = []

    def start(*args: str) -> UpProcess:
        up = UpProcess(list(args), up_env, tmp_path / "run", tmp_path / f"up-{len(started)}.out")
        started.append(up)
        return up

    yield start
    for up in started:
        up.close()


async def poll(check: Callable[[], bool], interval: float = 0.05) -> None:
    """Wait (under the caller's fail_after) for a condition on other processes or Redis."""
    while not check():  # noqa: ASYNC110 - the state lives in other processes: nothing to await
        await anyio.sleep(interval)


async def _handled(key: str) -> dict[str, int]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = await client.hgetall(key)
    finally:
        await client.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_a_killed_node_is_restarted_and_nothing_is_lost(
    start_up: Callable[..., UpProcess], up_env: dict[str, str]
) -> None:
    up = start_up("--actors", "tests.support.demo:Demo", "--scale", "demo=2", "--no-edge")
    await up.wait_for(
        lambda: [p.state for p in up.processes()] == ["running", "running"], 60, "two nodes running"
    )
    settings = load_settings(up_env)
    topic = Demo.commands_topic(settings)
    redis_key = up_env["DEMO_REDIS_KEY"]
    published: list[tuple[float, str]] = []  # (time, message id)
    first_handled: dict[str, float] = {}
    broker = broker_from_settings(settings)
    async with broker, anyio.create_task_group() as tg:
        await broker.ensure_topics({topic: PARTITIONS})
        stop_publishing = anyio.Event()

        async def publish() -> None:
            seq = 0
            while not stop_publishing.is_set():
                for _ in range(5):
                    type_tag, body = encode(Work(seq=seq))
                    envelope = Envelope.new(type_tag, body, key=f"k{seq % 40}")
                    await broker.publish(topic, envelope)
                    published.append((time.monotonic(), envelope.id))
                    seq += 1
                await anyio.sleep(0.05)  # about 100 messages a second

        async def watch_handled() -> None:
            while True:
                now = time.monotonic()
                for message_id in await _handled(redis_key):
                    first_handled.setdefault(message_id, now)
                await anyio.sleep(0.05)

        tg.start_soon(publish)
        tg.start_soon(watch_handled)
        # Both nodes consuming: a message published now is handled.
        with anyio.fail_after(60):
            await poll(lambda: bool(published) and published[-1][1] in first_handled)
        await anyio.sleep(2)

        victim = next(p for p in up.processes() if p.replica == 0)
        assert victim.pid is not None
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        with anyio.fail_after(60):
            await poll(lambda: up.processes()[0].pid not in (None, victim.pid), 0.01)
            respawned_at = time.monotonic()
            await poll(lambda: up.processes()[0].state == "running", 0.01)
            ready_at = time.monotonic()
        assert up.processes()[0].restarts == 1
        assert up.processes()[0].last_exit_code == -signal.SIGKILL
        # Keep publishing through the restart and the rebalance, then let the backlog drain.
        await anyio.sleep(10)
        stop_publishing.set()
        with anyio.fail_after(90):
            await poll(lambda: {mid for _, mid in published} <= first_handled.keys(), 0.2)
        tg.cancel_scope.cancel()

    counts = await _handled(redis_key)
    ids = [message_id for _, message_id in published]
    lost = [message_id for message_id in ids if message_id not in counts]
    assert not lost, f"{len(lost)} of {len(ids)} messages were never handled"
    duplicates = sum(1 for message_id in ids if counts[message_id] > 1)
    # "Consuming again": every message published in the first second after the kill (some of them
    # on the dead node's partitions, which only a rebalance or the restart can serve) handled.
    after_kill = [mid for at, mid in published if killed_at <= at < killed_at + 1.0]
    assert after_kill
    recovered_at = max(first_handled[mid] for mid in after_kill)
    print(
        f"\nrecovery after SIGKILL of demo-0: respawned {respawned_at - killed_at:.2f}s,"
        f" restarted node running (joined its group) {ready_at - killed_at:.2f}s,"
        f" consuming again (every message published in the second after the kill handled)"
        f" {recovered_at - killed_at:.2f}s; {len(ids)} messages, 0 lost,"
        f" {duplicates} handled twice (uncommitted work redelivered)"
    )
    await _stop_with_ctrl_c(up)


async def _stop_with_ctrl_c(up: UpProcess) -> None:
    pids = up.all_pids()
    assert len(pids) >= 2
    up.process.send_signal(signal.SIGINT)
    with anyio.fail_after(30):
        await poll(lambda: up.process.poll() is not None)
    assert up.process.returncode == 0, up.output()
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"processes left after Ctrl-C: {left}"
    state = up.state()
    assert state is not None
    assert state.state == "stopped"
    assert all(p.state == "stopped" for p in state.processes)


async def test_ctrl_c_stops_every_process(start_up: Callable[..., UpProcess]) -> None:
    up = start_up("--actors", "tests.support.demo:Demo", "--scale", "demo=2", "--no-edge")
    await up.wait_for(
        lambda: [p.state for p in up.processes()] == ["running", "running"], 60, "two nodes running"
    )
    await anyio.sleep(3)  # let the nodes get properly started (joined their group)
    await _stop_with_ctrl_c(up)
    out = up.output()
    assert "started demo-0 pid" in out
    assert "started demo-1 pid" in out


def test_an_actor_that_crashes_on_start_is_given_up(start_up: Callable[..., UpProcess]) -> None:
    up = start_up(
        "--actors",
        "tests.integration.test_up:CrashOnStart,tests.support.demo:Demo",
        "--no-edge",
        "--max-restarts",
        "2",
        "--backoff-base",
        "0.05",
    )
    try:
        up.process.wait(120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"greenroom up kept restarting a crashing actor:\n{up.output()}")
    out = up.output()
    assert up.process.returncode == 1, out
    assert "greenroom up: gave up on actor 'crashy': more than 2 restarts" in out
    assert "crashy cannot reach its payment provider" in out
    state = up.state()
    assert state is not None
    assert state.state == "gave_up"
    by_actor = {p.actor: p for p in state.processes}
    assert by_actor["crashy"].state == "gave_up"
    assert by_actor["crashy"].restarts == 2
    assert by_actor["demo"].state == "stopped"
    assert all(p.pid is None for p in state.processes)
