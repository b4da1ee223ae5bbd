"""Supervisor decisions as values: each one is logged as a structlog event and counted.

A test (or ``greenroom ps``) reads the :class:`Decision` values; an operator reads the log line
``supervisor.<kind>`` and the counter ``greenroom_supervisor_decisions_total``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import final

from runtime.logging import get_logger
from runtime.metrics import registry

__all__ = ["NORMAL", "Decision", "DecisionKind", "describe_exit", "record_decision"]

NORMAL = "normal"
"""The reason of an exit without an exception."""

_DECISIONS = registry.counter(
    "greenroom_supervisor_decisions_total",
    "Supervisor decisions (start, exit, restart, stop, abandon, give_up, escalate) per child.",
)


@final
class DecisionKind(StrEnum):
    """What a supervisor decided, or observed and acted on."""

    START = "start"
    """A child was started and reported itself ready."""
    EXIT = "exit"
    """A child exited on its own, normally or with an exception (``reason``)."""
    RESTART = "restart"
    """A child is started again after ``delay_s`` of backoff."""
    STOP = "stop"
    """A child was cancelled and finished within its shutdown timeout."""
    ABANDON = "abandon"
    """A stopped child outlived its shutdown timeout; the supervisor no longer waits for it."""
    GIVE_UP = "give_up"
    """Restart intensity exceeded: the supervisor stops every child instead of restarting."""
    ESCALATE = "escalate"
    """The supervisor fails itself with ``SupervisorGaveUp``, for its parent to handle."""


_LEVELS = {
    DecisionKind.START: "info",
    DecisionKind.EXIT: "info",
    DecisionKind.RESTART: "warning",
    DecisionKind.STOP: "info",
    DecisionKind.ABANDON: "error",
    DecisionKind.GIVE_UP: "error",
    DecisionKind.ESCALATE: "error",
}


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One decision of supervisor ``supervisor`` about child ``child_id``.

    ``restart_count`` is how many times this supervisor run has restarted the child so far
    (including this restart, for ``RESTART``); ``delay_s`` is the backoff before a restart.
    """

    supervisor: str
    kind: DecisionKind
    child_id: str
    reason: str = ""
    restart_count: int = 0
    delay_s: float = 0.0

    @property
    def event(self) -> str:
        """The structlog event name, e.g. ``supervisor.restart``."""
        return f"supervisor.{self.kind.value}"


def describe_exit(error: BaseException | None) -> str:
    """The loggable reason of an exit: :data:`NORMAL`, or the exception's type and message."""
    if error is None:
        return NORMAL
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def record_decision(decision: Decision, *, error: BaseException | None = None) -> None:
    """Log ``decision`` as one structlog event and count it; never raises for a valid decision.

    ``error`` (the child's exception, if any) is attached as ``exc_info`` so the traceback of a
    crash is in the log once, at the exit that caused it.
    """
    level = _LEVELS[decision.kind]
    if decision.kind is DecisionKind.EXIT and error is not None:
        level = "warning"
    # Fetch the logger per event: decisions are rare, and this honours the logging
    # configuration in force now (including structlog.testing.capture_logs).
    log = get_logger("runtime.supervision", supervisor=decision.supervisor)
    fields: dict[str, object] = {
        "child": decision.child_id,
        "reason": decision.reason,
        "restart_count": decision.restart_count,
    }
    if decision.kind is DecisionKind.RESTART:
        fields["delay_s"] = round(decision.delay_s, 6)
    if error is not None:
        fields["exc_info"] = error
    getattr(log, level)(decision.event, **fields)
    _DECISIONS.inc(
        supervisor=decision.supervisor, child=decision.child_id, decision=decision.kind.value
    )
