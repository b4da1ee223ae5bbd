"""Pure supervision policies: restart types, strategies, restart intensity and backoff."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.supervision import (
    Backoff,
    ChildSpec,
    Restart,
    RestartIntensity,
    Strategy,
)


async def _noop(**_: object) -> None:
    return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- restart types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "normal", "abnormal"),
    [
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, True),
        (Restart.TEMPORARY, False, False),
    ],
)
def test_restart_type_table(restart: Restart, normal: bool, abnormal: bool) -> None:
    assert restart.restarts_after(abnormal=False) is normal
    assert restart.restarts_after(abnormal=True) is abnormal


def test_child_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="non-empty id"):
        ChildSpec(id="", start=_noop)
    with pytest.raises(ValueError, match="shutdown_s"):
        ChildSpec(id="a", start=_noop, shutdown_s=-1)
    assert ChildSpec(id="a", start=_noop, shutdown_s=math.inf).shutdown_s == math.inf


# -- strategies --------------------------------------------------------------------------------

ORDER = ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        (Strategy.ONE_FOR_ONE, "b", ("b",)),
        (Strategy.ONE_FOR_ALL, "b", ORDER),
        (Strategy.REST_FOR_ONE, "b", ("b", "c", "d")),
        (Strategy.REST_FOR_ONE, "a", ORDER),
        (Strategy.REST_FOR_ONE, "d", ("d",)),
    ],
)
def test_strategy_affected_children(
    strategy: Strategy, failed: str, expected: tuple[str, ...]
) -> None:
    assert strategy.affected(ORDER, failed) == expected


def test_strategy_rejects_unknown_child() -> None:
    with pytest.raises(ValueError):
        Strategy.ONE_FOR_ONE.affected(ORDER, "zz")


# -- restart intensity -------------------------------------------------------------------------


def test_intensity_allows_max_restarts_within_period_then_refuses() -> None:
    clock = FakeClock()
    window = RestartIntensity(max_restarts=2, period_s=10).window(clock)
    assert window.record()
    clock.now = 1
    assert window.record()
    clock.now = 2
    assert not window.record()
    assert window.count() == 3


def test_intensity_window_slides() -> None:
    clock = FakeClock()
    window = RestartIntensity(max_restarts=2, period_s=10).window(clock)
    assert window.record()
    clock.now = 5
    assert window.record()
    clock.now = 10  # the restart at t=0 is exactly one period old: it no longer counts
    assert window.record()
    assert window.count() == 2
    clock.now = 100
    assert window.count() == 0
    assert window.record()


def test_zero_max_restarts_gives_up_at_the_first_restart() -> None:
    window = RestartIntensity(max_restarts=0, period_s=1).window(FakeClock())
    assert not window.record()


def test_windows_of_one_intensity_are_independent() -> None:
    intensity = RestartIntensity(max_restarts=1, period_s=10)
    first, second = intensity.window(FakeClock()), intensity.window(FakeClock())
    assert first.record()
    assert not first.record()
    assert second.record()


@pytest.mark.parametrize(("max_restarts", "period_s"), [(-1, 1.0), (1, 0.0), (1, math.nan)])
def test_intensity_rejects_bad_values(max_restarts: int, period_s: float) -> None:
    with pytest.raises(ValueError):
        RestartIntensity(max_restarts=max_restarts, period_s=period_s)


# -- backoff -----------------------------------------------------------------------------------


@given(
    base=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    extra=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    n=st.integers(min_value=0, max_value=5000),
    draw=st.floats(min_value=0, max_value=1, allow_nan=False),
)
def test_backoff_delay_is_within_full_jitter_bounds(
    base: float, extra: float, n: int, draw: float
) -> None:
    cap = base + extra
    backoff = Backoff(base_s=base, cap_s=cap, rand=lambda: draw)
    delay = backoff.delay(n)
    # Exact arithmetic for the bound, so the test does not share the implementation's floats.
    bound = min(Fraction(cap), Fraction(base) * 2**n)
    assert 0 <= delay <= bound
    assert backoff.ceiling(n) == bound


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=1, cap_s=8, rand=lambda: 0.5)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]


def test_backoff_jitter_spans_the_whole_range() -> None:
    assert Backoff(base_s=1, cap_s=8, rand=lambda: 0.0).delay(3) == 0.0
    assert Backoff(base_s=1, cap_s=8, rand=lambda: 0.999).delay(3) == pytest.approx(7.992)


@pytest.mark.parametrize(("base", "cap"), [(-1.0, 1.0), (2.0, 1.0), (math.nan, 1.0)])
def test_backoff_rejects_bad_values(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=base, cap_s=cap)


def test_backoff_rejects_negative_restart_number() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1)
