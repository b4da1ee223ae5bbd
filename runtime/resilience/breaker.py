"""A circuit breaker: stop calling a dependency that is failing or slow, then probe it carefully.

States: **closed** (calls pass; outcomes go into a sliding window), **open** (calls fail fast
with :class:`CircuitOpenError` for ``open_for_s``), **half-open** (at most ``half_open_calls`` trial
calls are admitted; when that many have succeeded the breaker closes with an empty window, and
the first failed or slow trial opens it again).

The window is either the last ``window_size`` calls (``window="count"``) or the calls of the last
``window_s`` seconds (``window="time"``, kept in ``window_buckets`` buckets, so a call leaves the
window between ``window_s * (1 - 1/window_buckets)`` and ``window_s`` after it was made). Once it
holds ``minimum_calls`` calls, the breaker opens when the failure rate or the slow-call rate reaches
its threshold. Which errors are failures is the dependency's business: its classifier decides (a
"not found" is a successful call as far as the dependency's health goes).

There is no timer task: OPEN becomes HALF_OPEN when the breaker is next looked at after
``open_for_s``. Everything runs on one event loop and no method awaits while it changes state, so
no lock is needed.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, ParamSpec, Protocol, TypeVar, final

import msgspec

from runtime.errors import UnavailableError
from runtime.logging import get_logger
from runtime.metrics import registry

__all__ = [
    "BreakerConfig",
    "BreakerPermit",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("runtime.resilience.breaker")
_state_gauge: Final = registry.gauge(
    "greenroom_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open"
)
_transitions: Final = registry.counter(
    "greenroom_breaker_transitions_total", "Circuit breaker state changes"
)
_rejected: Final = registry.counter(
    "greenroom_breaker_rejected_total", "Calls refused without calling because a breaker was open"
)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Ordered by severity, so a dashboard can show "worst state" with max().
_GAUGE_VALUE: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

# What a caller refused in HALF_OPEN (trials already under way) is told to wait: the trials decide
# soon, and a long Retry-After would keep clients away after the dependency is back.
_HALF_OPEN_RETRY_AFTER_S: Final = 1.0


class CircuitOpenError(UnavailableError):
    """The breaker refused the call without making it; ``retry_after_s`` says when to try again.

    An :class:`~runtime.errors.UnavailableError`, so it crosses the bus as ``unavailable`` and the
    edge answers 503 with ``Retry-After``.
    """


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker trips and how it recovers. Rates are fractions in ``(0, 1]``."""

    window: Literal["count", "time"] = "count"
    window_size: int = 20
    window_s: float = 30.0
    window_buckets: int = 10
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_s: float = 5.0
    slow_call_rate_threshold: float = 1.0
    open_for_s: float = 30.0
    half_open_calls: int = 3

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.window_buckets < 1 or self.half_open_calls < 1:
            raise ValueError("window_size, window_buckets and half_open_calls must be >= 1")
        if self.minimum_calls < 1:
            raise ValueError("minimum_calls must be >= 1")
        if self.window == "count" and self.minimum_calls > self.window_size:
            raise ValueError("minimum_calls > window_size: the breaker could never trip")
        for rate in (self.failure_rate_threshold, self.slow_call_rate_threshold):
            if not 0 < rate <= 1:
                raise ValueError("rate thresholds must be in (0, 1]")
        if self.window_s <= 0 or self.slow_call_s <= 0 or self.open_for_s < 0:
            raise ValueError("window_s and slow_call_s must be positive, open_for_s not negative")


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the status page shows for one breaker."""

    name: str
    state: str
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    retry_after_s: float
    half_open_in_flight: int


@final
@dataclass(frozen=True, slots=True)
class BreakerPermit:
    """Leave to make one call; hand it back with :meth:`CircuitBreaker.complete`.

    ``generation`` ties the outcome to the state that admitted the call, so a call that started
    before the breaker changed state cannot sway the new state.
    """

    generation: int
    started_at: float
    trial: bool


class _Window(Protocol):
    def record(self, *, failed: bool, slow: bool, now: float) -> None: ...
    def totals(self, now: float) -> tuple[int, int, int]: ...
    def clear(self) -> None: ...


@final
class _CountWindow:
    """The last ``size`` outcomes."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[tuple[bool, bool]] = deque(maxlen=size)
        self._failures = 0
        self._slow = 0

    def record(self, *, failed: bool, slow: bool, now: float) -> None:
        if len(self._outcomes) == self._outcomes.maxlen:
            old_failed, old_slow = self._outcomes[0]
            self._failures -= old_failed
            self._slow -= old_slow
        self._outcomes.append((failed, slow))
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        return len(self._outcomes), self._failures, self._slow

    def clear(self) -> None:
        self._outcomes.clear()
        self._failures = self._slow = 0


