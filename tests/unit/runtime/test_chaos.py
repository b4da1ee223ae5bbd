"""runtime.chaos and ``greenroom chaos``: pure planning from a seed, target selection, refusal
without a running ``up``, and real faults against a real ProcessSupervisor with tiny child scripts
(KILL is restarted and recovers; STOP is resumed and its heartbeat recovers; nothing is left
frozen).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
import structlog

from runtime.chaos import (
    ChaosConfig,
    ChaosError,
    Target,
    eligible_targets,
    parse_duration,
    plan_faults,
    require_running,
    run_chaos,
)
from runtime.procsup import ProcessSpec, ProcessStatus, ProcessSupervisor, UpState
from runtime.procsup._state import write_state

PY = sys.executable
ROOT = Path(__file__).resolve().parents[3]

# A node stand-in: writes the heartbeat `greenroom run --health-file` writes, every 0.1 s.
BEATER = textwrap.dedent(
    """
    import json, os, sys, time
    path = sys.argv[1]
    while True:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "state": "running", "at": time.time()}, f)
        os.replace(tmp, path)
        time.sleep(0.1)
    """
)


def _state(*procs: tuple[str, int, str], pid: int = 1) -> UpState:
    return UpState(
        supervisor_pid=pid,
        supervisor_create_time=0.0,
        started_at=0.0,
        updated_at=0.0,
        state="running",
        processes=[
            ProcessStatus(
                actor=a, replica=r, kind="edge" if k == "edge" else "actor", state="running"
            )
            for a, r, k in procs
        ],
    )


SHOP = _state(
    ("orders", 0, "actor"),
    ("orders", 1, "actor"),
    ("payments", 0, "actor"),
    ("inventory", 0, "actor"),
    ("edge", 0, "edge"),
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3s", 3.0), ("500ms", 0.5), ("2m", 120.0), ("1.5", 1.5), (" 1h ", 3600.0), (".25s", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "3 days", "3x", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "kwargs",
    [{"every_s": 0}, {"duration_s": -1}, {"recovery_timeout_s": 0}, {"stop_for_s": -1}],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ChaosConfig(**kwargs)  # type: ignore[arg-type]  # the values are the point


def test_config_rejects_unknown_signal() -> None:
    with pytest.raises(ValueError, match="signal must be one of KILL, TERM, STOP"):
        ChaosConfig(signal="HUP")  # type: ignore[arg-type]  # what a bad caller would pass


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    targets = eligible_targets(SHOP)
    config = ChaosConfig(every_s=3, duration_s=60, seed=42)
    first = plan_faults(config, targets)
    assert first == plan_faults(config, list(reversed(targets)))  # input order does not matter
    assert len(first) == 20
    assert [f.at_s for f in first] == [3.0 * (i + 1) for i in range(20)]
    assert {f.target for f in first} <= set(targets)
    assert len({f.target for f in first}) > 1  # 20 draws over 4 slots hit more than one
    other = plan_faults(ChaosConfig(every_s=3, duration_s=60, seed=43), targets)
    assert [f.target for f in other] != [f.target for f in first]


def test_plan_of_a_partial_period_and_of_no_targets() -> None:
    assert len(plan_faults(ChaosConfig(every_s=3, duration_s=10), [Target("a", 0)])) == 3
    assert plan_faults(ChaosConfig(every_s=3, duration_s=2), [Target("a", 0)]) == []
    with pytest.raises(ValueError, match="no targets"):
        plan_faults(ChaosConfig(), [])


def test_targets_exclude_the_edge_unless_asked_and_honour_only() -> None:
    ids = [t.id for t in eligible_targets(SHOP)]
    assert ids == ["inventory-0", "orders-0", "orders-1", "payments-0"]
    assert "edge-0" in [t.id for t in eligible_targets(SHOP, include_edge=True)]
    assert [t.id for t in eligible_targets(SHOP, only=["orders", "payments"])] == [
        "orders-0",
        "orders-1",
        "payments-0",
    ]
    with pytest.raises(ChaosError, match="not run by this `greenroom up`: shipping"):
        eligible_targets(SHOP, only=["shipping"])
    with pytest.raises(ChaosError, match="edge is excluded unless --include-edge"):
        eligible_targets(SHOP, only=["edge"])


def test_refuses_without_a_running_up(tmp_path: Path) -> None:
    with pytest.raises(ChaosError, match="no `greenroom up` is running: no process table"):
        require_running(tmp_path)
    # A table left behind by a supervisor that is gone (a pid that cannot be ours).
    write_state(tmp_path, _state(("orders", 0, "actor"), pid=2**22 + 12345))
    with pytest.raises(ChaosError, match=r"supervisor \(pid \d+\) is gone"):
        require_running(tmp_path)


# ------------------------------------------------------------------ against a real supervisor


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test leaves no child process behind, and none frozen.

    Only processes born during the test are judged: the session's own servers (Tansu, SeaweedFS
    started by tests/conftest.py fixtures) are children of pytest too, and must survive it.
    """
    me = psutil.Process()
    before = {proc.pid for proc in me.children(recursive=True)}
    yield
    children = [proc for proc in me.children(recursive=True) if proc.pid not in before]
    frozen = []
    for proc in children:
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_STOPPED:
                frozen.append(proc.pid)
    _, alive = psutil.wait_procs(children, timeout=5)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped: gone
                left.append(proc.pid)
                proc.kill()
    assert not frozen, f"processes left frozen: {frozen}"
    assert not left, f"processes left behind: {left}"


