"""Bounded retries of transient failures, with full-jitter backoff, never past the deadline.

Built on tenacity's :class:`~tenacity.asyncio.AsyncRetrying`: the wait before attempt ``n + 1`` is
uniform in ``[0, min(backoff_max_s, backoff_initial_s * 2**(n - 1))]`` ("full jitter"), so callers
that failed together do not retry together. Only errors the dependency's classifier calls transient
are retried; a permanent error (a constraint violation, a 404) is raised at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar, final

import anyio
import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from runtime.errors import DeadlineExceededError
from runtime.logging import get_logger
from runtime.metrics import registry
from runtime.resilience.deadline import Clock, raise_if_expired, remaining, wall_clock

__all__ = ["Classifier", "Retry", "RetryConfig", "Sleep"]

P = ParamSpec("P")
T = TypeVar("T")

Classifier = Callable[[BaseException], bool]
"""Answers one question about an error for one dependency (is it transient? a failure?)."""

Sleep = Callable[[float], Awaitable[None]]

_log = get_logger("runtime.resilience.retry")
_attempts: Final = registry.counter(
    "greenroom_retry_attempts_total", "Attempts made through a retry policy, first tries included"
)
_given_up: Final = registry.counter(
    "greenroom_retry_given_up_total", "Calls whose retries stopped on a transient error, by reason"
)


@final
class _StopAtDeadline(stop_base):
    """Stops when the deadline has passed (``expired``) or the next wait would reach it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.expired = False

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = remaining(clock=self._clock)
        if left is None:
            return False
        if left <= 0:
            self.expired = True
            return True
        return retry_state.upcoming_sleep >= left


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how patiently to retry; the defaults suit a network round trip.

    ``max_attempts`` counts the first try, so ``1`` disables retrying; it is always a bound.
    """

    max_attempts: int = 3
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff durations must not be negative")


@final
class Retry:
    """Retries a call on transient errors, within ``max_attempts`` and the current deadline."""

    def __init__(
        self,
        name: str,
        config: RetryConfig,
        transient: Classifier,
        *,
        clock: Clock = wall_clock,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.name = name
        self.config = config
        self._transient = transient
        self._clock = clock
        self._sleep = sleep

    def _is_transient(self, exc: BaseException) -> bool:
        # Retrying cannot help once the caller's budget is spent, whatever the classifier says.
        return not isinstance(exc, DeadlineExceededError) and self._transient(exc)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying transient errors; return its first result.

        A wait that would end at or after the current deadline is not started.

        Raises:
            DeadlineExceededError: the deadline had passed before an attempt could start (chained
                from the last error, if there was one).
            Exception: the error of the last attempt, when it was not transient, when attempts
                ran out, or when the next wait would have crossed the deadline.
        """
        raise_if_expired(clock=self._clock)
        stop_at_deadline = _StopAtDeadline(self._clock)

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            _log.info(
                "retry.scheduled",
                name=self.name,
                attempt=state.attempt_number,
                wait_s=round(state.upcoming_sleep, 4),
                error=repr(error),
            )

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_any(stop_after_attempt(self.config.max_attempts), stop_at_deadline),
            wait=wait_random_exponential(
                multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s
            ),
            retry=retry_if_exception(self._is_transient),
            before_sleep=log_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    _attempts.inc(name=self.name)
                    return await fn(*args, **kwargs)
        except Exception as exc:
            if self._is_transient(exc):
                at_bound = attempts >= self.config.max_attempts and not stop_at_deadline.expired
                reason = "attempts" if at_bound else "deadline"
                _given_up.inc(name=self.name, reason=reason)
            if stop_at_deadline.expired:
                raise DeadlineExceededError(
                    f"{self.name}: deadline passed after {attempts} attempt(s)"
                ) from exc
            raise
        # AsyncRetrying either yields another attempt, returns through ``with attempt`` or raises.
        raise AssertionError("unreachable: tenacity ended without result or error")
