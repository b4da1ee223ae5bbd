"""Supervising OS processes: start, notice exits, restart with backoff, give up, stop in order.

The same OTP rules as the in-node supervisor (runtime.supervision), one level up: each slot
(an actor replica or the edge) is a permanent child; a slot whose process exits is restarted after
an exponential backoff with full jitter; more than ``max_restarts`` exits of one actor's processes
within ``period_s`` make the supervisor give up on that actor, stop everything and fail
(:class:`ProcessGaveUp`) so ``greenroom up`` exits non-zero: the escalation OTP prescribes,
rather than running a system with one service silently missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, final

import anyio
import msgspec
import psutil
from anyio.abc import TaskStatus

from runtime.logging import get_logger
from runtime.metrics import registry
from runtime.procsup._spawn import signal_group, spawn
from runtime.procsup._state import ProcessStatus, SupervisorState, UpState, write_state
from runtime.supervision.backoff import Backoff
from runtime.supervision.intensity import RestartIntensity, RestartWindow

__all__ = [
    "GiveUp",
    "ProcessGaveUp",
    "ProcessSpec",
    "ProcessSupervisor",
    "Restart",
    "describe_exit",
]


def _log() -> Any:
    # Fetched per event (decisions are rare): a logger bound at import would freeze the logging
    # configuration in force then, ignoring configure_logging() and structlog.testing.
    return get_logger("runtime.procsup")


_decisions = registry.counter(
    "greenroom_process_decisions_total",
    "Process supervisor decisions (start, ready, exit, restart, give_up, stop, kill) per actor",
)

_TAIL_LINES = 12
_READY_POLL_S = 0.1


class ProcessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one supervised process: which actor and replica, its argv and extra env.

    ``env`` is laid over the supervisor's own environment. ``kind`` orders the shutdown: the
    edge is stopped first (so it stops taking requests), then all actors together.
    ``health_file``: a JSON heartbeat the process writes once it is ready (``greenroom run
    --health-file``: ``{"pid": ..., "state": "running"}``); until then its state is ``starting``.
    Without one, a process counts as running as soon as it was spawned.
    """

    name: str
    replica: int = 0
    argv: tuple[str, ...]
    env: Mapping[str, str] = msgspec.field(default_factory=dict)
    kind: Literal["actor", "edge"] = "actor"
    health_file: str | None = None

    @property
    def id(self) -> str:
        """``<name>-<replica>``: the slot's name in logs, the state file and its log file."""
        return f"{self.name}-{self.replica}"


class Restart(msgspec.Struct, frozen=True):
    """Decision: start the slot's process again after ``delay_s`` seconds."""

    delay_s: float


class GiveUp(msgspec.Struct, frozen=True):
    """Decision: the actor exceeded its restart intensity; stop everything and fail."""

    reason: str


@final
class ProcessGaveUp(Exception):  # noqa: N818 - OTP vocabulary, as runtime.supervision's SupervisorGaveUp
    """The supervisor gave up on ``actor`` (past its restart intensity) and stopped everything."""

    def __init__(self, actor: str, reason: str) -> None:
        super().__init__(reason)
        self.actor = actor
        self.reason = reason


def describe_exit(returncode: int | None) -> str:
    """``exit code 1`` / ``killed by SIGKILL`` / ``failed to start``, for logs and messages."""
    if returncode is None:
        return "failed to start"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(eq=False)
class _ActorPolicy:
    """Restart bookkeeping shared by all replicas of one actor."""

    window: RestartWindow
    backoff: Backoff
    recent_exits: deque[str] = field(default_factory=lambda: deque(maxlen=8))


@dataclass(eq=False)
class _Slot:
    spec: ProcessSpec
    log_path: Path
    status: ProcessStatus
    proc: asyncio.subprocess.Process | None = None  # the current incarnation
    spawned_at: float = 0.0  # monotonic
    log_offset: int = 0  # where the current incarnation's output starts in log_path
    terminate: anyio.Event | None = None
    done: anyio.Event | None = None


