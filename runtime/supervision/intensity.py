"""Restart intensity: how many restarts within a period a supervisor tolerates before giving up.

Pure bookkeeping with an injectable clock, shared by the in-process supervisor and the process
supervisor of ``greenroom up``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

__all__ = ["RestartIntensity", "RestartWindow"]


@final
@dataclass(frozen=True, slots=True)
class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``period_s`` seconds (OTP's MaxR/MaxT).

    This is configuration; each supervised unit keeps its own :class:`RestartWindow` from
    :meth:`window`, so one intensity value can be shared safely.

    Raises:
        ValueError: ``max_restarts`` is negative or ``period_s`` is not positive.
    """

    max_restarts: int = 3
    period_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts!r}")
        if not self.period_s > 0 or math.isnan(self.period_s):
            raise ValueError(f"period_s must be > 0, got {self.period_s!r}")

    def window(self, clock: Callable[[], float] = time.monotonic) -> RestartWindow:
        """A fresh, empty record of restarts judged against this intensity, timed by ``clock``."""
        return RestartWindow(self, clock)


@final
class RestartWindow:
    """The restarts of one supervised unit within the sliding period of its intensity."""

    def __init__(self, intensity: RestartIntensity, clock: Callable[[], float]) -> None:
        self.intensity = intensity
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Record a restart now; return whether it is still within the intensity.

        ``False`` means more than ``max_restarts`` restarts fell within ``period_s``: the
        supervisor must give up instead of restarting.
        """
        now = self._clock()
        self._times.append(now)
        self._forget_before(now - self.intensity.period_s)
        return len(self._times) <= self.intensity.max_restarts

    def count(self) -> int:
        """How many restarts fall within the period ending now."""
        self._forget_before(self._clock() - self.intensity.period_s)
        return len(self._times)

    def _forget_before(self, horizon: float) -> None:
        # A restart exactly ``period_s`` ago has left the window, as in OTP.
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
