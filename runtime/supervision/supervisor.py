"""The in-process supervisor: runs child tasks under one anyio task group and restarts them.

Everything the supervisor does happens in one control loop (its ``run`` task), so decisions are
taken one at a time: children report their exits through a memory stream, and only the loop
starts, stops and restarts them. Children run inside shielded cancel scopes: cancelling the
supervisor does not cancel them all at once; the loop stops them one by one in reverse start order,
each within its shutdown timeout.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, final

import anyio
from anyio import TASK_STATUS_IGNORED, CancelScope, create_memory_object_stream
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.supervision.backoff import Backoff
from runtime.supervision.decisions import Decision, DecisionKind, describe_exit, record_decision
from runtime.supervision.errors import SupervisorGaveUp
from runtime.supervision.intensity import RestartIntensity, RestartWindow
from runtime.supervision.spec import ChildSpec, Restart
from runtime.supervision.strategies import Strategy

__all__ = ["Supervisor"]


@dataclass(eq=False)
class _Child:
    """One incarnation of a child: a new record per (re)start, compared by identity."""

    spec: ChildSpec
    # Shielded so that only the supervisor, not a cancellation from outside, stops the child.
    scope: CancelScope = field(default_factory=lambda: CancelScope(shield=True))
    ready: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    became_ready: bool = False
    error: Exception | None = None


@final
class _ReadySignal(TaskStatus[None]):
    """The ``task_status`` handed to a child: ``started()`` tells the supervisor it is ready."""

    def __init__(self, child: _Child) -> None:
        self._child = child

    def started(self, value: None = None) -> None:
        if self._child.became_ready:
            raise RuntimeError(f"child {self._child.spec.id!r} called started() twice")
        self._child.became_ready = True
        self._child.ready.set()


@dataclass(eq=False)
class _StartChild:
    """A request from ``start_child``, answered by the control loop."""

    spec: ChildSpec
    processed: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


_Inbox = _Child | _StartChild


@dataclass(eq=False)
class _Run:
    """The state of one ``Supervisor.run`` call; a restarted supervisor starts from its specs."""

    tg: TaskGroup
    specs: list[ChildSpec]
    window: RestartWindow
    inbox_send: MemoryObjectSendStream[_Inbox]
    inbox: MemoryObjectReceiveStream[_Inbox]
    scope: CancelScope = field(default_factory=CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)
    running: dict[str, _Child] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    restarts: dict[str, int] = field(default_factory=dict)
    requests: set[_StartChild] = field(default_factory=set)

    def spec(self, child_id: str) -> ChildSpec | None:
        return next((s for s in self.specs if s.id == child_id), None)

    def forget(self, child_id: str) -> None:
        self.specs = [s for s in self.specs if s.id != child_id]
        self.pending.discard(child_id)


@final
class Supervisor:
    """Supervises child tasks with OTP semantics: restart types, strategies, restart intensity.

    Every decision is a :class:`~runtime.supervision.decisions.Decision`: logged, counted, kept
    in :attr:`decisions` (the last ``history`` of them) and passed to ``on_decision``.

    Raises:
        ValueError: two children share an id.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: RestartIntensity | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_decision: Callable[[Decision], None] | None = None,
        history: int = 256,
    ) -> None:
        ids = [c.id for c in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"supervisor {name!r}: duplicate child ids {duplicates}")
        self.name = name
        self.strategy = strategy
        self.intensity = intensity if intensity is not None else RestartIntensity()
        self.backoff = backoff if backoff is not None else Backoff()
        self._children = tuple(children)
        self._clock = clock
        self._on_decision = on_decision
        self._decisions: deque[Decision] = deque(maxlen=history)
        self._run: _Run | None = None

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """The most recent decisions, oldest first (across runs)."""
        return tuple(self._decisions)

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the children currently running, in start order."""
        run = self._run
        if run is None:
            return ()
        return tuple(s.id for s in run.specs if s.id in run.running)

    def as_child(
        self, *, restart: Restart = Restart.PERMANENT, shutdown_s: float = math.inf
    ) -> ChildSpec:
        """A spec that runs this supervisor as a child of another one (id = this name).

        When this supervisor gives up it raises :class:`SupervisorGaveUp`, which its parent sees
        as an abnormal exit: the failure escalates. ``shutdown_s`` defaults to infinity, as in OTP,
        because this supervisor bounds its own children's shutdown.
        """
        return ChildSpec(id=self.name, start=self.run, restart=restart, shutdown_s=shutdown_s)

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then supervise them until stopped.

        ``task_status.started()`` is called once every child has reported ready. Returns after
        :meth:`stop`; on cancellation, stops the children (reverse order, each within its shutdown
        timeout) and lets the cancellation propagate.

        Raises:
            SupervisorGaveUp: restart intensity was exceeded; all children are stopped by then.
            RuntimeError: this supervisor is already running.
        """
        if self._run is not None:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        send, receive = create_memory_object_stream[_Inbox](math.inf)
        gave_up: SupervisorGaveUp | None = None
        with send, receive:
            async with anyio.create_task_group() as tg:
                run = self._run = _Run(
                    tg=tg,
                    specs=list(self._children),
                    window=self.intensity.window(self._clock),
                    inbox_send=send,
                    inbox=receive,
                )
                try:
                    with run.scope:
                        await self._supervise(run, task_status)
                except SupervisorGaveUp as exc:
                    gave_up = exc
                finally:
                    # Also on cancellation: the stop sequence must run to its end.
                    with CancelScope(shield=True):
                        await self._stop_all(run, reason="shutdown")
                    self._run = None
                    for request in run.requests:
                        request.error = RuntimeError(f"supervisor {self.name!r} stopped")
                        request.processed.set()
                    run.finished.set()
        if gave_up is not None:
            raise gave_up

    async def stop(self) -> None:
        """Stop the children in reverse start order and wait until :meth:`run` has returned.

        Returns at once if the supervisor is not running. Do not await this from one of the
        supervisor's own children: the supervisor waits for that child to finish.
        """
        run = self._run
        if run is None:
            return
        run.scope.cancel()
        await run.finished.wait()

    async def start_child(self, spec: ChildSpec) -> None:
        """Add ``spec`` after the existing children and wait until it has started.

        The child is supervised like the others for the rest of this run; a restarted supervisor
        starts again from the specs it was constructed with (as in OTP).

        Raises:
            ValueError: a child with this id already exists.
            RuntimeError: the supervisor is not running, stopped first, or the child failed to start
                and was not restarted.
        """
        run = self._run
        if run is None:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        request = _StartChild(spec)
        run.requests.add(request)
        run.inbox_send.send_nowait(request)
        await request.processed.wait()
        if request.error is not None:
            raise request.error

    async def _supervise(self, run: _Run, task_status: TaskStatus[None]) -> None:
        run.pending.update(s.id for s in run.specs)
        await self._start_pending(run)
        task_status.started()
        async for item in run.inbox:
            if isinstance(item, _StartChild):
                await self._add_child(run, item)
            elif run.running.get(item.spec.id) is item:
                # Exits of children the supervisor stopped itself are not news.
                await self._on_exit(run, item)
                await self._start_pending(run)

    async def _add_child(self, run: _Run, request: _StartChild) -> None:
        run.requests.discard(request)
        spec = request.spec
        try:
            if run.spec(spec.id) is not None:
                request.error = ValueError(
                    f"supervisor {self.name!r} already has a child {spec.id!r}"
                )
                return
            run.specs.append(spec)
            run.pending.add(spec.id)
            await self._start_pending(run)
            if spec.id not in run.running:
                request.error = RuntimeError(f"child {spec.id!r} did not start")
        except BaseException:
            # Giving up or being stopped meanwhile: the caller must not wait forever.
            request.error = RuntimeError(f"supervisor {self.name!r} stopped")
            raise
        finally:
            request.processed.set()

    async def _start_pending(self, run: _Run) -> None:
        """Start pending children one at a time in start order, each awaited until ready."""
        while True:
            spec = next((s for s in run.specs if s.id in run.pending), None)
            if spec is None:
                return
            run.pending.discard(spec.id)
            child = _Child(spec)
            run.running[spec.id] = child
            run.tg.start_soon(self._child_main, run, child, name=f"{self.name}/{spec.id}")
            await child.ready.wait()
            if child.became_ready:
                self._decide(run, DecisionKind.START, spec.id)
            else:
                # It exited before it was ready: a failed start is handled like any exit.
                await self._on_exit(run, child)

    async def _child_main(self, run: _Run, child: _Child) -> None:
        try:
            with child.scope:
                await child.spec.start(task_status=_ReadySignal(child))
        except Exception as exc:
            # A crash is an exit with a reason for the supervisor, not a failure of its task group.
            child.error = exc
        finally:
            child.done.set()
            if child.became_ready:
                run.inbox_send.send_nowait(child)
            else:
                child.ready.set()

    async def _on_exit(self, run: _Run, child: _Child) -> None:
        spec = child.spec
        if run.running.get(spec.id) is child:
            del run.running[spec.id]
        reason = describe_exit(child.error)
        self._decide(run, DecisionKind.EXIT, spec.id, reason, error=child.error)
        if not spec.restart.restarts_after(abnormal=child.error is not None):
            if spec.restart is Restart.TEMPORARY:
                run.forget(spec.id)
            return
        if not run.window.record():
            await self._give_up(run, spec.id, reason, child.error)
        delay = self.backoff.delay(run.window.count() - 1)
        affected = self.strategy.affected([s.id for s in run.specs], spec.id)
        for sibling_id in reversed(affected):
            sibling = run.running.get(sibling_id)
            if sibling is not None:
                await self._stop(run, sibling, reason=f"restart after {spec.id} exited")
        for child_id in affected:
            if run.spec(child_id) is None or child_id in run.pending:
                continue  # a temporary sibling stopped above, or one not started yet
            run.pending.add(child_id)
            run.restarts[child_id] = run.restarts.get(child_id, 0) + 1
            self._decide(run, DecisionKind.RESTART, child_id, reason, delay_s=delay)
        await anyio.sleep(delay)

    async def _give_up(
        self, run: _Run, child_id: str, reason: str, error: Exception | None
    ) -> NoReturn:
        restarts = run.window.count()
        self._decide(run, DecisionKind.GIVE_UP, child_id, reason)
        await self._stop_all(run, reason="give up")
        self._decide(run, DecisionKind.ESCALATE, child_id, reason)
        raise SupervisorGaveUp(self.name, child_id, reason, restarts) from error

    async def _stop_all(self, run: _Run, *, reason: str) -> None:
        run.pending.clear()
        for spec in reversed(list(run.specs)):
            child = run.running.get(spec.id)
            if child is not None:
                await self._stop(run, child, reason=reason)

    async def _stop(self, run: _Run, child: _Child, *, reason: str) -> None:
        """Cancel ``child`` and wait for it up to its shutdown timeout, then let it go."""
        spec = child.spec
        child.scope.cancel()
        # Shielded: a stop that has begun finishes even if the supervisor is being cancelled.
        with CancelScope(shield=True), anyio.move_on_after(spec.shutdown_s):
            await child.done.wait()
        if run.running.get(spec.id) is child:
            del run.running[spec.id]
        if spec.restart is Restart.TEMPORARY:
            run.forget(spec.id)
        if child.done.is_set():
            self._decide(run, DecisionKind.STOP, spec.id, reason)
        else:
            # It ignores cancellation. Its task stays owned by the task group (structured
            # concurrency has no orphans), but the supervisor stops waiting for it.
            self._decide(
                run,
                DecisionKind.ABANDON,
                spec.id,
                f"{reason}: still running {spec.shutdown_s}s after cancellation",
            )

    def _decide(
        self,
        run: _Run,
        kind: DecisionKind,
        child_id: str,
        reason: str = "",
        *,
        error: Exception | None = None,
        delay_s: float = 0.0,
    ) -> None:
        decision = Decision(
            supervisor=self.name,
            kind=kind,
            child_id=child_id,
            reason=reason,
            restart_count=run.restarts.get(child_id, 0),
            delay_s=delay_s,
        )
        record_decision(decision, error=error)
        self._decisions.append(decision)
        if self._on_decision is not None:
            self._on_decision(decision)
