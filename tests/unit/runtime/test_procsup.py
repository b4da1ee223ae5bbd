"""The process supervisor with tiny child scripts: restart, give up, stop order, state, ps."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest
import structlog
from structlog.typing import EventDict

from runtime.cli import ps as ps_cli
from runtime.cli import up as up_cli
from runtime.cli.up import UsageError, build_specs, parse_scale
from runtime.metrics import registry
from runtime.procsup import (
    ProcessGaveUp,
    ProcessSpec,
    ProcessSupervisor,
    UpState,
    read_state,
    supervisor_alive,
)

PY = sys.executable

SLEEPER = "import time\ntime.sleep(600)\n"

CRASHER = textwrap.dedent(
    """
    import sys
    print("starting crasher")
    print("boom: cannot reach the payment provider", file=sys.stderr)
    sys.exit(3)
    """
)

# Records SIGTERM in a shared file, waits a little (a drain), then exits 0.
DRAINER = textwrap.dedent(
    """
    import os, signal, sys, time
    name, record, drain = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def on_term(signum, frame):
        with open(record, "a") as f:
            f.write(f"{name} term {time.monotonic()}\\n")
        time.sleep(drain)
        with open(record, "a") as f:
            f.write(f"{name} exit {time.monotonic()}\\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    while True:
        time.sleep(1)
    """
)

STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"

# Forks a grandchild into its own process group; both must go when the child is stopped.
FORKER = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(600)
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        return path

    return write


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def events() -> Iterator[list[EventDict]]:
    """The supervisor's structlog events (kept off stdout, where `ps` output is checked)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def decisions(actor: str, decision: str) -> float:
    return registry.counter("greenroom_process_decisions_total").value(
        actor=actor, decision=decision
    )


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test must leave no child process behind, whatever it asserted.

    Only processes born during the test count: the session's servers (tests/conftest.py) are
    pytest's children too and must outlive each test.
    """
    me = psutil.Process()
    before = {proc.pid for proc in me.children(recursive=True)}
    _SESSION_CHILDREN.clear()
    _SESSION_CHILDREN.update(before)
    yield
    born = [proc for proc in me.children(recursive=True) if proc.pid not in before]
    _, alive = psutil.wait_procs(born, timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"


def spec(name: str, path: Path, *args: str, replica: int = 0, kind: str = "actor") -> ProcessSpec:
    return ProcessSpec(
        name=name,
        replica=replica,
        argv=(PY, str(path), *args),
        kind="edge" if kind == "edge" else "actor",
    )


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (the state of other processes: there is no event to wait on) for 10 s."""
    with anyio.fail_after(10):
        while not check():  # noqa: ASYNC110 - polling other processes, not our own tasks
            await anyio.sleep(0.02)


def proc_of(sup: ProcessSupervisor, actor: str, replica: int = 0) -> object:
    return next(p for p in sup.snapshot().processes if p.actor == actor and p.replica == replica)


def pid_of(sup: ProcessSupervisor, actor: str, replica: int = 0) -> int | None:
    for p in sup.snapshot().processes:
        if p.actor == actor and p.replica == replica:
            return p.pid
    raise AssertionError(f"no slot {actor}-{replica}")


def gone(proc: psutil.Process) -> bool:
    """Dead: not running, or a zombie waiting for whoever inherited it to reap it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


_SESSION_CHILDREN: set[int] = set()
"""Children of pytest that outlive a test (the session's servers); set by no_children_left."""


def children_pids() -> set[int]:
    """This test's live child processes (the session's servers left out)."""
    return {p.pid for p in psutil.Process().children(recursive=True)} - _SESSION_CHILDREN


async def test_a_dead_process_is_restarted_and_siblings_are_untouched(
    script: Callable[[str, str], Path], run_dir: Path, events: list[EventDict]
) -> None:
    sleeper = script("sleeper", SLEEPER)
    restarts_before = decisions("restarted", "restart")
    sup = ProcessSupervisor(
        [
            spec("restarted", sleeper, replica=0),
            spec("restarted", sleeper, replica=1),
            spec("payments", sleeper),
        ],
        run_dir=run_dir,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
        shutdown_timeout_s=2,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        first = pid_of(sup, "restarted", 0)
        sibling = pid_of(sup, "restarted", 1)
        other = pid_of(sup, "payments")
        assert first
        assert sibling
        assert other
        os.kill(first, signal.SIGKILL)

        await until(lambda: pid_of(sup, "restarted", 0) not in (None, first))
        state = read_state(run_dir)
        assert state is not None
        restarted = next(p for p in state.processes if (p.actor, p.replica) == ("restarted", 0))
        assert restarted.restarts == 1
        assert restarted.state == "running"
        assert restarted.last_exit_code == -signal.SIGKILL
        assert restarted.last_signal == "SIGKILL"
        assert psutil.pid_exists(restarted.pid or -1)
        # one_for_one: the sibling replica and the other actor kept their processes.
        assert pid_of(sup, "restarted", 1) == sibling
        assert pid_of(sup, "payments") == other
        sup.stop()
    exits = [e for e in events if e["event"] == "process.exit" and not e["expected"]]
    assert [(e["actor"], e["replica"], e["pid"], e["exit"]) for e in exits] == [
        ("restarted", 0, first, "killed by SIGKILL")
    ]
    restarts = [e for e in events if e["event"] == "process.restart"]
    assert [(e["actor"], e["restarts"]) for e in restarts] == [("restarted", 1)]
    assert 0 <= restarts[0]["delay_s"] <= 0.05
    assert decisions("restarted", "restart") == restarts_before + 1
    state = read_state(run_dir)
    assert state is not None
    assert state.state == "stopped"
    assert all(p.state == "stopped" and p.pid is None for p in state.processes)
    assert not children_pids()


async def test_an_actor_that_always_crashes_is_given_up_and_everything_stops(
    script: Callable[[str, str], Path], run_dir: Path, events: list[EventDict]
) -> None:
    crasher = script("crasher", CRASHER)
    sleeper = script("sleeper", SLEEPER)
    sup = ProcessSupervisor(
        [spec("payments", crasher), spec("orders", sleeper)],
        run_dir=run_dir,
        max_restarts=2,
        period_s=30,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        shutdown_timeout_s=2,
    )
    with anyio.fail_after(20), pytest.raises(ProcessGaveUp) as caught:
        await sup.run()
    message = str(caught.value)
    assert caught.value.actor == "payments"
    assert "gave up on actor 'payments'" in message
    assert "more than 2 restarts within 30s" in message
    assert message.count("payments-0 exit code 3") == 3
    assert "boom: cannot reach the payment provider" in message
    assert str(run_dir / "logs" / "payments-0.log") in message
    state = read_state(run_dir)
    assert state is not None
    assert state.state == "gave_up"
    assert state.reason == message
    by_actor = {p.actor: p for p in state.processes}
    assert by_actor["payments"].state == "gave_up"
    assert by_actor["payments"].restarts == 2
    assert by_actor["payments"].last_exit_code == 3
    assert by_actor["orders"].state == "stopped"
    assert not children_pids()
    kinds = [e["event"] for e in events if e.get("actor") == "payments"]
    assert kinds.count("process.start") == 3
    assert kinds.count("process.restart") == 2
    assert kinds[-1] == "process.give_up"


async def test_a_program_that_cannot_start_is_given_up(run_dir: Path) -> None:
    missing = ProcessSpec(name="ghost", argv=(str(run_dir / "no-such-program"),))
    sup = ProcessSupervisor(
        [missing], run_dir=run_dir, max_restarts=1, backoff_base_s=0.01, backoff_cap_s=0.01
    )
    with anyio.fail_after(10), pytest.raises(ProcessGaveUp) as caught:
        await sup.run()
    assert "ghost-0 failed to start" in str(caught.value)
    assert "No such file" in str(caught.value)


async def test_stop_terminates_the_edge_first_then_actors(
    script: Callable[[str, str], Path], run_dir: Path, tmp_path: Path
) -> None:
    drainer = script("drainer", DRAINER)
    record = tmp_path / "record.txt"
    sup = ProcessSupervisor(
        [
            spec("orders", drainer, "orders", str(record), "0.1"),
            spec("payments", drainer, "payments", str(record), "0.1"),
            spec("edge", drainer, "edge", str(record), "0.4", kind="edge"),
        ],
        run_dir=run_dir,
        shutdown_timeout_s=5,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.sleep(0.3)  # let the children install their SIGTERM handlers
        sup.stop()
    lines = [line.split() for line in record.read_text().splitlines()]
    events = [(name, what) for name, what, _ in lines]
    assert events[:2] == [("edge", "term"), ("edge", "exit")]
    assert sorted(events[2:]) == [
        ("orders", "exit"),
        ("orders", "term"),
        ("payments", "exit"),
        ("payments", "term"),
    ]
    state = read_state(run_dir)
    assert state is not None
    assert {p.last_exit_code for p in state.processes} == {0}
    assert not children_pids()


async def test_a_process_ignoring_sigterm_is_killed_after_the_shutdown_timeout(
    script: Callable[[str, str], Path], run_dir: Path
) -> None:
    stubborn = script("stubborn", STUBBORN)
    sup = ProcessSupervisor([spec("orders", stubborn)], run_dir=run_dir, shutdown_timeout_s=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.sleep(0.3)
        began = time.monotonic()
        sup.stop()
    took = time.monotonic() - began
    assert 0.4 < took < 5
    state = read_state(run_dir)
    assert state is not None
    assert state.processes[0].last_exit_code == -signal.SIGKILL


async def test_stop_with_kill_does_not_wait_for_the_shutdown_timeout(
    script: Callable[[str, str], Path], run_dir: Path
) -> None:
    stubborn = script("stubborn", STUBBORN)
    sup = ProcessSupervisor([spec("orders", stubborn)], run_dir=run_dir, shutdown_timeout_s=60)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.sleep(0.3)
        began = time.monotonic()
        sup.stop()
        await anyio.sleep(0.2)
        sup.stop(kill=True)
    assert time.monotonic() - began < 5


async def test_the_whole_process_group_is_stopped(
    script: Callable[[str, str], Path], run_dir: Path
) -> None:
    forker = script("forker", FORKER)
    sup = ProcessSupervisor([spec("orders", forker)], run_dir=run_dir, shutdown_timeout_s=2)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        leader = pid_of(sup, "orders")
        assert leader is not None
        await until(lambda: len(psutil.Process(leader).children()) == 1)
        grandchild = psutil.Process(leader).children()[0]
        sup.stop()
    assert gone(grandchild)


async def test_cancelling_the_supervisor_still_stops_its_processes(
    script: Callable[[str, str], Path], run_dir: Path
) -> None:
    sleeper = script("sleeper", SLEEPER)
    sup = ProcessSupervisor([spec("orders", sleeper)], run_dir=run_dir, shutdown_timeout_s=2)
    with anyio.move_on_after(0.5):
        await sup.run()
    assert not children_pids()
    state = read_state(run_dir)
    assert state is not None
    assert state.state == "stopped"


def test_children_die_when_the_supervisor_is_killed(
    script: Callable[[str, str], Path], run_dir: Path, tmp_path: Path
) -> None:
    sleeper = script("sleeper", SLEEPER)
    host = script(
        "host",
        textwrap.dedent(
            f"""
            import anyio
            from pathlib import Path
            from runtime.procsup import ProcessSpec, ProcessSupervisor
            specs = [ProcessSpec(name="orders", argv=({PY!r}, {str(sleeper)!r}))]
            anyio.run(ProcessSupervisor(specs, run_dir=Path({str(run_dir)!r})).run)
            """
        ),
    )
    supervisor = subprocess.Popen([PY, str(host)], cwd=Path(__file__).parents[3])
    try:
        deadline = time.monotonic() + 15
        child_pid = None
        while time.monotonic() < deadline and child_pid is None:
            state = read_state(run_dir) if (run_dir / "up.json").exists() else None
            if state and state.processes and state.processes[0].pid:
                child_pid = state.processes[0].pid
            time.sleep(0.05)
        assert child_pid is not None, "the supervisor never started its child"
        child = psutil.Process(child_pid)
        supervisor.kill()
        supervisor.wait(5)
        deadline = time.monotonic() + 5
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child), "PR_SET_PDEATHSIG did not reach the orphaned child"
    finally:
        supervisor.kill()
        supervisor.wait(5)


async def test_state_file_and_ps_while_running(
    script: Callable[[str, str], Path], run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeper = script("sleeper", SLEEPER)
    sup = ProcessSupervisor(
        [
            spec("orders", sleeper, replica=0),
            spec("orders", sleeper, replica=1),
            spec("edge", sleeper, kind="edge"),
        ],
        run_dir=run_dir,
        shutdown_timeout_s=2,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        raw = json.loads((run_dir / "up.json").read_text())
        assert raw["version"] == 1
        assert raw["supervisor_pid"] == os.getpid()
        assert raw["state"] == "running"
        assert [(p["actor"], p["replica"], p["kind"]) for p in raw["processes"]] == [
            ("orders", 0, "actor"),
            ("orders", 1, "actor"),
            ("edge", 0, "edge"),
        ]
        for p in raw["processes"]:
            assert psutil.pid_exists(p["pid"])
            assert p["state"] == "running"
            assert p["restarts"] == 0
            assert p["started_at"] <= time.time()
            assert p["log"].endswith(f"{p['actor']}-{p['replica']}.log")
        state = read_state(run_dir)
        assert state is not None
        assert supervisor_alive(state)

        code = ps_cli.run(argparse.Namespace(json=False, run_dir=run_dir))
        out = capsys.readouterr().out.splitlines()
        assert code == 0
        assert out[0].split() == [
            "ACTOR",
            "REPLICA",
            "PID",
            "RESTARTS",
            "UPTIME",
            "STATE",
            "LAST",
            "EXIT",
        ]
        rows = [line.split() for line in out[1:]]
        assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
            ("orders", "0", "0", "running"),
            ("orders", "1", "0", "running"),
            ("edge", "0", "0", "running"),
        ]
        assert {int(r[2]) for r in rows} == {p["pid"] for p in raw["processes"]}
        assert all(r[4].endswith("s") for r in rows)

        code = ps_cli.run(argparse.Namespace(json=True, run_dir=run_dir))
        doc = json.loads(capsys.readouterr().out)
        assert code == 0
        assert doc["running"] is True
        assert [p["uptime_s"] >= 0 for p in doc["processes"]] == [True] * 3
        sup.stop()

    code = ps_cli.run(argparse.Namespace(json=False, run_dir=run_dir))
    err = capsys.readouterr().err
    assert code == 1
    assert "no `greenroom up` is running" in err
    assert "last state 'stopped'" in err


def test_ps_says_so_when_nothing_ever_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ps_cli.run(argparse.Namespace(json=False, run_dir=tmp_path))
    assert code == 1
    assert "no `greenroom up` is running: no state file" in capsys.readouterr().err


def test_ps_notices_a_supervisor_that_died_without_cleaning_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    state = UpState(
        supervisor_pid=dead.pid,
        supervisor_create_time=0.0,
        started_at=time.time() - 60,
        updated_at=time.time() - 30,
        state="running",
    )
    (tmp_path / "up.json").write_bytes(msgspec.json.encode(state))
    assert not supervisor_alive(state)
    assert ps_cli.run(argparse.Namespace(json=False, run_dir=tmp_path)) == 1
    assert f"supervisor (pid {dead.pid}) is gone" in capsys.readouterr().err


def test_uptime_format() -> None:
    assert ps_cli.format_uptime(None) == "-"
    assert ps_cli.format_uptime(42.9) == "42s"
    assert ps_cli.format_uptime(187) == "3m07s"
    assert ps_cli.format_uptime(7500) == "2h05m"


def test_scale_and_only_build_one_spec_per_replica_then_the_edge(tmp_path: Path) -> None:
    assert parse_scale(["orders=3", "payments=2,users=0"]) == {
        "orders": 3,
        "payments": 2,
        "users": 0,
    }
    with pytest.raises(UsageError, match="orders"):
        parse_scale(["orders"])
    with pytest.raises(UsageError, match="NAME=N"):
        parse_scale(["orders=-1"])
    targets = [("orders", "orders"), ("payments", "pkg.mod:Payments"), ("users", "users")]
    specs = build_specs(
        targets,
        scale={"orders": 2},
        only=["orders", "payments"],
        edge=True,
        env={"A": "1"},
        run_dir=tmp_path,
        app_dir="/srv/app",
    )
    assert [(s.name, s.replica, s.kind) for s in specs] == [
        ("orders", 0, "actor"),
        ("orders", 1, "actor"),
        ("payments", 0, "actor"),
        ("edge", 0, "edge"),
    ]
    health = str(tmp_path / "health" / "payments-0.json")
    assert specs[2].argv[-6:] == (
        "run",
        "pkg.mod:Payments",
        "--app-dir",
        "/srv/app",
        "--health-file",
        health,
    )
    assert specs[2].health_file == health
    assert specs[3].argv[-1] == "edge"
    assert specs[3].health_file is None
    assert all(s.env == {"A": "1"} for s in specs)
    with pytest.raises(UsageError, match="unknown actor"):
        build_specs(targets, scale={"nope": 1}, only=[], edge=False, env={}, run_dir=tmp_path)
    with pytest.raises(UsageError, match="unknown actor"):
        build_specs(targets, scale={}, only=["nope"], edge=False, env={}, run_dir=tmp_path)


def test_specs_must_be_unique(run_dir: Path) -> None:
    one = ProcessSpec(name="orders", argv=(PY, "-c", "pass"))
    with pytest.raises(ValueError, match="unique"):
        ProcessSupervisor([one, one], run_dir=run_dir)


READY_LATER = textwrap.dedent(
    """
    import json, os, sys, time
    time.sleep(0.5)
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "state": "running"}, f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
    """
)


async def test_a_process_with_a_health_file_is_starting_until_it_reports_running(
    script: Callable[[str, str], Path], run_dir: Path, tmp_path: Path, events: list[EventDict]
) -> None:
    ready_later = script("ready_later", READY_LATER)
    health = tmp_path / "orders-0.json"
    health.write_text(json.dumps({"pid": 1, "state": "running"}))  # a previous incarnation's
    sup = ProcessSupervisor(
        [
            ProcessSpec(
                name="orders",
                argv=(PY, str(ready_later), str(health)),
                health_file=str(health),
            )
        ],
        run_dir=run_dir,
        shutdown_timeout_s=2,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.sleep(0.3)
        assert sup.snapshot().processes[0].state == "starting"
        await until(lambda: sup.snapshot().processes[0].state == "running")
        sup.stop()
    ready = [e for e in events if e["event"] == "process.ready"]
    assert len(ready) == 1
    assert ready[0]["after_s"] >= 0.5


def _up_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_up_rejects_bad_arguments_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GREENROOM_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("GREENROOM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    # Leave the process-wide logging configuration of the test session alone.
    monkeypatch.setattr(up_cli, "configure_logging", lambda *args: None)
    demo = "tests.support.demo:Demo"
    for argv, message in [
        (["--actors", demo, "--scale", "nope=2"], "--scale names unknown actor(s) nope"),
        (["--actors", demo, "--only", "nope"], "--only names unknown actor(s) nope"),
        (["--actors", demo, "--scale", "demo"], "expected NAME=N"),
        (["--actors", demo, "--scale", "demo=0", "--no-edge"], "nothing to run"),
        (["--actors", demo, "--max-restarts", "-1"], "max_restarts must be >= 0"),
        (["--actors", "tests.support.demo:Nope"], "has no attribute 'Nope'"),
    ]:
        assert up_cli.run(_up_args(*argv)) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "up.json").exists()


def test_up_refuses_to_run_twice_with_one_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GREENROOM_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("GREENROOM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setattr(up_cli, "configure_logging", lambda *args: None)
    me = psutil.Process()
    running = UpState(
        supervisor_pid=me.pid,
        supervisor_create_time=me.create_time(),
        started_at=time.time(),
        updated_at=time.time(),
        state="running",
    )
    (tmp_path / "up.json").write_bytes(msgspec.json.encode(running))
    assert up_cli.run(_up_args("--actors", "tests.support.demo:Demo", "--no-edge")) == 1
    assert f"already running with run dir {tmp_path}" in capsys.readouterr().err