@final
class _TimeWindow:
    """Outcomes of the last ``span_s`` seconds, summed per bucket of ``span_s / buckets``."""

    def __init__(self, span_s: float, buckets: int) -> None:
        self._width = span_s / buckets
        self._n = buckets
        # Per bucket: the tick (bucket number since the epoch of the clock) it holds, then counts.
        self._ticks = [-1] * buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets

    def record(self, *, failed: bool, slow: bool, now: float) -> None:
        tick = int(now // self._width)
        i = tick % self._n
        if self._ticks[i] != tick:
            self._ticks[i] = tick
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._calls[i] += 1
        self._failures[i] += failed
        self._slow[i] += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        tick = int(now // self._width)
        live = [i for i in range(self._n) if 0 <= tick - self._ticks[i] < self._n]
        return (
            sum(self._calls[i] for i in live),
            sum(self._failures[i] for i in live),
            sum(self._slow[i] for i in live),
        )

    def clear(self) -> None:
        self._ticks = [-1] * self._n


def _count_all_as_failures(exc: BaseException) -> bool:
    return True


@final
class CircuitBreaker:
    """One dependency's breaker. See the module docstring for the state machine."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        is_failure: Callable[[BaseException], bool] = _count_all_as_failures,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``is_failure`` says which errors count against the dependency; ``clock`` is monotonic
        seconds (injectable for tests)."""
        self.name = name
        self.config = config or BreakerConfig()
        self._is_failure = is_failure
        self._clock = clock
        self._window: _Window = (
            _CountWindow(self.config.window_size)
            if self.config.window == "count"
            else _TimeWindow(self.config.window_s, self.config.window_buckets)
        )
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._open_until = 0.0
        self._trials_in_flight = 0
        self._trial_successes = 0
        _state_gauge.set(_GAUGE_VALUE[self._state], name=name)

    # -- observation -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker whose time is up becomes HALF_OPEN on reading)."""
        self._advance(self._clock())
        return self._state

    @property
    def half_open_in_flight(self) -> int:
        """Trial calls admitted in HALF_OPEN and not yet completed."""
        return self._trials_in_flight

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state and window totals, for the status page."""
        now = self._clock()
        self._advance(now)
        calls, failures, slow = self._window.totals(now)
        return BreakerSnapshot(
            name=self.name,
            state=self._state.value,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            retry_after_s=self._retry_after(now),
            half_open_in_flight=self._trials_in_flight,
        )

    # -- the protocol: admit, then complete ------------------------------------------------------

    def admit(self) -> BreakerPermit:
        """Leave to make one call now.

        Raises:
            CircuitOpenError: the breaker is OPEN, or HALF_OPEN with its trial calls taken.
        """
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return BreakerPermit(generation=self._generation, started_at=now, trial=False)
        if (
            self._state is BreakerState.HALF_OPEN
            and self._trials_in_flight + self._trial_successes < self.config.half_open_calls
        ):
            self._trials_in_flight += 1
            return BreakerPermit(generation=self._generation, started_at=now, trial=True)
        _rejected.inc(name=self.name)
        retry_after = self._retry_after(now)
        raise CircuitOpenError(
            f"circuit {self.name!r} is {self._state.value}; retry after {retry_after:.1f}s",
            retry_after_s=retry_after,
        )

    def complete(self, permit: BreakerPermit, error: BaseException | None = None) -> None:
        """Record how the call admitted by ``permit`` ended: ``error`` is ``None`` on success.

        An error the classifier does not count as a failure is a success. A cancellation (any
        ``BaseException`` that is not an ``Exception``) frees a trial slot but records nothing:
        it says nothing about the dependency.
        """
        now = self._clock()
        if permit.generation != self._generation:
            return
        if error is not None and not isinstance(error, Exception):
            if permit.trial:
                self._trials_in_flight -= 1
            return
        failed = error is not None and self._is_failure(error)
        slow = now - permit.started_at >= self.config.slow_call_s
        if permit.trial:
            self._trials_in_flight -= 1
            if failed or slow:
                reason = "trial failed" if failed else "trial slow"
                self._transition(BreakerState.OPEN, now, reason=reason)
            else:
                self._trial_successes += 1
                if self._trial_successes >= self.config.half_open_calls:
                    self._transition(BreakerState.CLOSED, now, reason="trials succeeded")
            return
        self._window.record(failed=failed, slow=slow, now=now)
        calls, failures, slow_calls = self._window.totals(now)
        if calls < self.config.minimum_calls:
            return
        if failures / calls >= self.config.failure_rate_threshold:
            self._transition(BreakerState.OPEN, now, reason="failure rate", calls=calls)
        elif slow_calls / calls >= self.config.slow_call_rate_threshold:
            self._transition(BreakerState.OPEN, now, reason="slow-call rate", calls=calls)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` if the breaker admits it, recording the outcome.

        Raises:
            CircuitOpenError: refused without calling ``fn``.
            BaseException: whatever ``fn`` raised, unchanged.
        """
        permit = self.admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.complete(permit, exc)
            raise
        self.complete(permit)
        return result

    # -- internals -------------------------------------------------------------------------------

    def _retry_after(self, now: float) -> float:
        if self._state is BreakerState.OPEN:
            return max(self._open_until - now, 0.0)
        if self._state is BreakerState.HALF_OPEN:
            return min(_HALF_OPEN_RETRY_AFTER_S, self.config.open_for_s)
        return 0.0

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, now, reason="open period over")

    def _transition(self, to: BreakerState, now: float, *, reason: str, calls: int = 0) -> None:
        from_state = self._state
        self._state = to
        # A new generation: outcomes of calls admitted under the old state are ignored.
        self._generation += 1
        self._trials_in_flight = 0
        self._trial_successes = 0
        if to is BreakerState.OPEN:
            self._open_until = now + self.config.open_for_s
        elif to is BreakerState.CLOSED:
            self._window.clear()
        _state_gauge.set(_GAUGE_VALUE[to], name=self.name)
        _transitions.inc(name=self.name, from_state=from_state.value, to_state=to.value)
        log = _log.warning if to is BreakerState.OPEN else _log.info
        log(
            "breaker.state_changed",
            name=self.name,
            from_state=from_state.value,
            to_state=to.value,
            reason=reason,
            window_calls=calls,
        )
