"""S5: an actor that crashes on start. ``greenroom up`` must give up past its restart intensity,
say which actor and why, stop everything and exit non-zero, instead of restarting it forever.

The actor (tests/chaos/actors.py: FragileStart) first starts fine beside a healthy Demo node; then
its dependency goes away (a flag file), ``greenroom chaos`` SIGKILLs it, and every restart crashes
in ``on_start``. The chaos run sees the supervisor give up and reports the fault unrecovered.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

from runtime.infra.tansu import TansuServer
from tests.chaos._harness import (
    ROOT,
    UpProcess,
    base_env,
    poll,
    start_up,
    write_summary,
)

pytestmark = [pytest.mark.chaos, pytest.mark.kafka, pytest.mark.timeout(180)]

MAX_RESTARTS = 3


async def test_s5_an_actor_crashing_on_start_is_given_up(
    tansu: TansuServer, unique: str, tmp_path: Path, ups: list[UpProcess]
) -> None:
    flag = tmp_path / "dependency-down"
    env = base_env(
        tansu.bootstrap,
        unique,
        tmp_path / "run",
        GREENROOM_PARTITIONS="2",
        CHAOS_BROKEN_FLAG=str(flag),
    )
    up = start_up(
        ups,
        [
            "--actors",
            "tests.chaos.actors:FragileStart,tests.support.demo:Demo",
            "--no-edge",
            "--max-restarts",
            str(MAX_RESTARTS),
            "--period",
            "60",
            "--backoff-base",
            "0.05",
            "--backoff-cap",
            "0.5",
        ],
        env,
        tmp_path,
    )
    await up.wait_running(2)
    tree = {up.process.pid} | {c.pid for c in psutil.Process(up.process.pid).children(True)}

    flag.write_text("down")
    chaos_started = time.monotonic()
    chaos = await anyio.run_process(
        [
            sys.executable,
            "-c",
            "import sys; from runtime.cli import main; sys.exit(main())",
            "chaos",
            "--only",
            "fragile",
            "--every",
            "1s",
            "--duration",
            "1s",
            "--seed",
            "5",
            "--recovery-timeout",
            "90s",
            "--json",
            str(tmp_path / "chaos.json"),
        ],
        env={**env, "GREENROOM_LOG_LEVEL": "error"},
        cwd=ROOT,
        check=False,
    )
    chaos_out = chaos.stdout.decode() + chaos.stderr.decode()
    await poll(lambda: up.process.poll() is not None, 90, "greenroom up exited")
    report = json.loads((tmp_path / "chaos.json").read_text())
    gave_up_after = time.monotonic() - chaos_started - report["faults"][0]["at_s"]
    out = up.output()

    # The supervisor gave up with a message naming the actor and why, and exited non-zero.
    assert up.process.returncode == 1, out
    assert f"greenroom up: gave up on actor 'fragile': more than {MAX_RESTARTS} restarts" in out
    assert "fragile cannot reach its dependency" in out
    state = up.state()
    assert state is not None
    assert state.state == "gave_up"
    by_actor = {p.actor: p for p in state.processes}
    assert by_actor["fragile"].state == "gave_up"
    assert by_actor["fragile"].restarts == MAX_RESTARTS  # bounded: no endless loop
    assert by_actor["demo"].state == "stopped"  # everything stopped with it (escalation)
    left = [pid for pid in tree if psutil.pid_exists(pid) and _alive(pid)]
    assert not left, f"processes left after giving up: {left}"

    # The chaos run saw it: one fault injected, never recovered, the supervisor gave up.
    assert chaos.returncode == 1, chaos_out
    assert "fault 0: SIGKILL fragile-0" in chaos_out
    assert "stopped early: the supervisor is gave_up: gave up on actor 'fragile'" in chaos_out

    write_summary(
        "s5_crash_on_start",
        {
            "actor": "fragile",
            "max_restarts": MAX_RESTARTS,
            "starts_after_kill": by_actor["fragile"].restarts,
            "up_exit_code": up.process.returncode,
            "gave_up_after_kill_s": round(gave_up_after, 3),
            "reason": (state.reason or "").splitlines()[0],
            "last_exit": by_actor["fragile"].last_exit_code,
            "processes_left": len(left),
            "chaos_exit_code": chaos.returncode,
        },
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
