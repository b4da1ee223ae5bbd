"""Exponential backoff with full jitter between restarts (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import final

__all__ = ["Backoff"]


@final
@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restart ``n`` (0-based): uniform over ``[0, min(cap_s, base_s * 2**n)]``.

    Full jitter spreads restarts of many children (or replicas) that failed together, so they do
    not hammer a recovering dependency in lockstep. ``rand`` returns a float in ``[0, 1)`` and is
    injectable for tests.

    Raises:
        ValueError: ``base_s`` or ``cap_s`` is negative or NaN, or ``cap_s < base_s``.
    """

    base_s: float = 0.1
    cap_s: float = 10.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if math.isnan(self.base_s) or self.base_s < 0:
            raise ValueError(f"base_s must be >= 0, got {self.base_s!r}")
        if math.isnan(self.cap_s) or self.cap_s < self.base_s:
            raise ValueError(f"cap_s must be >= base_s, got {self.cap_s!r}")

    def ceiling(self, n: int) -> float:
        """The largest delay restart ``n`` may wait: ``min(cap_s, base_s * 2**n)``.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"restart number must be >= 0, got {n!r}")
        try:
            doubled = math.ldexp(self.base_s, n)  # exact base * 2**n, no intermediate 2.0**n
        except OverflowError:
            return self.cap_s  # larger than any float, so larger than any cap
        return min(self.cap_s, doubled)

    def delay(self, n: int) -> float:
        """A random delay for restart ``n``, in ``[0, ceiling(n)]``.

        Raises:
            ValueError: ``n`` is negative.
        """
        ceiling = self.ceiling(n)
        # Clamp: an injected ``rand`` may return exactly 1.0 or drift; the bound is the promise.
        return min(ceiling, max(0.0, self.rand() * ceiling))
