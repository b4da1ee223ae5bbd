"""The process table of a running ``greenroom up``, as a JSON file other commands can read.

The supervisor rewrites ``<run_dir>/up.json`` on every change (temp file + ``os.replace``, so a
reader never sees half a file). ``greenroom ps`` prints it; ``greenroom chaos`` picks its victims
from it. The format is versioned; fields are only ever added, with defaults.

Each supervised process leads its own process group (pgid == pid), so ``os.killpg(pid, sig)``
reaches everything it forked. The file outlives its writer: check :func:`supervisor_alive` (and
``state``) before trusting the pids in it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Literal

import msgspec
import psutil

__all__ = [
    "STATE_FILE",
    "ProcessState",
    "ProcessStatus",
    "SupervisorState",
    "UpState",
    "read_state",
    "state_path",
    "supervisor_alive",
    "write_state",
]

STATE_FILE = "up.json"

ProcessState = Literal["starting", "running", "restarting", "stopping", "stopped", "gave_up"]
"""One process slot's state: ``starting`` (being spawned), ``running``, ``restarting`` (dead,
waiting out its backoff), ``stopping`` (SIGTERM sent), ``stopped``, ``gave_up`` (past its restart
intensity; the supervisor escalates and stops everything)."""

SupervisorState = Literal["starting", "running", "stopping", "stopped", "gave_up"]


class ProcessStatus(msgspec.Struct, kw_only=True):
    """One supervised process slot (an actor replica or the edge) as seen right now."""

    actor: str
    replica: int
    kind: Literal["actor", "edge"]
    state: ProcessState
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    """Epoch seconds when the current incarnation was spawned (None while none is alive)."""
    last_exit_code: int | None = None
    """Exit status of the previous incarnation; negative means killed by that signal number."""
    last_signal: str | None = None
    argv: list[str] = msgspec.field(default_factory=list)
    log: str = ""

    def uptime_s(self, now: float | None = None) -> float | None:
        """Seconds the current incarnation has been alive, or None if none is."""
        if self.started_at is None or self.pid is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.started_at)


class UpState(msgspec.Struct, kw_only=True):
    """The whole state file: who supervises, since when, and every process slot."""

    version: int = 1
    supervisor_pid: int
    supervisor_create_time: float
    """psutil's create time of the supervisor, so a recycled pid is not mistaken for it."""
    started_at: float
    updated_at: float
    state: SupervisorState
    reason: str | None = None
    """Why the supervisor stopped, when it gave up on an actor."""
    processes: list[ProcessStatus] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UpState)


def state_path(run_dir: Path) -> Path:
    """Where the state file of the ``greenroom up`` using ``run_dir`` lives."""
    return run_dir / STATE_FILE


def write_state(run_dir: Path, state: UpState) -> None:
    """Replace the state file atomically (write a temp file beside it, then rename).

    Raises:
        OSError: if the run directory cannot be written.
    """
    path = state_path(run_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(_encoder.encode(state)) + b"\n")
    os.replace(tmp, path)


def read_state(run_dir: Path) -> UpState | None:
    """The last state written under ``run_dir``, or None if there is none.

    Raises:
        msgspec.DecodeError: if the file exists but is not a state file.
    """
    try:
        raw = state_path(run_dir).read_bytes()
    except FileNotFoundError:
        return None
    return _decoder.decode(raw)


def supervisor_alive(state: UpState) -> bool:
    """True if the process that wrote ``state`` is still running (same pid, same start time)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(state.supervisor_pid)
        # create_time is rounded differently across calls on some kernels; allow a little slack.
        same = abs(float(proc.create_time()) - state.supervisor_create_time) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    return False
