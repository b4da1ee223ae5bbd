"""The failure a supervisor raises when it gives up, so that its parent sees an abnormal exit."""

from __future__ import annotations

from typing import final

__all__ = ["SupervisorGaveUp"]


@final
class SupervisorGaveUp(Exception):  # noqa: N818 - OTP's vocabulary; "GaveUpError" reads worse
    """Restart intensity was exceeded; every child has been stopped.

    Attributes:
        supervisor: name of the supervisor that gave up.
        child_id: the child whose exit exceeded the intensity.
        reason: that exit's reason (see ``describe_exit``).
        restarts: restarts counted within the intensity period, this one included.
    """

    def __init__(self, supervisor: str, child_id: str, reason: str, restarts: int) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} exited ({reason}) "
            f"after {restarts - 1} restarts within the intensity period"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason
        self.restarts = restarts
