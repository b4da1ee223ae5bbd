"""A server run as a child process: free port, log file, readiness wait, clean stop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

__all__ = ["ServerProcess", "ServerStartError", "free_port", "wait_until"]


class ServerStartError(RuntimeError):
    """An embedded server did not become ready; the message points at its log file."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies (Linux only).

    Covers the one case ``stop()`` cannot: the owner itself being SIGKILLed. The kernel ties the
    signal to the *thread* that forked the child, so this is only used from the main thread; a
    server started from a worker thread would otherwise die when that thread ends.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nothing would ever signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``check`` until it returns True or ``timeout`` seconds pass; True if it succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return True
        time.sleep(interval)
    return False


def _primary_group(user: str | None) -> int | None:
    # Popen(user=...) changes only the uid; the child must also leave root's group.
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


@final
class ServerProcess:
    """One child process with its output in ``log_path``.

    The child runs in its own process group so a stop reaches every process it forked; the
    owner's ``stop()`` (called from ``finally`` blocks and signal handlers) ends the group. When
    started from the main thread on Linux the child also gets ``PR_SET_PDEATHSIG`` = SIGKILL, so
    an owner killed with SIGKILL does not leave it running.

    ``stop_signal`` is the polite signal sent to the group first (Postgres wants SIGINT, its
    "fast" shutdown); ``user`` runs the child as that OS user (Postgres refuses to run as root).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start the child with its output appended to ``log_path``.

        Raises:
            OSError: the executable cannot be run (missing, not executable, unknown ``user``).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
                user=self.user,
                group=_primary_group(self.user),
                extra_groups=[] if self.user is not None else None,
                # The hook only calls prctl, getppid and kill: nothing that takes a lock another
                # thread could hold at fork time.
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        """Wait for ``check`` (a real round trip) to pass; raise with the log tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.poll() if self.process else None
                raise ServerStartError(
                    f"{self.name} exited during start-up (code {code});"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(
            f"{self.name} not ready within {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Send ``stop_signal`` to the process group, then SIGKILL what is left after ``timeout``.

        Idempotent; never raises for a process that is already gone.
        """
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # Whatever the leader did, make sure no member of its group outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.process = None
