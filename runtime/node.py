"""A node: one OS process (or one task group, in tests) hosting one actor kind.

:meth:`Node.run` starts the broker (unless one is given), creates the actor's topics
(``<name>.commands``, ``<name>.events``, ``<name>.dlq`` with ``Settings.partitions`` each), calls
``on_start``, and runs a supervision tree whose ``consumer`` child owns the subscription, the
mailbox and its lane workers. The tree has room for the reply and outbox children of later layers
(:attr:`Node.extra_children`).

Graceful stop (:meth:`Node.drain`, what SIGTERM/SIGINT call in ``greenroom run``): stop fetching,
let the handlers finish every delivery the mailbox holds, commit, leave the group, call
``on_stop``, stop the broker. All of it within ``Settings.shutdown_timeout_s``; past it the
remaining handlers are cancelled and their messages stay uncommitted, to be handled by whoever
takes the partitions next (at-least-once, never lost).

Health: with ``health_file`` set, the node rewrites that file (JSON: actor, pid, state, time,
assignment, mailbox stats) every ``HEALTH_INTERVAL_S`` while it runs and removes it when it stops.
A container health check can test that the file is younger than a few intervals and says
``"state": "running"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final, Literal, final

import anyio
from anyio.abc import TaskStatus

from runtime.actor import Actor, Dispatcher, NodeContext
from runtime.bus.base import Broker, BrokerClosedError
from runtime.config import Settings
from runtime.logging import get_logger
from runtime.mailbox import Mailbox
from runtime.supervision import ChildSpec, Restart, RestartIntensity, Strategy, Supervisor

__all__ = ["HEALTH_INTERVAL_S", "Node", "NodeState"]

HEALTH_INTERVAL_S: Final = 1.0

NodeState = Literal["created", "starting", "running", "draining", "stopped"]


@final
class Node:
    """Runs one actor: its consumer, mailbox and handlers, under supervision.

    ``actor`` is an :class:`Actor` subclass (instantiated with no arguments) or an instance.
    ``broker``: use this started broker instead of building one from settings (tests; the node then
    neither starts nor stops it). ``requester``: start a :class:`runtime.request.Requester` so
    handlers can call ``ctx.request`` (default: only if the actor sets ``makes_requests``).
    """

    def __init__(
        self,
        actor: type[Actor] | Actor,
        settings: Settings,
        *,
        broker: Broker | None = None,
        requester: bool | None = None,
        health_file: str | Path | None = None,
        resources: dict[str, Any] | None = None,
    ) -> None:
        self.actor: Actor = actor() if isinstance(actor, type) else actor
        self.actor_type = type(self.actor)
        self.settings = settings
        self.state: NodeState = "created"
        self.mailbox: Mailbox | None = None
        self.supervisor: Supervisor | None = None
        self.intensity = RestartIntensity()
        """How often the consumer may crash (e.g. the bus refusing a dead letter) before the node
        gives up and exits non-zero, for its process supervisor or orchestrator to handle."""
        self.extra_children: list[ChildSpec] = []
        """Children started after the consumer (reply publisher, outbox relay, ...)."""
        self._given_broker = broker
        self._broker: Broker | None = broker
        self._want_requester = self.actor_type.makes_requests if requester is None else requester
        self._health_file = Path(health_file) if health_file else None
        self._resources = resources
        self._drain = anyio.Event()
        self._consumer_done = anyio.Event()
        self._log = get_logger("runtime.node", actor=self.actor_type.name)

    @property
    def broker(self) -> Broker:
        """The broker in use. Raises RuntimeError before :meth:`run` built it."""
        if self._broker is None:
            raise RuntimeError("the node has not started")
        return self._broker

    @property
    def topics(self) -> dict[str, int]:
        """The actor's own topics with their partition counts (created at start)."""
        cls, s = self.actor_type, self.settings
        return dict.fromkeys(
            (cls.commands_topic(s), cls.events_topic(s), cls.dlq_topic(s)), s.partitions
        )

    def drain(self) -> None:
        """Ask the node to stop gracefully (see the module docstring). Safe to call repeatedly."""
        if not self._drain.is_set():
            self._log.info("node.draining", held=self.mailbox.held if self.mailbox else 0)
            self._drain.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the node until :meth:`drain` (returns normally) or a failure the tree gives up on.

        Reports started once the consumer has joined its group.

        Raises:
            BrokerUnavailableError: the broker cannot be reached at start.
            SupervisorGaveUp: the consumer kept failing past the restart intensity.
        """
        self.state = "starting"
        cls = self.actor_type
        async with AsyncExitStack() as stack:
            if self._broker is None:
                from runtime.bus.factory import broker_from_settings

                self._broker = broker_from_settings(self.settings)
            if self._given_broker is None:
                await self._broker.start()
                stack.push_async_callback(self._broker.stop)
            topics = self.topics
            topics.update(
                {self.settings.topic(t): self.settings.partitions for t in cls.subscribes}
            )
            await self._broker.ensure_topics(topics)
            requester = None
            if self._want_requester:
                from runtime.request import Requester

                requester = await stack.enter_async_context(Requester(self._broker, self.settings))
            node_ctx = NodeContext(
                name=cls.name,
                settings=self.settings,
                broker=self._broker,
                log=get_logger(f"actor.{cls.name}", actor=cls.name),
                requester=requester,
                resources=self._resources,
            )
            stack.push_async_callback(self._stop_actor, node_ctx)
            await self.actor.on_start(node_ctx)
            dispatcher = Dispatcher(self.actor, node_ctx, dlq_topic=cls.dlq_topic(self.settings))
            self.supervisor = Supervisor(
                f"node.{cls.name}",
                self.children(dispatcher),
                strategy=Strategy.ONE_FOR_ONE,
                intensity=self.intensity,
            )
            async with anyio.create_task_group() as tg:
                # If the tree gives up, run() raises SupervisorGaveUp here: the node fails with it.
                await tg.start(self.supervisor.run)
                if self._health_file is not None:
                    tg.start_soon(self._heartbeat, self._health_file)
                self.state = "running"
                self._log.info(
                    "node.running", topics=cls.source_topics(self.settings), pid=os.getpid()
                )
                task_status.started()
                await self._consumer_done.wait()
                await self.supervisor.stop()
                tg.cancel_scope.cancel()
        self.state = "stopped"
        self._log.info("node.stopped")

    async def _stop_actor(self, node_ctx: NodeContext) -> None:
        self.state = "stopped"
        with anyio.CancelScope(shield=True):
            await self.actor.on_stop(node_ctx)

    # --- supervision tree

    def children(self, dispatcher: Dispatcher) -> list[ChildSpec]:
        """The tree's children: the consumer, then :attr:`extra_children`."""

        async def consumer(*, task_status: TaskStatus[None]) -> None:
            await self._consume(dispatcher, task_status=task_status)

        return [
            # Transient: a consumer that returns has drained on purpose; one that raises (the bus
            # refused a reply or dead letter) is restarted and re-reads its uncommitted records.
            ChildSpec(
                id="consumer",
                start=consumer,
                restart=Restart.TRANSIENT,
                shutdown_s=self.settings.shutdown_timeout_s,
            ),
            *self.actor.supervised_children(self),
            *self.extra_children,
        ]

    # --- the consumer child

    async def _consume(
        self, dispatcher: Dispatcher, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscription -> mailbox -> handlers, until drained. Leaves the group on the way out
        (committing every contiguous finished offset), also when a handler pipeline failed."""
        cls, settings = self.actor_type, self.settings
        subscription = self.broker.subscribe(
            cls.source_topics(settings), cls.consumer_group(settings)
        )
        await subscription.start()
        try:
            mailbox = self.mailbox = Mailbox(
                dispatcher,
                actor=cls.name,
                capacity=cls.mailbox_size,
                lanes=cls.concurrency,
                subscription=subscription,
            )
            mailbox_done = anyio.Event()

            async def run_mailbox(*, task_status: TaskStatus[None]) -> None:
                try:
                    await mailbox.run(task_status=task_status)
                finally:
                    mailbox_done.set()

            async with anyio.create_task_group() as tg:
                await tg.start(run_mailbox)
                fetching = anyio.CancelScope()

                async def fetch() -> None:
                    with fetching:
                        async for batch in subscription.batches():
                            for delivery in batch:
                                await mailbox.put(delivery)
                        # The subscription ended under us (the broker stopped): wind down too.
                        self.drain()

                tg.start_soon(fetch)
                task_status.started()
                await self._drain.wait()
                self.state = "draining"
                fetching.cancel()
                with contextlib.suppress(BrokerClosedError):
                    subscription.pause()
                mailbox.close()
                with anyio.move_on_after(settings.shutdown_timeout_s) as waited:
                    await mailbox_done.wait()
                if waited.cancelled_caught:
                    self._log.error(
                        "node.drain_timeout",
                        abandoned=mailbox.held,
                        shutdown_timeout_s=settings.shutdown_timeout_s,
                    )
                    tg.cancel_scope.cancel()
        finally:
            # Leave the group committing every contiguous finished offset: after a drain that is
            # all handled work; after a crash, what comes before the first unfinished message.
            # Shielded so a cancelled consumer still commits; bounded so a dead bus cannot hang us.
            with anyio.CancelScope(shield=True), anyio.move_on_after(settings.shutdown_timeout_s):
                await subscription.close()
        self._log.info("node.drained", commit="done")
        self._consumer_done.set()

    # --- health

    async def _heartbeat(self, path: Path) -> None:
        target = anyio.Path(path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        try:
            while True:
                await _write_atomic(target, json.dumps(self.health()))
                await anyio.sleep(HEALTH_INTERVAL_S)
        finally:
            with anyio.CancelScope(shield=True):
                await target.unlink(missing_ok=True)

    def health(self) -> dict[str, Any]:
        """What the heartbeat file says: actor, pid, state, time, assignment, mailbox stats."""
        return {
            "actor": self.actor_type.name,
            "pid": os.getpid(),
            "state": self.state,
            "at": time.time(),
            "mailbox": self.mailbox.stats() if self.mailbox else None,
        }


async def _write_atomic(path: anyio.Path, text: str) -> None:
    # Write then rename, so a health check never reads a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    await tmp.write_text(text)
    await tmp.rename(path)
