"""Supervisor behaviour: strategies, restart types, intensity and escalation, shutdown, decisions.

Children are :class:`Worker` probes the test crashes or finishes on command; the test waits for
decisions (never for time), and every wait is bounded so a bug fails fast instead of hanging.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import TaskStatus
from structlog.testing import capture_logs

from runtime.metrics import registry
from runtime.supervision import (
    NORMAL,
    Backoff,
    ChildSpec,
    Decision,
    DecisionKind,
    Restart,
    RestartIntensity,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
)

FAST = Backoff(base_s=0.001, cap_s=0.002)
LENIENT = RestartIntensity(max_restarts=100, period_s=60)
WAIT_S = 5.0  # a bound against hangs, not a timing assertion

S, E, R, X, A = (
    DecisionKind.START,
    DecisionKind.EXIT,
    DecisionKind.RESTART,
    DecisionKind.STOP,
    DecisionKind.ABANDON,
)


class Boom(RuntimeError):  # noqa: N818 - a test's stand-in crash, not a domain error
    pass


class Worker:
    """A child the test drives: ``crash()`` raises in it, ``finish()`` makes it return."""

    def __init__(self, child_id: str, restart: Restart = Restart.PERMANENT) -> None:
        self.id = child_id
        self.restart = restart
        self.starts = 0
        self.cancelled = 0
        self.fail_next_start = False
        self._exit = anyio.Event()
        self._crash = False

    def spec(self, shutdown_s: float = 1.0) -> ChildSpec:
        return ChildSpec(id=self.id, start=self, restart=self.restart, shutdown_s=shutdown_s)

    async def __call__(self, *, task_status: TaskStatus[None]) -> None:
        self.starts += 1
        self._exit, self._crash = anyio.Event(), False
        if self.fail_next_start:
            self.fail_next_start = False
            raise Boom(f"{self.id} failed to start")
        task_status.started()
        try:
            await self._exit.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        if self._crash:
            raise Boom(f"{self.id} crashed")

    def crash(self) -> None:
        self._crash = True
        self._exit.set()

    def finish(self) -> None:
        self._exit.set()


class Decisions:
    """Collects a supervisor's decisions and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[Decision] = []
        self._changed = anyio.Event()

    def __call__(self, decision: Decision) -> None:
        self.seen.append(decision)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: DecisionKind, child_id: str, count: int = 1) -> None:
        with anyio.fail_after(WAIT_S):
            while self.count(kind, child_id) < count:
                await self._changed.wait()

    def count(self, kind: DecisionKind, child_id: str) -> int:
        return sum(1 for d in self.seen if d.kind is kind and d.child_id == child_id)

    def since(self, index: int) -> list[tuple[DecisionKind, str]]:
        return [(d.kind, d.child_id) for d in self.seen[index:]]


def make(
    children: list[ChildSpec],
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: RestartIntensity = LENIENT,
    name: str = "",
) -> tuple[Supervisor, Decisions]:
    decisions = Decisions()
    supervisor = Supervisor(
        name or f"sup-{uuid.uuid4().hex[:8]}",
        children,
        strategy=strategy,
        intensity=intensity,
        backoff=FAST,
        on_decision=decisions,
    )
    return supervisor, decisions


@asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    """Run ``supervisor`` for the block's duration, started before and stopped after it."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(WAIT_S):
            await tg.start(supervisor.run)
        yield supervisor
        with anyio.fail_after(WAIT_S):
            await supervisor.stop()


# -- strategies --------------------------------------------------------------------------------


async def test_start_order_and_graceful_stop_in_reverse() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make([a.spec(), b.spec(), c.spec()])
    async with running(sup):
        assert sup.running == ("a", "b", "c")
        mark = len(seen.seen)
    assert seen.since(0)[:mark] == [(S, "a"), (S, "b"), (S, "c")]
    assert seen.since(mark) == [(X, "c"), (X, "b"), (X, "a")]
    assert (a.cancelled, b.cancelled, c.cancelled) == (1, 1, 1)
    assert len(sup.running) == 0  # a property: mypy would keep the narrowing above


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make([a.spec(), b.spec(), c.spec()], Strategy.ONE_FOR_ONE)
    async with running(sup):
        mark = len(seen.seen)
        b.crash()
        await seen.wait_for(S, "b", count=2)
        assert seen.since(mark) == [(E, "b"), (R, "b"), (S, "b")]
        assert (a.starts, b.starts, c.starts) == (1, 2, 1)
        assert (a.cancelled, c.cancelled) == (0, 0)
        assert sup.running == ("a", "b", "c")


async def test_one_for_all_restarts_every_child_stopping_in_reverse() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make([a.spec(), b.spec(), c.spec()], Strategy.ONE_FOR_ALL)
    async with running(sup):
        mark = len(seen.seen)
        b.crash()
        await seen.wait_for(S, "c", count=2)
        assert seen.since(mark) == [
            (E, "b"),
            (X, "c"),
            (X, "a"),
            (R, "a"),
            (R, "b"),
            (R, "c"),
            (S, "a"),
            (S, "b"),
            (S, "c"),
        ]
        assert (a.starts, b.starts, c.starts) == (2, 2, 2)
        assert (a.cancelled, c.cancelled) == (1, 1)


async def test_rest_for_one_restarts_the_crashed_child_and_later_siblings() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make([a.spec(), b.spec(), c.spec()], Strategy.REST_FOR_ONE)
    async with running(sup):
        mark = len(seen.seen)
        b.crash()
        await seen.wait_for(S, "c", count=2)
        assert seen.since(mark) == [(E, "b"), (X, "c"), (R, "b"), (R, "c"), (S, "b"), (S, "c")]
        assert (a.starts, b.starts, c.starts) == (1, 2, 2)
        assert (a.cancelled, c.cancelled) == (0, 1)


# -- restart types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "crash", "restarted"),
    [
        (Restart.PERMANENT, False, True),
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, False),
        (Restart.TRANSIENT, True, True),
        (Restart.TEMPORARY, False, False),
        (Restart.TEMPORARY, True, False),
    ],
)
async def test_restart_types(restart: Restart, crash: bool, restarted: bool) -> None:
    child, sibling = Worker("child", restart), Worker("sibling")
    sup, seen = make([child.spec(), sibling.spec()])
    async with running(sup):
        if crash:
            child.crash()
        else:
            child.finish()
        await seen.wait_for(E, "child")
        exit_decision = next(d for d in seen.seen if d.kind is E)
        assert (exit_decision.reason == NORMAL) is not crash
        if restarted:
            await seen.wait_for(S, "child", count=2)
            assert sup.running == ("child", "sibling")
        else:
            # Let the supervisor act on anything queued; a later crash of the sibling proves
            # the control loop moved on without restarting the child.
            sibling.crash()
            await seen.wait_for(S, "sibling", count=2)
            assert seen.count(R, "child") == 0
            assert sup.running == ("sibling",)
        assert child.starts == (2 if restarted else 1)
        assert sibling.cancelled == 0


async def test_a_temporary_child_is_forgotten_when_a_group_restart_stops_it() -> None:
    a, temp, c = Worker("a"), Worker("temp", Restart.TEMPORARY), Worker("c")
    sup, seen = make([a.spec(), temp.spec(), c.spec()], Strategy.ONE_FOR_ALL)
    async with running(sup):
        a.crash()
        await seen.wait_for(S, "c", count=2)
        assert sup.running == ("a", "c")
        assert temp.starts == 1
        assert seen.count(R, "temp") == 0


async def test_a_failed_start_is_restarted_before_later_siblings_start() -> None:
    a, b = Worker("a"), Worker("b")
    a.fail_next_start = True
    sup, seen = make([a.spec(), b.spec()])
    async with running(sup):
        assert seen.since(0) == [(E, "a"), (R, "a"), (S, "a"), (S, "b")]
        assert "failed to start" in seen.seen[0].reason
        assert sup.running == ("a", "b")


# -- intensity, give up, escalation ------------------------------------------------------------


async def test_intensity_exceeded_stops_children_and_raises() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make(
        [a.spec(), b.spec(), c.spec()], intensity=RestartIntensity(max_restarts=2, period_s=60)
    )

    async def keep_crashing_b() -> None:
        for n in range(1, 4):
            await seen.wait_for(S, "b", count=n)
            b.crash()

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_crashing_b)
        with anyio.fail_after(WAIT_S), pytest.raises(SupervisorGaveUp) as info:
            await sup.run()
    assert info.value.supervisor == sup.name
    assert info.value.child_id == "b"
    assert info.value.reason == "Boom: b crashed"
    assert isinstance(info.value.__cause__, Boom)
    assert b.starts == 3
    assert seen.since(len(seen.seen) - 5) == [
        (E, "b"),
        (DecisionKind.GIVE_UP, "b"),
        (X, "c"),
        (X, "a"),
        (DecisionKind.ESCALATE, "b"),
    ]
    assert (a.cancelled, c.cancelled) == (1, 1)
    assert sup.running == ()


async def test_child_supervisor_giving_up_is_restarted_by_its_parent() -> None:
    worker, neighbour = Worker("worker"), Worker("neighbour")
    child_sup, child_seen = make(
        [worker.spec()], intensity=RestartIntensity(max_restarts=0, period_s=60), name="inner"
    )
    parent, parent_seen = make([child_sup.as_child(), neighbour.spec()], name="outer")
    async with running(parent):
        worker.crash()
        await parent_seen.wait_for(S, "inner", count=2)
        exit_decision = next(d for d in parent_seen.seen if d.kind is E)
        assert exit_decision.reason.startswith("SupervisorGaveUp")
        assert child_seen.count(DecisionKind.ESCALATE, "worker") == 1
        assert worker.starts == 2  # the restarted child supervisor started it afresh
        assert child_sup.running == ("worker",)
        assert neighbour.cancelled == 0
    assert worker.cancelled == 1  # stopping the parent stopped the whole subtree


async def test_parent_gives_up_when_its_child_supervisor_keeps_giving_up() -> None:
    async def crash_at_once(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        raise Boom("always")

    inner, _ = make(
        [ChildSpec(id="crasher", start=crash_at_once)],
        intensity=RestartIntensity(max_restarts=1, period_s=60),
        name="inner",
    )
    outer, outer_seen = make(
        [inner.as_child()], intensity=RestartIntensity(max_restarts=2, period_s=60), name="outer"
    )
    with anyio.fail_after(WAIT_S), pytest.raises(SupervisorGaveUp) as info:
        await outer.run()
    assert info.value.supervisor == "outer"
    assert info.value.child_id == "inner"
    assert info.value.reason.startswith("SupervisorGaveUp")
    assert isinstance(info.value.__cause__, SupervisorGaveUp)
    assert info.value.__cause__.supervisor == "inner"
    assert outer_seen.count(R, "inner") == 2
    assert outer_seen.count(DecisionKind.ESCALATE, "inner") == 1


# -- shutdown ----------------------------------------------------------------------------------


async def test_a_child_ignoring_cancellation_is_abandoned_after_its_timeout() -> None:
    release = anyio.Event()
    cleaned_up = False

    async def stubborn(*, task_status: TaskStatus[None]) -> None:
        nonlocal cleaned_up
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()
            cleaned_up = True

    polite = Worker("polite")
    sup, seen = make([polite.spec(), ChildSpec(id="stubborn", start=stubborn, shutdown_s=0.01)])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        tg.start_soon(sup.stop)
        try:
            # The supervisor stops waiting for "stubborn" and goes on to stop "polite".
            await seen.wait_for(X, "polite")
            assert seen.since(2) == [(A, "stubborn"), (X, "polite")]
            assert "still running" in seen.seen[2].reason
            assert sup.running == ()
            assert not cleaned_up
        finally:
            # Structured concurrency: the task group owns the abandoned task until it ends.
            release.set()
    assert cleaned_up


async def test_cancelling_the_supervisor_stops_children_in_reverse_order() -> None:
    a, b, c = Worker("a"), Worker("b"), Worker("c")
    sup, seen = make([a.spec(), b.spec(), c.spec()])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        tg.cancel_scope.cancel()
    assert seen.since(3) == [(X, "c"), (X, "b"), (X, "a")]
    assert (a.cancelled, b.cancelled, c.cancelled) == (1, 1, 1)


# -- dynamic children --------------------------------------------------------------------------


async def test_start_child_adds_a_supervised_child() -> None:
    a, late = Worker("a"), Worker("late")
    sup, seen = make([a.spec()], Strategy.REST_FOR_ONE)
    async with running(sup):
        await sup.start_child(late.spec())
        assert sup.running == ("a", "late")
        with pytest.raises(ValueError, match="already has"):
            await sup.start_child(Worker("a").spec())
        a.crash()
        await seen.wait_for(S, "late", count=2)
        assert late.starts == 2
    with pytest.raises(RuntimeError, match="not running"):
        await sup.start_child(Worker("b").spec())


async def test_run_is_not_reentrant() -> None:
    sup, _ = make([Worker("a").spec()])
    async with running(sup):
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()


def test_duplicate_child_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        make([Worker("a").spec(), Worker("a").spec()])


# -- decisions are logged and counted ----------------------------------------------------------


def _counter(sup: Supervisor, decision: Decision) -> float:
    return registry.counter("greenroom_supervisor_decisions_total").value(
        supervisor=sup.name, child=decision.child_id, decision=decision.kind.value
    )


async def test_every_decision_is_a_log_event_and_a_counter_increment() -> None:
    a, b = Worker("a"), Worker("b")
    sup, seen = make([a.spec(), b.spec()], Strategy.ONE_FOR_ALL)
    with capture_logs() as logs:
        async with running(sup):
            a.crash()
            await seen.wait_for(S, "b", count=2)
    decisions = sup.decisions
    assert {d.kind for d in decisions} == {S, E, R, X}
    events = [log for log in logs if log["event"].startswith("supervisor.")]
    assert [(log["event"], log["child"]) for log in events] == [
        (d.event, d.child_id) for d in decisions
    ]
    for log, decision in zip(events, decisions, strict=True):
        assert log["supervisor"] == sup.name
        assert log["reason"] == decision.reason
        assert log["restart_count"] == decision.restart_count
    crash_log = next(log for log in events if log["event"] == "supervisor.exit")
    assert crash_log["log_level"] == "warning"
    assert isinstance(crash_log["exc_info"], Boom)
    restart = next(d for d in decisions if d.kind is R and d.child_id == "a")
    assert restart.restart_count == 1
    assert 0 <= restart.delay_s <= FAST.ceiling(0)
    expected: dict[tuple[str, str], int] = {}
    for d in decisions:
        expected[(d.child_id, d.kind.value)] = expected.get((d.child_id, d.kind.value), 0) + 1
    for d in decisions:
        assert _counter(sup, d) == expected[(d.child_id, d.kind.value)]
