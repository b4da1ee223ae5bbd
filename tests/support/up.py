"""``greenroom up`` as a subprocess for tests: its own session, output in a file, its table.

Shared by the integration tests of the process supervisor and the chaos suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import msgspec
import psutil

from runtime.procsup import ProcessStatus, UpState, read_state

__all__ = ["ROOT", "UpProcess"]

ROOT = Path(__file__).resolve().parents[2]


class UpProcess:
    """A ``greenroom up`` subprocess in its own session, its output in a file, and its table."""

    def __init__(self, args: list[str], env: Mapping[str, str], run_dir: Path, out: Path) -> None:
        self.run_dir = run_dir
        self.out = out
        self._out = out.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from runtime.cli import main; sys.exit(main())",
                "up",
                *args,
            ],
            env=dict(env),
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def state(self) -> UpState | None:
        try:
            return read_state(self.run_dir)
        except (OSError, msgspec.DecodeError):
            return None

    def processes(self) -> list[ProcessStatus]:
        state = self.state()
        return state.processes if state else []

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def slot_logs(self) -> str:
        """Everything every supervised process wrote (JSON log lines and tracebacks)."""
        logs = self.run_dir / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))

    async def wait_running(self, count: int, within: float = 90.0) -> None:
        """Wait until at least ``count`` slots exist (``up`` may add companions, such as the
        payment-provider stand-in) and every one is ``running``; fail with ``up``'s output if not.
        """

        def ready() -> bool:
            procs = self.processes()
            return len(procs) >= count and all(p.state == "running" for p in procs)

        await self.wait_for(ready, within, f"{count} processes running")

    async def wait_for(self, check: Callable[[], bool], within: float, what: str) -> None:
        """Wait for ``check`` (state of other processes); fail with ``up``'s output if not."""
        with anyio.move_on_after(within):
            while not check():
                if self.process.poll() is not None:
                    break
                await anyio.sleep(0.05)
            return
        raise AssertionError(f"not {what} within {within}s; greenroom up said:\n{self.output()}")

    async def stop(self, within: float = 30.0) -> int:
        """Ctrl-C, as a user would; returns the exit code (SIGKILLs the group if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with anyio.move_on_after(within):
                while self.process.poll() is None:  # noqa: ASYNC110 - another process
                    await anyio.sleep(0.05)
        self.close()
        return self.process.returncode

    def all_pids(self) -> set[int]:
        """The supervisor and its whole process tree right now."""
        try:
            me = psutil.Process(self.process.pid)
            return {me.pid} | {child.pid for child in me.children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def close(self) -> None:
        """Kill whatever is left of the ``up`` process tree; idempotent."""
        if self.process.poll() is None:
            try:
                children = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            os.killpg(self.process.pid, signal.SIGKILL)
            for child in children:
                # Nodes lead their own process groups: kill each group too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
            self.process.wait(10)
        if not self._out.closed:
            self._out.close()
