"""Fault injection against a running ``greenroom up``: the engine behind ``greenroom chaos``.

A chaos run reads the process table ``greenroom up`` keeps in ``<run_dir>/up.json``, plans its
faults from a seed (:func:`plan_faults` is pure: the same seed and the same process slots give the
same plan), and then, every ``every_s`` seconds for ``duration_s``, signals the process group of the
planned slot's current process:

- ``KILL``/``TERM``: the process dies (TERM: after draining); the supervisor restarts it. The fault
  has *recovered* when that slot shows a new pid in state ``running`` (for an actor node: its
  heartbeat says it joined its group).
- ``STOP``: the process is frozen for ``stop_for_s`` and resumed with ``CONT``; it has recovered
  when its heartbeat file is rewritten after the resume (slots without one: at the resume).

A fault is planned for a *slot* (actor and replica), not a pid, because pids change on every
restart. A slot that has no live, running process at its planned time (still restarting from the
previous fault) is skipped and recorded as skipped, rather than re-aimed at another slot: a skip
is itself a finding (recovery slower than the fault period), and re-aiming would make the plan
depend on timing.

Safety: a pid is signalled only if it is a child of the live supervisor that wrote the table, so
a stale file or a recycled pid never makes chaos signal an unrelated process. A frozen process is
always resumed, also when the run is cancelled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, final

import anyio
import msgspec
import psutil
from anyio.abc import TaskGroup

from runtime.logging import get_logger
from runtime.procsup import ProcessStatus, UpState, read_state, supervisor_alive

__all__ = [
    "SIGNALS",
    "ChaosConfig",
    "ChaosError",
    "ChaosReport",
    "FaultRecord",
    "PlannedFault",
    "Target",
    "eligible_targets",
    "parse_duration",
    "plan_faults",
    "require_running",
    "run_chaos",
]

SignalName = Literal["KILL", "TERM", "STOP"]
SIGNALS: dict[SignalName, signal.Signals] = {
    "KILL": signal.SIGKILL,
    "TERM": signal.SIGTERM,
    "STOP": signal.SIGSTOP,
}

_POLL_S = 0.05
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _log() -> Any:
    # Fetched per event: a logger bound at import would ignore a later configure_logging().
    return get_logger("runtime.chaos")


class ChaosError(Exception):
    """Chaos cannot run: no ``greenroom up`` is running, or no process matches the selection."""


def parse_duration(text: str) -> float:
    """``"3s"`` -> 3.0, ``"500ms"`` -> 0.5, ``"2m"`` -> 120.0, ``"1.5"`` (seconds) -> 1.5.

    Raises:
        ValueError: not a non-negative number with an optional unit ms, s, m or h.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 500ms, 3s, 2m")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """What to inject, how often, for how long, and where.

    Raises (constructor):
        ValueError: a period, duration or timeout that is not positive, or an unknown signal.
    """

    every_s: float = 3.0
    duration_s: float = 60.0
    signal: SignalName = "KILL"
    stop_for_s: float = 2.0
    """How long a ``STOP`` keeps the process frozen before ``CONT``."""
    only: tuple[str, ...] = ()
    """Actor names to pick victims from; empty means every actor."""
    include_edge: bool = False
    seed: int = 0
    recovery_timeout_s: float = 60.0
    """How long after a fault its recovery is waited for before it counts as unrecovered."""

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, not {self.signal!r}")
        for name in ("every_s", "duration_s", "recovery_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.stop_for_s < 0:
            raise ValueError(f"stop_for_s must be >= 0, got {self.stop_for_s}")


class Target(msgspec.Struct, frozen=True, order=True):
    """A process slot of ``greenroom up``: an actor (or the edge) and a replica number."""

    actor: str
    replica: int

    @property
    def id(self) -> str:
        """``<actor>-<replica>``, as in ``greenroom ps`` and the log file names."""
        return f"{self.actor}-{self.replica}"


class PlannedFault(msgspec.Struct, frozen=True, kw_only=True):
    """The ``index``-th fault: at ``at_s`` seconds after the run starts, hit ``target``."""

    index: int
    at_s: float
    target: Target


class FaultRecord(msgspec.Struct, kw_only=True):
    """What happened to one planned fault."""

    index: int
    at_s: float
    """Seconds after the run started when it fired."""
    actor: str
    replica: int
    signal: SignalName
    outcome: Literal["injected", "skipped"]
    reason: str = ""
    """Why it was skipped (no live process, signal refused)."""
    pid: int | None = None
    """The process group signalled."""
    recovered_after_s: float | None = None
    """Fault to recovery (see the module docstring); None if it did not recover in time."""
    new_pid: int | None = None


class ChaosReport(msgspec.Struct, kw_only=True):
    """A chaos run's outcome: every fault, restart counts before and after, why it stopped early."""

    seed: int
    signal: SignalName
    every_s: float
    duration_s: float
    targets: list[str]
    faults: list[FaultRecord] = msgspec.field(default_factory=list)
    restarts_before: dict[str, int] = msgspec.field(default_factory=dict)
    restarts_after: dict[str, int] = msgspec.field(default_factory=dict)
    aborted: str | None = None
    """Set when the run stopped early (the supervisor went away or gave up)."""

    @property
    def injected(self) -> list[FaultRecord]:
        return [f for f in self.faults if f.outcome == "injected"]

    @property
    def recovery_times(self) -> list[float]:
        """Recovery time of every injected fault that recovered, in firing order."""
        return [f.recovered_after_s for f in self.injected if f.recovered_after_s is not None]

    @property
    def restarts_seen(self) -> int:
        """Restarts the supervisor counted during the run, over every slot."""
        return sum(
            max(0, self.restarts_after.get(slot, 0) - before)
            for slot, before in self.restarts_before.items()
        ) + sum(n for slot, n in self.restarts_after.items() if slot not in self.restarts_before)

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON-able data (counts, recovery percentiles, every fault)."""
        times = sorted(self.recovery_times)
        injected = self.injected
        return {
            "seed": self.seed,
            "signal": self.signal,
            "every_s": self.every_s,
            "duration_s": self.duration_s,
            "targets": self.targets,
            "faults_planned": len(self.faults),
            "faults_injected": len(injected),
            "faults_skipped": len(self.faults) - len(injected),
            "recovered": len(times),
            "unrecovered": len(injected) - len(times),
            "restarts_seen": self.restarts_seen,
            "recovery_s": _percentiles(times),
            "aborted": self.aborted,
            "faults": msgspec.to_builtins(self.faults),
        }

    def format_summary(self) -> str:
        """A few human lines: counts, restarts, recovery times."""
        data = self.summary()
        rec = data["recovery_s"]
        lines = [
            f"chaos summary (seed {self.seed}, SIG{self.signal} every {self.every_s:g}s"
            f" for {self.duration_s:g}s over {', '.join(self.targets)}):",
            f"  faults injected {data['faults_injected']}, skipped {data['faults_skipped']},"
            f" recovered {data['recovered']}, unrecovered {data['unrecovered']}",
            f"  restarts seen {data['restarts_seen']}"
            f" (up.json restart counts: before {self.restarts_before},"
            f" after {self.restarts_after})",
        ]
        if rec:
            lines.append(
                f"  recovery time: min {rec['min']:.2f}s, p50 {rec['p50']:.2f}s,"
                f" p99 {rec['p99']:.2f}s, max {rec['max']:.2f}s"
            )
        if self.aborted:
            lines.append(f"  stopped early: {self.aborted}")
        return "\n".join(lines)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "min": round(ordered[0], 3),
        "p50": round(statistics.median(ordered), 3),
        "p99": pick(0.99),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


# ---------------------------------------------------------------------------------- planning


def eligible_targets(
    state: UpState, *, only: Sequence[str] = (), include_edge: bool = False
) -> list[Target]:
    """The slots chaos may hit, sorted: actors in ``only`` (all if empty), the edge only if asked.

    Raises:
        ChaosError: ``only`` names an actor ``up`` does not run, or nothing is left to hit.
    """
    slots = sorted(Target(p.actor, p.replica) for p in state.processes)
    edge = {p.actor for p in state.processes if p.kind == "edge"}
    known = {t.actor for t in slots}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ChaosError(
            f"--only names actor(s) not run by this `greenroom up`: {', '.join(unknown)};"
            f" running: {', '.join(sorted(known)) or 'nothing'}"
        )
    chosen = [
        t for t in slots if (not only or t.actor in only) and (include_edge or t.actor not in edge)
    ]
    if not chosen:
        raise ChaosError(
            "no process to inject faults into"
            + ("" if include_edge else " (the edge is excluded unless --include-edge)")
        )
    return chosen


def plan_faults(config: ChaosConfig, targets: Sequence[Target]) -> list[PlannedFault]:
    """Faults at ``every_s``, ``2 * every_s``, ... up to ``duration_s``, each on a slot drawn from
    ``targets`` by a generator seeded with ``config.seed``: the same seed and targets always give
    the same plan.

    Raises:
        ValueError: ``targets`` is empty.
    """
    if not targets:
        raise ValueError("no targets to plan faults for")
    rng = random.Random(config.seed)
    ordered = sorted(targets)
    count = int(config.duration_s / config.every_s + 1e-9)
    return [
        PlannedFault(index=i, at_s=round((i + 1) * config.every_s, 6), target=rng.choice(ordered))
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------- running


def require_running(run_dir: Path) -> UpState:
    """The process table of the ``greenroom up`` running with ``run_dir``.

    Raises:
        ChaosError: there is no table, it is unreadable, or its supervisor stopped or is gone
            (the message says which, and why it stopped when the table records it).
    """
    try:
        state = read_state(run_dir)
    except msgspec.DecodeError as exc:
        raise ChaosError(f"{run_dir / 'up.json'} is not a process table: {exc}") from exc
    if state is None:
        raise ChaosError(
            f"no `greenroom up` is running: no process table at {run_dir / 'up.json'}"
            " (start one, or pass --run-dir / GREENROOM_RUN_DIR of the one that runs)"
        )
    if state.state in ("stopped", "gave_up") or not supervisor_alive(state):
        why = f": {state.reason.splitlines()[0]}" if state.reason else ""
        raise ChaosError(
            f"no `greenroom up` is running with run dir {run_dir}: its supervisor"
            f" (pid {state.supervisor_pid}) is {state.state if supervisor_alive(state) else 'gone'}"
            f"{why}"
        )
    return state


def _supervising(state: UpState | None) -> bool:
    return state is not None and state.state == "running" and supervisor_alive(state)


def _supervisor_gone(state: UpState | None) -> str:
    if state is None:
        return "the supervisor is gone (no process table)"
    if state.state == "running" and not supervisor_alive(state):
        return "the supervisor is gone"
    why = f": {state.reason.splitlines()[0]}" if state.reason else ""
    return f"the supervisor is {state.state}{why}"


def _restarts(state: UpState | None) -> dict[str, int]:
    if state is None:
        return {}
    return {Target(p.actor, p.replica).id: p.restarts for p in state.processes}


def _child_of(pid: int, supervisor_pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(psutil.Process(pid).ppid() == supervisor_pid)
    return False


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict):
            return data
    return None


@final
@dataclass(eq=False)
class _Run:
    run_dir: Path
    config: ChaosConfig
    report: ChaosReport
    on_fault: Callable[[FaultRecord], None] | None
    on_recovery: Callable[[FaultRecord], None] | None
    started: float = field(default_factory=time.monotonic)

    def state(self) -> UpState | None:
        with contextlib.suppress(OSError, msgspec.DecodeError):
            return read_state(self.run_dir)
        return None

    def slot(self, state: UpState | None, target: Target) -> ProcessStatus | None:
        if state is None:
            return None
        return next(
            (p for p in state.processes if p.actor == target.actor and p.replica == target.replica),
            None,
        )

    async def fire(self, planned: PlannedFault, tg: TaskGroup) -> None:
        cfg = self.config
        record = FaultRecord(
            index=planned.index,
            at_s=round(time.monotonic() - self.started, 3),
            actor=planned.target.actor,
            replica=planned.target.replica,
            signal=cfg.signal,
            outcome="skipped",
        )
        self.report.faults.append(record)
        kind = "actor"
        state = self.state()
        slot = self.slot(state, planned.target)
        if state is None or slot is None or slot.pid is None or slot.state != "running":
            record.reason = (
                f"no running process (slot {slot.state})" if slot is not None else "no such slot"
            )
        elif not _child_of(slot.pid, state.supervisor_pid):
            record.reason = f"pid {slot.pid} is not a child of the supervisor (stale table)"
        else:
            try:
                os.killpg(slot.pid, SIGNALS[cfg.signal])
            except (ProcessLookupError, PermissionError) as exc:
                record.reason = f"signal refused: {exc}"
            else:
                record.outcome = "injected"
                record.pid = slot.pid
                kind = slot.kind
        fired_at = time.monotonic()
        _log().warning(
            "chaos.fault",
            index=record.index,
            actor=record.actor,
            replica=record.replica,
            signal=record.signal,
            pid=record.pid,
            outcome=record.outcome,
            reason=record.reason or None,
        )
        if self.on_fault is not None:
            self.on_fault(record)
        if record.outcome == "injected":
            assert record.pid is not None
            tg.start_soon(self.watch, record, planned.target, record.pid, kind, fired_at)

    async def watch(
        self, record: FaultRecord, target: Target, pid: int, kind: str, fired_at: float
    ) -> None:
        """Wait for the slot to recover from the fault (resuming a frozen process first)."""
        cfg = self.config
        heartbeat = self.run_dir / "health" / f"{target.id}.json"
        resumed_wall = 0.0
        if cfg.signal == "STOP":
            try:
                await anyio.sleep(cfg.stop_for_s)
            finally:
                # Never leave a process frozen, even when the run is cancelled meanwhile.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGCONT)
            resumed_wall = time.time()
            if kind == "edge":  # the edge writes no heartbeat: resumed is recovered
                self.recovered(record, time.monotonic() - fired_at, pid)
                return
        with anyio.move_on_after(cfg.recovery_timeout_s):
            while True:
                state = self.state()
                if not _supervising(state):
                    # Nothing restarts any more: report it now rather than at the timeout.
                    record.reason = _supervisor_gone(state)
                    break
                slot = self.slot(state, target)
                if slot is not None and slot.pid not in (None, pid) and slot.state == "running":
                    # Restarted (for STOP: frozen long enough to be declared dead and replaced).
                    self.recovered(record, time.monotonic() - fired_at, slot.pid)
                    return
                if cfg.signal == "STOP":
                    beat = _read_json(heartbeat)
                    if beat and beat.get("pid") == pid and float(beat.get("at", 0)) >= resumed_wall:
                        self.recovered(record, time.monotonic() - fired_at, pid)
                        return
                await anyio.sleep(_POLL_S)
        if not record.reason:
            record.reason = f"not running again within {cfg.recovery_timeout_s:g}s"
        _log().warning(
            "chaos.unrecovered",
            index=record.index,
            actor=record.actor,
            replica=record.replica,
            reason=record.reason,
        )
        if self.on_recovery is not None:
            self.on_recovery(record)

    def recovered(self, record: FaultRecord, after_s: float, pid: int) -> None:
        record.recovered_after_s = round(after_s, 3)
        record.new_pid = pid
        _log().info(
            "chaos.recovered",
            index=record.index,
            actor=record.actor,
            replica=record.replica,
            after_s=record.recovered_after_s,
            new_pid=pid,
        )
        if self.on_recovery is not None:
            self.on_recovery(record)


async def run_chaos(
    run_dir: Path,
    config: ChaosConfig,
    *,
    on_fault: Callable[[FaultRecord], None] | None = None,
    on_recovery: Callable[[FaultRecord], None] | None = None,
) -> ChaosReport:
    """Inject ``config``'s faults into the ``greenroom up`` using ``run_dir`` and report.

    Fires the planned faults on schedule, waits (up to ``recovery_timeout_s`` each) for every
    injected fault to recover, and returns with restart counts read before and after. Stops
    injecting early, with ``report.aborted`` set, if the supervisor stops or gives up meanwhile.
    ``on_fault`` is called as each fault fires, ``on_recovery`` as each one's watch ends.
    Cancelling the run resumes any process it froze.

    Raises:
        ChaosError: no ``greenroom up`` is running with ``run_dir``, or no slot matches
            ``config.only`` / ``config.include_edge``.
    """
    state = require_running(run_dir)
    targets = eligible_targets(state, only=config.only, include_edge=config.include_edge)
    plan = plan_faults(config, targets)
    report = ChaosReport(
        seed=config.seed,
        signal=config.signal,
        every_s=config.every_s,
        duration_s=config.duration_s,
        targets=[t.id for t in targets],
        restarts_before=_restarts(state),
    )
    run = _Run(run_dir, config, report, on_fault, on_recovery)
    _log().info(
        "chaos.start",
        seed=config.seed,
        signal=config.signal,
        every_s=config.every_s,
        duration_s=config.duration_s,
        targets=report.targets,
        planned=len(plan),
    )
    async with anyio.create_task_group() as tg:
        for planned in plan:
            await anyio.sleep(max(0.0, run.started + planned.at_s - time.monotonic()))
            current = run.state()
            if not _supervising(current):
                report.aborted = _supervisor_gone(current)
                _log().error("chaos.aborted", reason=report.aborted)
                break
            await run.fire(planned, tg)
        # Sit out the rest of the duration (the watchers run on), unless the supervisor stops.
        with anyio.move_on_after(run.started + config.duration_s - time.monotonic()):
            while _supervising(current := run.state()):  # noqa: ASYNC110 - another process's file
                await anyio.sleep(_POLL_S)
            report.aborted = report.aborted or _supervisor_gone(current)
    if report.aborted is None:
        # A watcher may have seen the supervisor stop after the last fault.
        gone = [f.reason for f in report.faults if f.reason.startswith("the supervisor")]
        report.aborted = gone[0] if gone else None
    report.restarts_after = _restarts(run.state())
    _log().info("chaos.done", **{k: v for k, v in report.summary().items() if k != "faults"})
    return report
