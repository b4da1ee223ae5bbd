"""A time limit per call, never longer than what is left of the current deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, final

import anyio

from runtime.errors import DeadlineExceededError, UnavailableError
from runtime.resilience.deadline import Clock, remaining, wall_clock

__all__ = ["CallTimeout", "CallTimeoutError"]

P = ParamSpec("P")
T = TypeVar("T")


class CallTimeoutError(UnavailableError):
    """The dependency did not answer within the call's time limit.

    Transient by default: a resilience policy retries it (``PolicyConfig.retry_on_timeout``) and its
    breaker counts it as a failure. Crosses the bus as ``unavailable`` (503).
    """


@final
class CallTimeout:
    """Cancels a call running longer than ``timeout_s`` (``None``: only the deadline limits it)."""

    def __init__(self, name: str, timeout_s: float | None, *, clock: Clock = wall_clock) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive or None")
        self.name = name
        self.timeout_s = timeout_s
        self._clock = clock

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` within the limit and return its result.

        Raises:
            CallTimeoutError: ``timeout_s`` elapsed first; the call was cancelled.
            DeadlineExceededError: the current deadline passed first (or already had); the call was
                cancelled (or never started).
        """
        limit = self.timeout_s
        left = remaining(clock=self._clock)
        deadline_bound = left is not None and (limit is None or left < limit)
        if left is not None:
            if left <= 0:
                raise DeadlineExceededError(f"deadline passed before calling {self.name!r}")
            limit = left if limit is None else min(limit, left)
        if limit is None:
            return await fn(*args, **kwargs)
        # move_on_after rather than fail_after: a TimeoutError raised by the callee itself (asyncpg
        # and redis raise their own) must stay the callee's, not be taken for ours.
        with anyio.move_on_after(limit):
            return await fn(*args, **kwargs)
        if deadline_bound:
            raise DeadlineExceededError(f"deadline passed while calling {self.name!r}")
        raise CallTimeoutError(f"{self.name!r} did not answer within {limit:.3f}s")
