"""What a supervisor knows about one child: how to start, when to restart and how to stop it.

A :class:`ChildSpec` is plain data in the spirit of Erlang's child specification; the
:class:`~runtime.supervision.supervisor.Supervisor` interprets it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, final

from anyio.abc import TaskStatus

__all__ = ["ChildSpec", "ChildStart", "Restart"]


@final
class Restart(StrEnum):
    """When a child that exited is started again (OTP restart types)."""

    PERMANENT = "permanent"
    """Always restarted, even after a normal return."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal exit (an exception)."""
    TEMPORARY = "temporary"
    """Never restarted; forgotten once it exits or is stopped."""

    def restarts_after(self, *, abnormal: bool) -> bool:
        """Whether a child of this type is restarted after an exit that was ``abnormal`` or not."""
        if self is Restart.PERMANENT:
            return True
        if self is Restart.TRANSIENT:
            return abnormal
        return False


class ChildStart(Protocol):
    """How a child runs: an async callable that returns (or raises) when the child exits.

    It must call ``task_status.started()`` once it is ready to serve (anyio's idiom); the
    supervisor starts the next child only after that. Returning or raising before ``started()`` is a
    failed start and is handled like any other exit. ``Supervisor.run`` has this shape, so a
    supervisor can be the child of another.
    """

    def __call__(self, *, task_status: TaskStatus[None]) -> Awaitable[None]: ...


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """One supervised child.

    ``shutdown_s`` bounds how long a stopped child may take to finish its cleanup after it is
    cancelled; past it the supervisor stops waiting, logs an error and abandons it. Use
    ``math.inf`` for children that are themselves supervisors (as OTP does), so a subtree always
    gets the time its own children's timeouts add up to.

    Raises:
        ValueError: ``id`` is empty or ``shutdown_s`` is negative or NaN.
    """

    id: str
    start: ChildStart
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a child spec needs a non-empty id")
        if math.isnan(self.shutdown_s) or self.shutdown_s < 0:
            raise ValueError(f"shutdown_s must be >= 0, got {self.shutdown_s!r}")
