"""The failed-login rule: after ``max_failures`` wrong passwords for one email within
``window_s``, further logins for that email are refused until the oldest failure in the window
ages out.

Counted per email (normalised), not per client address: an attacker spreading guesses over many
addresses still meets the limit, and a locked-out user is told when to try again. The cost is
that anyone can lock an account out for a window by guessing wrong on purpose; that is the usual
trade, and the window is short. Failures are stored in Postgres by the auth actor, so every
replica sees the same count.

A refusal is an :class:`~runtime.errors.UnavailableError` with ``retry_after_s``: the edge maps it
to 503 with ``Retry-After``, which every HTTP client already knows how to back off from (the edge
has no domain-error kind for 429, which it keeps for its own rate limits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

__all__ = ["LoginThrottle"]


@final
@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """``max_failures`` failed logins per email per ``window_s`` seconds."""

    max_failures: int = 5
    window_s: float = 900.0

    def retry_after_s(self, failures: int, oldest_age_s: float) -> float:
        """Seconds until a login for this email may be tried again; 0 if it may now.

        ``failures`` is the number of failures within the window and ``oldest_age_s`` how long
        ago the oldest of them happened.
        """
        if failures < self.max_failures:
            return 0.0
        return float(max(1, math.ceil(self.window_s - oldest_age_s)))