def _beater_specs(tmp_path: Path, run_dir: Path, names: list[str]) -> list[ProcessSpec]:
    script = tmp_path / "beater.py"
    script.write_text(BEATER)
    health = run_dir / "health"
    health.mkdir(parents=True, exist_ok=True)
    return [
        ProcessSpec(
            name=name,
            argv=(PY, str(script), str(health / f"{name}-0.json")),
            health_file=str(health / f"{name}-0.json"),
        )
        for name in names
    ]


async def _until_running(sup: ProcessSupervisor) -> None:
    with anyio.fail_after(10):
        while any(p.state != "running" for p in sup.snapshot().processes):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_kill_faults_are_restarted_and_recover(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sup = ProcessSupervisor(
        _beater_specs(tmp_path, run_dir, ["alpha", "beta"]),
        run_dir=run_dir,
        max_restarts=20,
        period_s=60,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
    )
    fired = []
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await _until_running(sup)
            before = {p.actor: p.pid for p in sup.snapshot().processes}
            config = ChaosConfig(every_s=0.4, duration_s=1.7, seed=7, only=("alpha",))
            with anyio.fail_after(30):
                report = await run_chaos(run_dir, config, on_fault=fired.append)
            after = {p.actor: p for p in sup.snapshot().processes}
            sup.stop()
    assert [f.outcome for f in report.faults] == ["injected"] * 4
    assert len(fired) == 4
    assert {f.actor for f in report.faults} == {"alpha"}
    assert len(report.recovery_times) == 4
    assert all(f.new_pid not in (None, f.pid) for f in report.faults)
    assert after["alpha"].restarts == 4
    assert after["beta"].restarts == 0
    assert after["beta"].pid == before["beta"]  # never touched: not in --only
    summary = report.summary()
    assert summary["faults_injected"] == 4
    assert summary["restarts_seen"] == 4
    assert summary["unrecovered"] == 0
    assert set(summary["recovery_s"]) == {"min", "p50", "p99", "max", "mean"}
    assert [e["event"] for e in logs].count("chaos.fault") == 4
    assert [e["event"] for e in logs].count("chaos.recovered") == 4
    assert "faults injected 4" in report.format_summary()


async def test_stop_freezes_then_resumes_and_restarts_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sup = ProcessSupervisor(_beater_specs(tmp_path, run_dir, ["alpha"]), run_dir=run_dir)
    seen_frozen = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await _until_running(sup)
        pid = sup.snapshot().processes[0].pid
        assert pid is not None

        async def observe() -> None:
            # The kernel applies the signal asynchronously: poll the process state.
            while psutil.Process(pid).status() != psutil.STATUS_STOPPED:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            seen_frozen.set()

        tg.start_soon(observe)
        config = ChaosConfig(every_s=0.5, duration_s=0.5, signal="STOP", stop_for_s=0.6, seed=1)
        with anyio.fail_after(30):
            report = await run_chaos(run_dir, config)
        assert seen_frozen.is_set()
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
        assert sup.snapshot().processes[0].pid == pid
        sup.stop()
    (fault,) = report.faults
    assert fault.outcome == "injected"
    assert fault.new_pid == pid
    assert fault.recovered_after_s is not None
    assert fault.recovered_after_s >= 0.6
    assert report.restarts_seen == 0


async def test_cancelling_a_run_resumes_what_it_froze(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sup = ProcessSupervisor(_beater_specs(tmp_path, run_dir, ["alpha"]), run_dir=run_dir)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await _until_running(sup)
        pid = sup.snapshot().processes[0].pid
        assert pid is not None
        config = ChaosConfig(every_s=0.2, duration_s=0.2, signal="STOP", stop_for_s=30, seed=1)
        with anyio.move_on_after(1.0):
            await run_chaos(run_dir, config)
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
        sup.stop()


async def test_a_slot_still_restarting_is_skipped_not_reaimed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A long backoff keeps the killed slot in `restarting` when the next fault comes.
    sup = ProcessSupervisor(
        _beater_specs(tmp_path, run_dir, ["alpha", "beta"]),
        run_dir=run_dir,
        backoff_base_s=5.0,
        backoff_cap_s=5.0,
        max_restarts=20,
        period_s=60,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await _until_running(sup)
        config = ChaosConfig(
            every_s=0.3, duration_s=0.6, seed=3, only=("alpha",), recovery_timeout_s=0.5
        )
        report = await run_chaos(run_dir, config)
        sup.stop(kill=True)
    first, second = report.faults
    # Backoff is full jitter: the restart may still have been quick; either way no re-aim.
    assert first.outcome == "injected"
    assert second.actor == "alpha"
    if second.outcome == "skipped":
        assert "no running process" in second.reason


async def test_cli_refuses_without_up_and_dry_run_prints_the_plan(tmp_path: Path) -> None:
    argv = [PY, "-c", "import sys; from runtime.cli import main; sys.exit(main())", "chaos"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = await anyio.run_process(
        [*argv, "--run-dir", str(tmp_path / "none")], env=env, check=False
    )
    assert refused.returncode == 1
    assert b"no `greenroom up` is running" in refused.stderr
    assert refused.stdout == b""

    run_dir = tmp_path / "run"
    sup = ProcessSupervisor(_beater_specs(tmp_path, run_dir, ["alpha", "beta"]), run_dir=run_dir)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await _until_running(sup)
        plans = [
            await anyio.run_process(
                [*argv, "--run-dir", str(run_dir), "--dry-run", "--seed", "5", "--every", "1s"],
                env=env,
            )
            for _ in range(2)
        ]
        real = await anyio.run_process(
            [
                *argv,
                "--run-dir",
                str(run_dir),
                "--seed",
                "5",
                "--every",
                "300ms",
                "--duration",
                "0.7s",
                "--only",
                "beta",
                "--json",
                str(tmp_path / "summary.json"),
            ],
            env={**env, "GREENROOM_LOG_LEVEL": "error"},
            check=False,
        )
        sup.stop()
    assert plans[0].stdout == plans[1].stdout
    lines = plans[0].stdout.decode().splitlines()
    assert lines[0] == "plan for seed 5 (SIGKILL):"
    assert len(lines) == 61  # 60 faults: one a second for the default 60 s
    out = real.stdout.decode()
    assert real.returncode == 0, out + real.stderr.decode()
    assert "fault 0: SIGKILL beta-0" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    # On a loaded machine the second fault may find beta-0 still restarting: then it is skipped.
    assert summary["faults_planned"] == 2
    assert summary["faults_injected"] >= 1
    assert summary["unrecovered"] == 0
    assert summary["restarts_seen"] == summary["faults_injected"]
    assert summary["seed"] == 5
    assert f"faults injected {summary['faults_injected']}" in out


def test_signals_are_the_real_ones() -> None:
    from runtime.chaos import SIGNALS

    assert SIGNALS == {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP}
