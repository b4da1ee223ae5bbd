"""Deadline, retry, bulkhead, timeout and their composition in ResiliencePolicy.

Retries run on a fake clock whose sleep advances time, so the tests count attempts and check
where each one started relative to the deadline, never how long anything took.
"""

from __future__ import annotations

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import DeadlineExceededError, NotFoundError, UnavailableError
from runtime.metrics import registry
from runtime.resilience import (
    BreakerConfig,
    BreakerState,
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    CallTimeout,
    CallTimeoutError,
    CircuitOpenError,
    PolicyConfig,
    ResiliencePolicy,
    Retry,
    RetryConfig,
    current_deadline,
    deadline_after,
    deadline_scope,
    remaining,
)

EPOCH = 1_800_000_000.0


class FakeTime:
    """Epoch seconds that move only when someone sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = EPOCH
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


class Flaky:
    """Fails with ``ConnectionError`` ``failures`` times, then answers; records when it started."""

    def __init__(self, time: FakeTime, failures: int = 1_000, cost_s: float = 0.0) -> None:
        self.time, self.failures, self.cost_s = time, failures, cost_s
        self.started: list[float] = []

    async def __call__(self) -> str:
        self.started.append(self.time.now)
        self.time.now += self.cost_s
        if len(self.started) <= self.failures:
            raise ConnectionError(f"attempt {len(self.started)}")
        return "ok"


def make_retry(time: FakeTime, attempts: int = 5, initial: float = 0.1) -> Retry:
    config = RetryConfig(max_attempts=attempts, backoff_initial_s=initial, backoff_max_s=1.0)
    return Retry("dep", config, is_connection_error, clock=time.clock, sleep=time.sleep)


# -- deadline ------------------------------------------------------------------------------------


async def test_deadline_scopes_nest_to_the_earliest_and_reach_child_tasks() -> None:
    assert current_deadline() is None
    assert remaining() is None
    seen: list[int | None] = []
    with deadline_scope(2_000):
        with deadline_scope(5_000):  # a nested scope cannot extend the budget
            assert current_deadline() == 2_000
        with deadline_scope(1_000), deadline_scope(0):  # 0 means "no deadline of my own"
            seen.append(current_deadline())

            async def child() -> None:
                seen.append(current_deadline())

            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
        assert current_deadline() == 2_000
    assert current_deadline() is None
    assert seen == [1_000, 1_000]


def test_remaining_counts_down_on_the_given_clock() -> None:
    time = FakeTime()
    with deadline_scope(deadline_after(2.0, clock=time.clock)):
        assert remaining(clock=time.clock) == pytest.approx(2.0, abs=0.001)
        time.now += 3
        assert remaining(clock=time.clock) == pytest.approx(-1.0, abs=0.001)


# -- retry ---------------------------------------------------------------------------------------


async def test_retry_returns_once_a_transient_error_clears() -> None:
    time = FakeTime()
    flaky = Flaky(time, failures=2)
    assert await make_retry(time).call(flaky) == "ok"
    assert len(flaky.started) == 3
    assert len(time.sleeps) == 2


async def test_retry_stops_at_once_on_a_permanent_error() -> None:
    time = FakeTime()
    calls = 0

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError("no such order")

    with pytest.raises(NotFoundError):
        await make_retry(time).call(missing)
    assert calls == 1
    assert time.sleeps == []


async def test_retry_is_bounded_and_raises_the_last_error() -> None:
    time = FakeTime()
    flaky = Flaky(time)
    with pytest.raises(ConnectionError, match="attempt 4"):
        await make_retry(time, attempts=4).call(flaky)
    assert len(flaky.started) == 4


async def test_retry_does_not_start_after_the_deadline() -> None:
    time = FakeTime()
    flaky = Flaky(time)
    with deadline_scope(int(EPOCH * 1000) - 1), pytest.raises(DeadlineExceededError):
        await make_retry(time).call(flaky)
    assert flaky.started == []


async def test_retry_reports_a_deadline_that_passed_during_an_attempt() -> None:
    time = FakeTime()
    flaky = Flaky(time, cost_s=2.0)
    with (
        deadline_scope(deadline_after(1.0, clock=time.clock)),
        pytest.raises(DeadlineExceededError) as caught,
    ):
        await make_retry(time).call(flaky)
    assert len(flaky.started) == 1
    assert isinstance(caught.value.__cause__, ConnectionError)


@settings(max_examples=200, deadline=None)
@given(
    budget_s=st.floats(0.01, 5.0),
    cost_s=st.floats(0.0, 0.5),
    attempts=st.integers(1, 20),
    initial=st.floats(0.01, 1.0),
)
async def test_retry_never_sleeps_past_the_deadline(
    budget_s: float, cost_s: float, attempts: int, initial: float
) -> None:
    time = FakeTime()
    flaky = Flaky(time, cost_s=cost_s)
    deadline_s = deadline_after(budget_s, clock=time.clock) / 1000
    with (
        deadline_scope(int(deadline_s * 1000)),
        pytest.raises((ConnectionError, DeadlineExceededError)),
    ):
        await make_retry(time, attempts=attempts, initial=initial).call(flaky)
    assert 1 <= len(flaky.started) <= attempts
    # Attempts start where sleeps end, so no sleep ran into the deadline either.
    assert all(start < deadline_s for start in flaky.started)


# -- bulkhead ------------------------------------------------------------------------------------


async def test_bulkhead_rejects_beyond_capacity_then_admits_again() -> None:
    bulkhead = Bulkhead("bh-cap", BulkheadConfig(max_concurrent=2))
    release = anyio.Event()
    inside = 0

    async def hold() -> None:
        nonlocal inside
        inside += 1
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(bulkhead.call, hold)
        tg.start_soon(bulkhead.call, hold)
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.in_flight == 2
        with pytest.raises(BulkheadFullError) as caught:
            await bulkhead.call(hold)
        assert isinstance(caught.value, UnavailableError)
        assert caught.value.retry_after_s > 0
        assert inside == 2
        release.set()
    assert bulkhead.in_flight == 0
    await bulkhead.call(hold)
    assert registry.counter("greenroom_bulkhead_rejected_total").value(name="bh-cap") == 1


async def test_bulkhead_waiter_gets_a_freed_slot() -> None:
    bulkhead = Bulkhead("bh-wait", BulkheadConfig(max_concurrent=1, max_wait_s=30.0))
    release = anyio.Event()
    results: list[str] = []

    async def first() -> None:
        async with bulkhead.slot():
            await release.wait()

    async def second() -> None:
        async with bulkhead.slot():
            results.append("second ran")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        release.set()
    assert results == ["second ran"]


async def test_bulkhead_wait_is_cut_short_by_the_deadline() -> None:
    bulkhead = Bulkhead("bh-deadline", BulkheadConfig(max_concurrent=1, max_wait_s=30.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(bulkhead.call, anyio.sleep_forever)
        await anyio.wait_all_tasks_blocked()
        with deadline_scope(deadline_after(0.05)), pytest.raises(DeadlineExceededError):
            await bulkhead.call(anyio.sleep, 0)
        tg.cancel_scope.cancel()


# -- timeout -------------------------------------------------------------------------------------


async def test_timeout_cancels_a_hung_call() -> None:
    with pytest.raises(CallTimeoutError):
        await CallTimeout("t", 0.05).call(anyio.sleep_forever)
    assert await CallTimeout("t", 5.0).call(anyio.to_thread.run_sync, lambda: 42) == 42


async def test_timeout_is_capped_by_the_deadline() -> None:
    with deadline_scope(deadline_after(0.05)), pytest.raises(DeadlineExceededError):
        await CallTimeout("t", 30.0).call(anyio.sleep_forever)


async def test_timeout_leaves_the_callees_own_timeout_error_alone() -> None:
    async def client_gave_up() -> None:
        raise TimeoutError("the client's own timeout")

    with pytest.raises(TimeoutError, match="client's own"):
        await CallTimeout("t", 5.0).call(client_gave_up)


# -- policy --------------------------------------------------------------------------------------


def make_policy(time: FakeTime, name: str, **config: object) -> ResiliencePolicy:
    defaults: dict[str, object] = {
        "timeout_s": None,
        "retry": RetryConfig(max_attempts=10, backoff_initial_s=0.01, backoff_max_s=0.05),
        "breaker": BreakerConfig(window_size=2, minimum_calls=2, open_for_s=5.0, half_open_calls=1),
    }
    return ResiliencePolicy(
        name,
        msgspec.convert({**defaults, **config}, PolicyConfig, from_attributes=True),
        transient=is_connection_error,
        clock=time.clock,
        monotonic=time.clock,
        sleep=time.sleep,
    )


async def test_an_open_breaker_makes_retry_fail_fast() -> None:
    time = FakeTime()
    policy = make_policy(time, "pol-open")
    flaky = Flaky(time)
    with pytest.raises(CircuitOpenError) as caught:
        await policy.call(flaky)
    # Two failures open the breaker; the third attempt is refused and not retried.
    assert len(flaky.started) == 2
    assert policy.breaker.state is BreakerState.OPEN
    assert 0 < caught.value.retry_after_s <= 5.0
    with pytest.raises(CircuitOpenError):
        await policy.call(flaky)
    assert len(flaky.started) == 2

    time.now += 5.0
    flaky.failures = 0  # the dependency is back: the half-open trial succeeds
    assert await policy.call(flaky) == "ok"
    assert policy.breaker.state is BreakerState.CLOSED
    calls = registry.counter("greenroom_dependency_calls_total")
    assert calls.value(dependency="pol-open", outcome="rejected") == 2
    assert calls.value(dependency="pol-open", outcome="ok") == 1


async def test_permanent_errors_neither_retry_nor_trip_the_breaker() -> None:
    time = FakeTime()
    policy = make_policy(time, "pol-perm")
    calls = 0

    @policy.decorate
    async def lookup(order_id: str) -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError(f"no order {order_id}")

    assert lookup.__name__ == "lookup"
    for _ in range(5):
        with pytest.raises(NotFoundError):
            await lookup("o-1")
    assert calls == 5
    assert policy.breaker.state is BreakerState.CLOSED
    assert policy.snapshot().breaker.failures == 0


async def test_timeouts_are_retried_and_counted_as_failures() -> None:
    policy = ResiliencePolicy(
        "pol-timeout",
        PolicyConfig(
            timeout_s=0.02,
            retry=RetryConfig(max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.001),
            breaker=BreakerConfig(window_size=5, minimum_calls=5),
        ),
    )
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()

    with pytest.raises(CallTimeoutError):
        await policy.call(hang)
    assert calls == 2
    assert policy.snapshot().breaker.failures == 2


async def test_a_full_bulkhead_is_not_retried() -> None:
    time = FakeTime()
    policy = make_policy(time, "pol-bulkhead", bulkhead=BulkheadConfig(max_concurrent=1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(policy.call, anyio.sleep_forever)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError):
            await policy.call(anyio.sleep, 0)
        assert time.sleeps == []
        assert policy.snapshot().bulkhead_in_flight == 1
        tg.cancel_scope.cancel()


def test_policy_config_decodes_with_safe_defaults_and_validates() -> None:
    config = msgspec.json.decode(
        b'{"timeout_s": 1.5, "breaker": {"minimum_calls": 4}}', type=PolicyConfig
    )
    assert config.timeout_s == 1.5
    assert config.breaker.minimum_calls == 4
    assert config.retry.max_attempts >= 1
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"retry": {"max_attempts": 0}}', type=PolicyConfig)
