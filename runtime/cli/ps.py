"""``greenroom ps``: the processes a running ``greenroom up`` supervises.

Reads ``<run_dir>/up.json`` (written by the process supervisor on every change) and prints one row
per process: actor, replica, pid, restarts, uptime, state. ``--json`` prints the state file's
content with each process's ``uptime_s`` added, for scripts (``greenroom chaos`` reads the same
file). Exit code 0 when an ``up`` is running, 1 when none is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

from runtime.config import load_settings
from runtime.procsup import UpState, read_state, state_path, supervisor_alive

HELP = "show the processes `greenroom up` supervises"

__all__ = ["HELP", "add_arguments", "format_table", "format_uptime", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--json`` and ``--run-dir``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run directory of the `greenroom up` to inspect (default: GREENROOM_RUN_DIR, .run)",
    )


def format_uptime(seconds: float | None) -> str:
    """``-`` for no live process, else a short human duration: ``42s``, ``3m07s``, ``2h05m``."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def format_table(state: UpState, now: float | None = None) -> str:
    """The process table as aligned text columns, one process per line after a header."""
    now = time.time() if now is None else now
    rows = [("ACTOR", "REPLICA", "PID", "RESTARTS", "UPTIME", "STATE", "LAST EXIT")]
    for proc in state.processes:
        rows.append(
            (
                proc.actor,
                str(proc.replica),
                str(proc.pid) if proc.pid is not None else "-",
                str(proc.restarts),
                format_uptime(proc.uptime_s(now)),
                proc.state,
                "-" if proc.last_exit_code is None else str(proc.last_exit_code),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _not_running(state: UpState | None, path: Path) -> str:
    if state is None:
        return f"no `greenroom up` is running: no state file at {path}"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.updated_at))
    why = f" ({state.reason.splitlines()[0]})" if state.reason else ""
    return (
        f"no `greenroom up` is running: its supervisor (pid {state.supervisor_pid}) is gone;"
        f" last state {state.state!r} at {when}{why}"
    )


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); 0 if an ``up`` is running, 1 if not, 2 on an unreadable file."""
    run_dir: Path = args.run_dir or Path(load_settings().run_dir)
    path = state_path(run_dir)
    try:
        state = read_state(run_dir)
    except msgspec.DecodeError as exc:
        print(f"greenroom ps: {path} is not a process table: {exc}", file=sys.stderr)
        return 2
    running = (
        state is not None and state.state not in ("stopped", "gave_up") and supervisor_alive(state)
    )
    if args.json:
        now = time.time()
        doc: dict[str, object] = {"running": running, "state_file": str(path)}
        if state is not None:
            doc.update(msgspec.to_builtins(state))
            doc["processes"] = [
                {**msgspec.to_builtins(proc), "uptime_s": proc.uptime_s(now)}
                for proc in state.processes
            ]
        print(json.dumps(doc, indent=2))
        return 0 if running else 1
    if not running:
        print(_not_running(state, path), file=sys.stderr)
        return 1
    assert state is not None
    print(format_table(state))
    return 0
