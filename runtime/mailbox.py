"""The bounded, key-ordered mailbox between a consumer and an actor's handlers.

Design: **lanes**. The mailbox runs ``lanes`` workers (the actor's ``concurrency``); a delivery goes
to lane ``crc32(key) % lanes``, and each lane handles its deliveries one after another. So messages
with the same key are handled strictly in order, different keys run concurrently up to ``lanes``,
and there is no per-key bookkeeping to grow or clean up. The price is head-of-line blocking between
keys that share a lane; with ``lanes`` well above the number of hot keys it is rarely felt, and it
is the same trade Kafka itself makes between keys that share a partition. Keyless records fall back
to their partition number, which keeps them in partition order.

Bound and backpressure: the mailbox *holds* a delivery from :meth:`Mailbox.put` until its handler
finished. When it holds ``capacity`` deliveries it pauses the subscription's partitions (the
broker stops fetching, so memory stays flat however long the backlog), and it resumes them once it
holds ``low_water`` or fewer. ``put`` itself also waits while the mailbox is full, so the bound
holds even if a broker hands out a record it had already fetched before the pause.

Acknowledgement: a delivery is acked only after the handler callback returned, and that callback
(the actor's dispatcher) returns only after the reply or dead letter was published. A callback that
raises leaves its delivery unacked and stops the mailbox: its partition's commit can never pass it,
so the message is delivered again to whoever owns the partition next.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.bus.base import Delivery, Subscription
from runtime.logging import get_logger
from runtime.metrics import registry

__all__ = ["GAUGE_INTERVAL_S", "Mailbox", "lane_of"]

GAUGE_INTERVAL_S = 0.5
"""How often the depth and in-flight gauges are sampled."""

_depth = registry.gauge("greenroom_mailbox_depth", "Deliveries waiting in an actor's mailbox")
_in_flight = registry.gauge("greenroom_handlers_in_flight", "Handlers running now, per actor")
_pauses = registry.counter("greenroom_consumer_pauses_total", "Times a full mailbox paused fetch")
_resumes = registry.counter("greenroom_consumer_resumes_total", "Times fetching resumed")


def lane_of(delivery: Delivery, lanes: int) -> int:
    """The lane for ``delivery``: by its key (so a key always lands on the same lane)."""
    envelope = delivery.envelope
    key = envelope.key.encode() if envelope is not None else delivery.key or b""
    if not key:
        return delivery.partition % lanes
    return zlib.crc32(key) % lanes


@final
class Mailbox:
    """A bounded mailbox feeding ``lanes`` ordered workers; see the module docstring.

    Use: start :meth:`run` in a task group (it reports started once the workers run), feed it with
    :meth:`put` from the consumer loop, and call :meth:`close` to drain: the workers finish every
    held delivery and :meth:`run` returns.
    """

    def __init__(
        self,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        actor: str,
        capacity: int,
        lanes: int,
        low_water: int | None = None,
        subscription: Subscription | None = None,
    ) -> None:
        if capacity < 1 or lanes < 1:
            raise ValueError("capacity and lanes must be at least 1")
        self.actor = actor
        self.capacity = capacity
        self.lanes = lanes
        self.low_water = capacity // 2 if low_water is None else min(low_water, capacity - 1)
        self.subscription = subscription
        self.pauses = 0
        self.resumes = 0
        self._handler = handler
        self._held = 0
        self._queued = 0
        self._running = 0
        self._paused = False
        self._room = anyio.Event()
        self._room.set()
        self._closed = False
        self._log = get_logger("runtime.mailbox", actor=actor)
        streams = [anyio.create_memory_object_stream[Delivery](math.inf) for _ in range(lanes)]
        # Unbounded per lane on purpose: the bound is on the whole mailbox (`capacity`), enforced
        # in put(), so one hot lane cannot block deliveries for idle lanes.
        self._senders: list[MemoryObjectSendStream[Delivery]] = [s for s, _ in streams]
        self._receivers: list[MemoryObjectReceiveStream[Delivery]] = [r for _, r in streams]

    # --- observation

    @property
    def depth(self) -> int:
        """Deliveries waiting for their lane (not yet handed to a handler)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self._running

    @property
    def held(self) -> int:
        """Deliveries put and not yet finished (waiting + running): what the bound applies to."""
        return self._held

    @property
    def paused(self) -> bool:
        """True while the mailbox holds the subscription paused."""
        return self._paused

    # --- feeding

    async def put(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to its lane; waits while the mailbox is full.

        Raises:
            RuntimeError: the mailbox was closed.
        """
        while self._held >= self.capacity and not self._closed:
            self._pause()
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        if self._closed:
            raise RuntimeError("mailbox is closed")
        self._held += 1
        self._queued += 1
        self._senders[lane_of(delivery, self.lanes)].send_nowait(delivery)
        if self._held >= self.capacity:
            self._pause()

    def close(self) -> None:
        """Take no more deliveries; the workers finish what is held, then :meth:`run` returns."""
        if self._closed:
            return
        self._closed = True
        for sender in self._senders:
            sender.close()
        self._room.set()

    # --- running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the lane workers until :meth:`close` and every held delivery is finished.

        Raises:
            Exception: whatever the handler callback raised (the delivery stays unacked).
        """
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._export_gauges)
                try:
                    async with anyio.create_task_group() as lanes:
                        for receiver in self._receivers:
                            lanes.start_soon(self._lane, receiver)
                        task_status.started()
                finally:
                    outer.cancel_scope.cancel()
        finally:
            # Workers gone (done, failed or cancelled): refuse further puts, release the streams.
            self.close()
            for receiver in self._receivers:
                receiver.close()
            _depth.set(0, actor=self.actor)
            _in_flight.set(0, actor=self.actor)

    async def _lane(self, receiver: MemoryObjectReceiveStream[Delivery]) -> None:
        async with receiver:
            async for delivery in receiver:
                self._queued -= 1
                self._running += 1
                try:
                    await self._handler(delivery)
                finally:
                    self._running -= 1
                # Only a handler that returned acks: one that raised leaves the commit behind it.
                delivery.ack()
                self._finished()

    async def _export_gauges(self) -> None:
        # Sampled rather than set on every message: a scrape every few seconds cannot see finer
        # detail, and per-message gauge updates cost a fifth of a no-op handler's time.
        while True:
            _depth.set(self._queued, actor=self.actor)
            _in_flight.set(self._running, actor=self.actor)
            await anyio.sleep(GAUGE_INTERVAL_S)

    def _finished(self) -> None:
        self._held -= 1
        if self._held < self.capacity:
            self._room.set()
        if self._paused and self._held <= self.low_water:
            self._resume()

    def _pause(self) -> None:
        if self._paused or self.subscription is None:
            return
        self._paused = True
        self.pauses += 1
        self.subscription.pause()
        _pauses.inc(actor=self.actor)
        self._log.info("mailbox.paused", held=self._held, capacity=self.capacity)

    def _resume(self) -> None:
        # A closing mailbox stays paused: the node is draining and must not fetch more.
        if not self._paused or self.subscription is None or self._closed:
            return
        self._paused = False
        self.resumes += 1
        self.subscription.resume()
        _resumes.inc(actor=self.actor)
        self._log.info("mailbox.resumed", held=self._held, low_water=self.low_water)

    def stats(self) -> dict[str, Any]:
        """A snapshot for health reports: held, waiting, running, paused, pauses, resumes."""
        return {
            "held": self._held,
            "depth": self._queued,
            "in_flight": self._running,
            "paused": self._paused,
            "pauses": self.pauses,
            "resumes": self.resumes,
        }
