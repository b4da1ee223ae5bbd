"""The deadline of the work in progress, carried in a context variable.

A deadline is **absolute, in epoch milliseconds** (wall clock), the same unit the bus carries in
``Envelope.deadline``, so a handler can enter ``deadline_scope(envelope.deadline)`` and every call
it makes, in any task it starts, sees the same budget without passing it around. Wall-clock time
is used because the deadline crosses processes; it is turned into a local (monotonic) timeout only
at the point of use (:mod:`runtime.resilience.timeout`), so a clock step can only make one wait a
little shorter or longer, never make a deadline live forever.

``0`` or ``None`` means "no deadline", as on the envelope.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from runtime.errors import DeadlineExceededError

__all__ = [
    "Clock",
    "current_deadline",
    "deadline_after",
    "deadline_scope",
    "raise_if_expired",
    "remaining",
    "wall_clock",
]

Clock = Callable[[], float]
"""Returns the current time as epoch seconds (``time.time`` or a fake in tests)."""

wall_clock: Final[Clock] = time.time

_deadline_ms: ContextVar[int | None] = ContextVar("greenroom_deadline_ms", default=None)


def current_deadline() -> int | None:
    """The innermost deadline in force, in epoch milliseconds, or ``None`` when there is none."""
    return _deadline_ms.get()


def deadline_after(seconds: float, *, clock: Clock = wall_clock) -> int:
    """The epoch-millisecond deadline ``seconds`` from now (for callers that think in timeouts)."""
    return int((clock() + seconds) * 1000)


def remaining(*, clock: Clock = wall_clock) -> float | None:
    """Seconds left before the current deadline (``<= 0`` once it has passed), or ``None``."""
    deadline = _deadline_ms.get()
    if deadline is None:
        return None
    return deadline / 1000 - clock()


def raise_if_expired(*, clock: Clock = wall_clock) -> None:
    """Return if there is time left (or no deadline).

    Raises:
        DeadlineExceededError: the current deadline has passed.
    """
    left = remaining(clock=clock)
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"deadline passed {-left:.3f}s ago")


@contextmanager
def deadline_scope(epoch_ms: int | None) -> Iterator[int | None]:
    """Run the block under ``epoch_ms``, or under the enclosing deadline if that one is earlier.

    A nested scope can only shorten the budget: work done on behalf of a request must never
    outlive it. ``0``/``None`` keeps the enclosing deadline (if any). Yields the deadline in force.
    Tasks started inside the block inherit it (context variables are copied into new tasks).
    """
    outer = _deadline_ms.get()
    inner = epoch_ms or None
    effective = inner if outer is None else (outer if inner is None else min(outer, inner))
    token = _deadline_ms.set(effective)
    try:
        yield effective
    finally:
        _deadline_ms.reset(token)