@final
class ProcessSupervisor:
    """Keeps one OS process per :class:`ProcessSpec` alive until stopped or given up.

    Use::

        supervisor = ProcessSupervisor(specs, run_dir=Path(".run"))
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)   # returns once every process was spawned
            ...
            supervisor.stop()                # graceful: SIGTERM, wait, SIGKILL stragglers

    Restart intensity and backoff are counted per actor (all its replicas together), as
    :class:`~runtime.supervision.intensity.RestartIntensity` and
    :class:`~runtime.supervision.backoff.Backoff` do inside a node. A process that could not be
    spawned at all counts as an exit. Each process's stdout and stderr go to
    ``<run_dir>/logs/<name>-<replica>.log``.

    Every decision is a structlog event (``process.start``, ``process.ready``,
    ``process.exit``, ``process.restart``, ``process.give_up``, ``process.stop``,
    ``process.kill``, ``process.start_failed``) and a count in
    ``greenroom_process_decisions_total{actor,decision}``. The process table is rewritten to
    ``<run_dir>/up.json`` on every change (see :mod:`runtime.procsup._state`).

    Raises (constructor):
        ValueError: two specs share a name and replica, or the intensity/backoff values are
            out of range.
    """

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        run_dir: Path,
        max_restarts: int = 3,
        period_s: float = 5.0,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        shutdown_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        ids = [spec.id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"process specs must have unique name-replica ids, got {ids}")
        self.run_dir = run_dir
        self.shutdown_timeout_s = shutdown_timeout_s
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._base_env = dict(os.environ if base_env is None else base_env)
        intensity = RestartIntensity(max_restarts, period_s)
        backoff = Backoff(backoff_base_s, backoff_cap_s, rand=(rng or random.Random()).random)
        self._policies = {
            name: _ActorPolicy(window=intensity.window(clock), backoff=backoff)
            for name in dict.fromkeys(spec.name for spec in specs)
        }
        logs = run_dir / "logs"
        self._slots = [
            _Slot(
                spec=spec,
                log_path=logs / f"{spec.id}.log",
                status=ProcessStatus(
                    actor=spec.name,
                    replica=spec.replica,
                    kind=spec.kind,
                    state="starting",
                    argv=list(spec.argv),
                    log=str(logs / f"{spec.id}.log"),
                ),
            )
            for spec in specs
        ]
        self._state: SupervisorState = "starting"
        self._gave_up: ProcessGaveUp | None = None
        self._started_at = time.time()
        me = psutil.Process()
        self._create_time = me.create_time()
        self._stop_requested: anyio.Event | None = None
        self._kill_now = False
        self._grace_scopes: set[anyio.CancelScope] = set()

    # ------------------------------------------------------------------ public surface

    def snapshot(self) -> UpState:
        """The process table as it would be written to the state file now."""
        return UpState(
            supervisor_pid=os.getpid(),
            supervisor_create_time=self._create_time,
            started_at=self._started_at,
            updated_at=time.time(),
            state=self._state,
            reason=self._gave_up.reason if self._gave_up else None,
            processes=[msgspec.structs.replace(slot.status) for slot in self._slots],
        )

    def stop(self, *, kill: bool = False) -> None:
        """Ask for a graceful stop of everything; with ``kill``, SIGKILL whatever is still up.

        Idempotent; call it from the event loop (a signal-receiving task, a test). Before
        :meth:`run` has started, the stop takes effect as soon as it does.
        """
        if kill:
            self._kill_now = True
            for scope in list(self._grace_scopes):
                scope.cancel()
        if self._stop_requested is None:
            self._stop_requested = anyio.Event()
        self._stop_requested.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every process in order, keep them alive, stop them all when asked.

        Reports started (for ``TaskGroup.start``) once every process has been spawned once.
        Returns after :meth:`stop` once no process is left. On cancellation it still stops every
        process (shielded) before propagating.

        Raises:
            ProcessGaveUp: an actor exited more than ``max_restarts`` times within ``period_s``;
                everything has been stopped by then. Its message names the actor, its recent
                exit statuses and the last lines of its output.
            OSError: the run directory cannot be written.
        """
        if self._stop_requested is None:
            self._stop_requested = anyio.Event()
        stop_requested = self._stop_requested
        for slot in self._slots:
            slot.terminate = anyio.Event()
            slot.done = anyio.Event()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._publish(strict=True)
        try:
            async with anyio.create_task_group() as tg:
                for slot in self._slots:
                    if stop_requested.is_set():
                        slot.status.state = "stopped"
                        assert slot.done is not None
                        slot.done.set()
                        continue
                    await tg.start(self._run_slot, slot)
                if not stop_requested.is_set():
                    self._state = "running"
                    self._publish()
                task_status.started()
                await stop_requested.wait()
                await self._stop_all()
        finally:
            self._state = "gave_up" if self._gave_up else "stopped"
            self._publish()
            _log().info("procsup.stopped", state=self._state)
        if self._gave_up is not None:
            raise self._gave_up

    # ------------------------------------------------------------------ shutdown order

    async def _stop_all(self) -> None:
        self._state = "gave_up" if self._gave_up else "stopping"
        self._publish()
        _log().info("procsup.stopping", reason=self._gave_up.reason if self._gave_up else "stop")
        # The edge first, so no new requests arrive for actors about to drain; then all actors
        # together (one by one would multiply the drain time by the number of replicas).
        for phase in (
            [s for s in self._slots if s.spec.kind == "edge"],
            [s for s in self._slots if s.spec.kind != "edge"],
        ):
            for slot in phase:
                assert slot.terminate is not None
                slot.terminate.set()
            for slot in phase:
                assert slot.done is not None
                await slot.done.wait()

    # ------------------------------------------------------------------ one slot

    async def _run_slot(self, slot: _Slot, *, task_status: TaskStatus[None]) -> None:
        assert slot.terminate is not None
        assert slot.done is not None
        assert self._stop_requested is not None
        stop_requested = self._stop_requested
        try:
            started = await self._spawn(slot)
            task_status.started()
            while True:
                returncode = await self._watch(slot) if started else None
                if stop_requested.is_set():
                    break
                decision = self._decide(slot, returncode)
                if isinstance(decision, GiveUp):
                    self._give_up(slot, decision)
                    break
                slot.status.state = "restarting"
                self._publish()
                _decisions.inc(actor=slot.spec.name, decision="restart")
                _log().info(
                    "process.restart",
                    actor=slot.spec.name,
                    replica=slot.spec.replica,
                    delay_s=round(decision.delay_s, 3),
                    restarts=slot.status.restarts + 1,
                )
                with anyio.move_on_after(decision.delay_s):
                    await stop_requested.wait()
                if stop_requested.is_set():
                    break
                slot.status.restarts += 1
                started = await self._spawn(slot)
        finally:
            if slot.proc is not None:
                # Only reached with a live process on cancellation or error: stop it anyway.
                with anyio.CancelScope(shield=True):
                    await self._terminate(slot)
                    self._reap(slot, slot.proc.returncode, expected=True)
            if slot.status.state != "gave_up":
                slot.status.state = "stopped"
            self._publish()
            slot.done.set()

    async def _spawn(self, slot: _Slot) -> bool:
        """Start the slot's process; False if it could not be started (counted as an exit)."""
        spec = slot.spec
        slot.status.state = "starting"
        self._publish()
        attempt = slot.status.restarts
        with open(slot.log_path, "ab") as log:  # noqa: ASYNC230 - a local append, microseconds
            log.write(
                f"--- greenroom up: {spec.id} start #{attempt + 1} at"
                f" {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {' '.join(spec.argv)}\n".encode()
            )
            log.flush()
            slot.log_offset = log.tell()
            try:
                slot.proc = await spawn(spec.argv, env={**self._base_env, **spec.env}, output=log)
            except OSError as exc:
                slot.proc = None
                log.write(f"--- failed to start: {exc}\n".encode())
                _log().error(
                    "process.start_failed", actor=spec.name, replica=spec.replica, error=str(exc)
                )
                return False
        slot.spawned_at = time.monotonic()
        slot.status.pid = slot.proc.pid
        slot.status.started_at = time.time()
        slot.status.state = "starting" if spec.health_file else "running"
        self._publish()
        _decisions.inc(actor=spec.name, decision="start")
        _log().info(
            "process.start",
            actor=spec.name,
            replica=spec.replica,
            pid=slot.proc.pid,
            restarts=slot.status.restarts,
            log=str(slot.log_path),
        )
        return True

    async def _watch(self, slot: _Slot) -> int:
        """Wait until the slot's process exits, terminating it if the slot is told to stop."""
        proc = slot.proc
        assert proc is not None
        assert slot.terminate is not None
        terminate = slot.terminate
        async with anyio.create_task_group() as tg:

            async def stop_when_told() -> None:
                await terminate.wait()
                await self._terminate(slot)

            tg.start_soon(stop_when_told)
            if slot.spec.health_file:
                tg.start_soon(self._await_ready, slot, proc.pid, Path(slot.spec.health_file))
            returncode: int = await proc.wait()
            tg.cancel_scope.cancel()
        self._reap(slot, returncode, expected=terminate.is_set())
        return returncode

    async def _await_ready(self, slot: _Slot, pid: int, health_file: Path) -> None:
        """Mark the slot ``running`` once its process's heartbeat says so (polled: it is a file)."""
        while True:
            await anyio.sleep(_READY_POLL_S)
            try:
                health = json.loads(await anyio.Path(health_file).read_bytes())
            except (OSError, ValueError):
                continue  # not written yet, or being replaced
            # The pid check skips a heartbeat left behind by a previous, killed incarnation.
            if (
                isinstance(health, dict)
                and health.get("pid") == pid
                and health.get("state") == "running"
            ):
                if slot.status.state == "starting":
                    slot.status.state = "running"
                    self._publish()
                    _decisions.inc(actor=slot.spec.name, decision="ready")
                    _log().info(
                        "process.ready",
                        actor=slot.spec.name,
                        replica=slot.spec.replica,
                        pid=pid,
                        after_s=round(time.monotonic() - slot.spawned_at, 3),
                    )
                return

    def _reap(self, slot: _Slot, returncode: int | None, *, expected: bool) -> None:
        proc = slot.proc
        slot.proc = None
        if proc is not None:
            # The leader is gone; anything it forked into its group must not outlive it.
            signal_group(proc.pid, signal.SIGKILL)
        slot.status.pid = None
        slot.status.started_at = None
        slot.status.last_exit_code = returncode
        slot.status.last_signal = (
            describe_exit(returncode).removeprefix("killed by ")
            if returncode is not None and returncode < 0
            else None
        )
        self._publish()
        _decisions.inc(actor=slot.spec.name, decision="exit")
        log = _log()
        (log.info if expected else log.warning)(
            "process.exit",
            actor=slot.spec.name,
            replica=slot.spec.replica,
            pid=proc.pid if proc is not None else None,
            exit=describe_exit(returncode),
            exit_code=returncode,
            uptime_s=round(time.monotonic() - slot.spawned_at, 3),
            expected=expected,
        )

    async def _terminate(self, slot: _Slot) -> None:
        """SIGTERM the slot's process group, wait up to the shutdown timeout, then SIGKILL."""
        proc = slot.proc
        if proc is None or proc.returncode is not None:
            return
        slot.status.state = "stopping"
        self._publish()
        _decisions.inc(actor=slot.spec.name, decision="stop")
        _log().info("process.stop", actor=slot.spec.name, replica=slot.spec.replica, pid=proc.pid)
        if not self._kill_now:
            signal_group(proc.pid, signal.SIGTERM)
            with anyio.move_on_after(self.shutdown_timeout_s) as scope:
                self._grace_scopes.add(scope)
                try:
                    await proc.wait()
                    return
                finally:
                    self._grace_scopes.discard(scope)
        _decisions.inc(actor=slot.spec.name, decision="kill")
        _log().warning(
            "process.kill",
            actor=slot.spec.name,
            replica=slot.spec.replica,
            pid=proc.pid,
            why="asked to kill" if self._kill_now else "still running after shutdown timeout",
            shutdown_timeout_s=self.shutdown_timeout_s,
        )
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()

    # ------------------------------------------------------------------ decisions

    def _decide(self, slot: _Slot, returncode: int | None) -> Restart | GiveUp:
        """Restart after a backoff, or give up on the actor when past its intensity."""
        policy = self._policies[slot.spec.name]
        policy.recent_exits.append(f"{slot.spec.id} {describe_exit(returncode)}")
        if not policy.window.record():
            return GiveUp(self._give_up_reason(slot, policy))
        # The n-th restart within the period (0-based) waits up to base * 2**n.
        return Restart(policy.backoff.delay(policy.window.count() - 1))

    def _give_up_reason(self, slot: _Slot, policy: _ActorPolicy) -> str:
        exits = ", ".join(policy.recent_exits)
        reason = (
            f"gave up on actor {slot.spec.name!r}: more than {self.max_restarts} restarts within"
            f" {self.period_s:g}s (recent exits: {exits})"
        )
        tail = _tail(slot.log_path, slot.log_offset)
        if tail:
            indented = "\n".join(f"  {line}" for line in tail)
            reason += f"; last output of {slot.spec.id} ({slot.log_path}):\n{indented}"
        else:
            reason += f"; {slot.spec.id} wrote no output ({slot.log_path})"
        return reason

    def _give_up(self, slot: _Slot, decision: GiveUp) -> None:
        slot.status.state = "gave_up"
        if self._gave_up is None:
            self._gave_up = ProcessGaveUp(slot.spec.name, decision.reason)
        self._publish()
        _decisions.inc(actor=slot.spec.name, decision="give_up")
        _log().error("process.give_up", actor=slot.spec.name, reason=decision.reason)
        assert self._stop_requested is not None
        self._stop_requested.set()

    # ------------------------------------------------------------------ state file

    def _publish(self, *, strict: bool = False) -> None:
        # Written synchronously on purpose: a few hundred bytes, and writes stay in order.
        try:
            write_state(self.run_dir, self.snapshot())
        except OSError as exc:
            if strict:
                raise
            _log().warning("procsup.state_write_failed", path=str(self.run_dir), error=str(exc))


def _tail(path: Path, offset: int, lines: int = _TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
