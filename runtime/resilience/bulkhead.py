"""A cap on concurrent calls to one dependency, so a slow dependency cannot take every task."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, ParamSpec, TypeVar, final

import anyio
import msgspec

from runtime.errors import DeadlineExceededError, UnavailableError
from runtime.metrics import registry
from runtime.resilience.deadline import Clock, remaining, wall_clock

__all__ = ["Bulkhead", "BulkheadConfig", "BulkheadFullError"]

P = ParamSpec("P")
T = TypeVar("T")

# What a refused caller is told to wait: the bulkhead holds calls in flight, which finish in about
# one call's time, so a short nominal pause is the honest answer.
_FULL_RETRY_AFTER_S: Final = 1.0

_in_flight: Final = registry.gauge("greenroom_bulkhead_in_flight", "Calls holding a bulkhead slot")
_rejected: Final = registry.counter(
    "greenroom_bulkhead_rejected_total", "Calls refused because a bulkhead was full"
)


class BulkheadFullError(UnavailableError):
    """Every slot was taken for longer than the caller may wait (HTTP 503 with Retry-After)."""


class BulkheadConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``max_wait_s`` is how long a caller may queue for a slot; ``0`` refuses at once when full."""

    max_concurrent: int = 16
    max_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")


@final
class Bulkhead:
    """At most ``max_concurrent`` calls at once; others wait up to ``max_wait_s`` then fail."""

    def __init__(
        self, name: str, config: BulkheadConfig | None = None, *, clock: Clock = wall_clock
    ) -> None:
        self.name = name
        self.config = config or BulkheadConfig()
        self._clock = clock
        # A semaphore rather than a CapacityLimiter: a limiter allows one token per task, and a
        # task may legitimately hold two slots (a nested call through the same dependency).
        self._slots = anyio.Semaphore(self.config.max_concurrent)
        self._in_flight = 0
        _in_flight.set(0, name=name)

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block.

        The wait is the smaller of ``max_wait_s`` and the time left before the current deadline.

        Raises:
            BulkheadFullError: no slot freed up within ``max_wait_s``.
            DeadlineExceededError: the deadline passed (or would have) while waiting.
        """
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait_for_slot()
        self._in_flight += 1
        _in_flight.set(self._in_flight, name=self.name)
        try:
            yield
        finally:
            self._in_flight -= 1
            _in_flight.set(self._in_flight, name=self.name)
            self._slots.release()

    async def _wait_for_slot(self) -> None:
        wait = self.config.max_wait_s
        left = remaining(clock=self._clock)
        deadline_bound = left is not None and left < wait
        if left is not None:
            wait = max(min(wait, left), 0.0)
        if wait > 0:
            with anyio.move_on_after(wait):
                await self._slots.acquire()
                return
        _rejected.inc(name=self.name)
        if deadline_bound:
            raise DeadlineExceededError(f"deadline passed waiting for bulkhead {self.name!r}")
        raise BulkheadFullError(
            f"bulkhead {self.name!r} is full ({self.config.max_concurrent} calls in flight)",
            retry_after_s=_FULL_RETRY_AFTER_S,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` while holding a slot (see :meth:`slot` for errors)."""
        async with self.slot():
            return await fn(*args, **kwargs)
