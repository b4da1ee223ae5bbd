"""The circuit breaker's state machine: a hypothesis state machine against its invariants, and
examples for the time-based window and the async ``call`` wrapper."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.errors import NotFoundError, UnavailableError
from runtime.metrics import registry
from runtime.resilience import (
    BreakerConfig,
    BreakerPermit,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

ALLOWED = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}

CONFIG = BreakerConfig(
    window="count",
    window_size=5,
    minimum_calls=3,
    failure_rate_threshold=0.5,
    slow_call_s=1.0,
    slow_call_rate_threshold=0.6,
    open_for_s=10.0,
    half_open_calls=2,
)


def counts_as_failure(exc: BaseException) -> bool:
    return not isinstance(exc, NotFoundError)


@dataclass
class Call:
    permit: BreakerPermit
    period: int
    admitted_at: float


class BreakerMachine(RuleBasedStateMachine):
    """Random interleavings of admissions, completions (ok, failure, not-found, cancelled, slow)
    and the passage of time; after each step the breaker must agree with the rules."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.breaker = CircuitBreaker(
            "machine", CONFIG, is_failure=counts_as_failure, clock=lambda: self.now
        )
        self.calls: list[Call] = []
        # Bookkeeping of the current period (the time between two state changes).
        self.state = CLOSED
        self.period = 0
        self.window: deque[tuple[bool, bool]] = deque(maxlen=CONFIG.window_size)
        self.opened_at = 0.0
        self.trial_successes = 0

    def _observe(self) -> BreakerState:
        state = self.breaker.state
        if state is not self.state:
            assert (self.state, state) in ALLOWED, f"{self.state} -> {state}"
            if state is HALF_OPEN:
                assert self.now >= self.opened_at + CONFIG.open_for_s
            if state is OPEN:
                self.opened_at = self.now
            self.state, self.period = state, self.period + 1
            self.window.clear()
            self.trial_successes = 0
        return state

    @rule()
    def start_call(self) -> None:
        before = self._observe()
        try:
            permit = self.breaker.admit()
        except CircuitOpenError as exc:
            self._check_rejection(before, exc)
            return
        assert before is not OPEN, "an open breaker admitted a call"
        assert permit.trial == (before is HALF_OPEN)
        self.calls.append(Call(permit, self.period, self.now))

    def _check_rejection(self, before: BreakerState, exc: CircuitOpenError) -> None:
        assert isinstance(exc, UnavailableError)
        assert before is not CLOSED
        if before is OPEN:
            assert self.now < self.opened_at + CONFIG.open_for_s
            assert 0 < exc.retry_after_s <= CONFIG.open_for_s + 1e-9
        else:
            trials = sum(c.permit.trial and c.period == self.period for c in self.calls)
            assert trials + self.trial_successes >= CONFIG.half_open_calls

    @precondition(lambda self: self.calls)
    @rule(
        pick=st.integers(0, 50),
        outcome=st.sampled_from(["ok", "failure", "not_found", "cancelled"]),
        took=st.sampled_from([0.0, 0.4, 1.5]),
    )
    def finish_call(self, pick: int, outcome: str, took: float) -> None:
        call = self.calls.pop(pick % len(self.calls))
        self.now += took
        before = self._observe()
        error: BaseException | None = {
            "ok": None,
            "failure": ConnectionError("down"),
            "not_found": NotFoundError("no such row"),
            "cancelled": KeyboardInterrupt(),  # any BaseException that is not an Exception
        }[outcome]
        # _observe() clears the period's bookkeeping on a state change: keep what came before.
        window = deque(self.window, maxlen=CONFIG.window_size)
        trial_successes = self.trial_successes
        self.breaker.complete(call.permit, error)
        after = self._observe()
        if call.period != self.period - (after is not before) or outcome == "cancelled":
            # A stale or cancelled call must not move the breaker.
            assert after is before
            return
        failed = outcome == "failure"
        slow = self.now - call.admitted_at >= CONFIG.slow_call_s
        if before is CLOSED:
            window.append((failed, slow))
            if after is before:
                self.window = window
            n = len(window)
            trips = n >= CONFIG.minimum_calls and (
                sum(f for f, _ in window) / n >= CONFIG.failure_rate_threshold
                or sum(s for _, s in window) / n >= CONFIG.slow_call_rate_threshold
            )
            assert (after is OPEN) == trips, (list(window), after)
        elif before is HALF_OPEN:
            if failed or slow:
                assert after is OPEN
            elif after is CLOSED:
                assert trial_successes + 1 == CONFIG.half_open_calls
            else:
                assert after is HALF_OPEN
                self.trial_successes += 1

    @rule(dt=st.sampled_from([0.5, 3.0, 10.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self._observe()

    @invariant()
    def half_open_trials_are_bounded(self) -> None:
        assert self.breaker.half_open_in_flight <= CONFIG.half_open_calls
        if self.breaker.state is HALF_OPEN:
            held = sum(c.permit.trial and c.period == self.period for c in self.calls)
            assert held == self.breaker.half_open_in_flight

    @invariant()
    def snapshot_agrees(self) -> None:
        snap = self.breaker.snapshot()
        assert snap.state == self.breaker.state.value
        assert snap.failures <= snap.calls <= CONFIG.window_size


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBreakerStateMachine = BreakerMachine.TestCase


def make(now: list[float], **overrides: object) -> CircuitBreaker:
    fields = {"minimum_calls": 2, "window_size": 4, "open_for_s": 5.0, "half_open_calls": 1}
    config = msgspec.convert({**fields, **overrides}, BreakerConfig)
    return CircuitBreaker(f"b-{uuid.uuid4().hex[:8]}", config, clock=lambda: now[0])


def fail(breaker: CircuitBreaker) -> None:
    breaker.complete(breaker.admit(), ConnectionError())


def test_time_window_forgets_old_calls() -> None:
    now = [0.0]
    breaker = make(now, window="time", window_s=10.0, window_buckets=10)
    fail(breaker)
    now[0] = 11.0  # the first failure has left the window
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.snapshot().calls == 1
    now[0] = 12.0
    fail(breaker)
    assert breaker.state is OPEN


def test_slow_successes_trip_the_breaker() -> None:
    now = [0.0]
    breaker = make(now, slow_call_s=1.0, slow_call_rate_threshold=1.0)
    for _ in range(2):
        permit = breaker.admit()
        now[0] += 2.0
        breaker.complete(permit)
    assert breaker.state is OPEN


def test_state_changes_are_counted_and_gauged() -> None:
    now = [0.0]
    breaker = make(now)
    transitions = registry.counter("greenroom_breaker_transitions_total")
    gauge = registry.gauge("greenroom_breaker_state")
    fail(breaker)
    fail(breaker)
    assert gauge.value(name=breaker.name) == 2
    now[0] = 5.0
    breaker.complete(breaker.admit())
    assert breaker.state is CLOSED
    assert gauge.value(name=breaker.name) == 0
    for from_state, to_state in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]:
        labels = {"name": breaker.name, "from_state": from_state, "to_state": to_state}
        assert transitions.value(**labels) == 1


async def test_open_breaker_rejects_without_calling() -> None:
    now = [0.0]
    breaker = make(now)
    called = 0

    async def dependency() -> str:
        nonlocal called
        called += 1
        raise ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(dependency)
    now[0] = 2.0
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(dependency)
    assert called == 2
    assert caught.value.retry_after_s == pytest.approx(3.0)
    assert caught.value.to_reply().kind == "unavailable"


def test_config_rejects_a_breaker_that_could_never_trip() -> None:
    with pytest.raises(ValueError, match="minimum_calls"):
        BreakerConfig(window_size=5, minimum_calls=6)
    with pytest.raises(ValueError, match="rate"):
        BreakerConfig(failure_rate_threshold=0.0)
