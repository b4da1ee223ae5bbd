"""Starting and signalling one child process: own process group, dies with its supervisor.

anyio's ``open_process`` has no ``preexec_fn``, and ``PR_SET_PDEATHSIG`` must be set in the child
between fork and exec, so children are spawned with asyncio's subprocess support (the process
supervisor therefore runs on anyio's asyncio backend, like everything that uses aiokafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

__all__ = ["signal_group", "spawn"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: the hook that runs in the forked child must not load libraries.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] | None = getattr(libc, "prctl", None)
    return prctl


_prctl = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when its parent dies.

    SIGKILL rather than SIGTERM: a supervisor that was itself killed cannot wait for a drain, and
    a child that ignored SIGTERM would outlive it; the delivery contract makes ``kill -9`` safe.
    """
    prctl = _prctl
    if prctl is None:
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


async def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], output: IO[Any]
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new session (its own process group) with stdout+stderr to ``output``.

    The child is SIGKILLed by the kernel if this process dies (Linux), so a supervisor that is
    itself ``kill -9``-ed leaves no orphans.

    Raises:
        OSError: if the program cannot be started (not found, not executable, ...).
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=output,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group that is gone is not an error."""
    # A process group leader's pgid is its pid (spawn() starts a new session).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
