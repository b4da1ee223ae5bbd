"""The ``Broker`` contract every bus implementation honours (see DESIGN.md, delivery contract).

Semantics, identical for Kafka and memory:

* Topics have a fixed number of partitions; a record's partition is chosen by its key, so records
  with the same key keep their order.
* ``subscribe(topics, group)`` joins a consumer group. Partitions are split among the group's
  members and move when members join or leave. Each member reads its partitions from the group's
  committed offset.
* Every :class:`Delivery` is acknowledged on its own with :meth:`Delivery.ack`. A commit only ever
  covers the highest offset below which *every* delivery is acknowledged (:class:`OffsetTracker`),
  so a crash re-delivers exactly the unfinished work and whatever followed it: at-least-once.
* A member that closes normally commits what it may; one that dies (or :meth:`Subscription.abort`)
  commits nothing more, and its unacknowledged records go to the member that takes the partition.
* Publishing before :meth:`Broker.start` (or after :meth:`Broker.stop`) raises
  :class:`BrokerNotStartedError`.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple, Self, final

from runtime.messages import Envelope, InvalidRecordError

__all__ = [
    "Broker",
    "BrokerClosedError",
    "BrokerError",
    "BrokerNotStartedError",
    "BrokerUnavailableError",
    "Delivery",
    "OffsetTracker",
    "Subscription",
    "TopicPartition",
]


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


class BrokerError(Exception):
    """Base class of every bus error."""


class BrokerNotStartedError(BrokerError):
    """The broker was used before ``start()`` or after ``stop()``."""


class BrokerClosedError(BrokerError):
    """The subscription was used after it was closed."""


class BrokerUnavailableError(BrokerError):
    """The broker could not be reached within the configured timeout.

    The message names the bootstrap address that was tried.
    """


@final
class OffsetTracker:
    """Tracks one partition's in-flight offsets and the contiguous commit point.

    ``delivered`` is called in offset order as records are handed out; ``acked`` in any order as
    handlers finish. :attr:`committable` is the offset Kafka should store as committed: the first
    unacknowledged offset, or one past the last delivery when nothing is in flight. Amortised O(1).
    """

    __slots__ = ("_done", "_next", "_pending")

    def __init__(self, next_offset: int) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next = next_offset

    def delivered(self, offset: int) -> None:
        """Record that ``offset`` was handed to a consumer and is now in flight."""
        self._pending.append(offset)

    def acked(self, offset: int) -> None:
        """Record that ``offset`` is finished; a repeated or unknown offset is a no-op."""
        pending = self._pending
        if pending and pending[0] == offset:
            pending.popleft()
            self._next = offset + 1
            done = self._done
            while pending and pending[0] in done:
                head = pending.popleft()
                done.discard(head)
                self._next = head + 1
        elif offset >= self._next:
            self._done.add(offset)

    @property
    def committable(self) -> int:
        """The offset to commit: the first in-flight offset, else one past the last finished."""
        return self._pending[0] if self._pending else self._next

    @property
    def in_flight(self) -> int:
        """How many delivered offsets are not yet acknowledged."""
        return len(self._pending) - len(self._done)


@final
class Delivery:
    """One record handed to a subscriber, acknowledged on its own with :meth:`ack`.

    ``envelope`` is the decoded envelope, or None when the record is not a valid envelope; then
    ``error`` says why (with topic, partition and offset) and ``value``/``headers`` keep the raw
    record so it can be dead-lettered without loss. An invalid record must still be acknowledged.
    """

    __slots__ = (
        "_acked",
        "_tracker",
        "envelope",
        "error",
        "headers",
        "key",
        "offset",
        "partition",
        "topic",
        "value",
    )

    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        tracker: OffsetTracker,
        envelope: Envelope | None,
        error: InvalidRecordError | None = None,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.envelope = envelope
        self.error = error
        self.key = key
        self.value = value
        self.headers = headers
        self._tracker = tracker
        self._acked = False
        tracker.delivered(offset)

    @property
    def topic_partition(self) -> TopicPartition:
        """Where this record lives."""
        return TopicPartition(self.topic, self.partition)

    @property
    def acked(self) -> bool:
        """True once :meth:`ack` was called."""
        return self._acked

    def ack(self) -> None:
        """Mark this record finished, so a later commit may cover it. Idempotent.

        After the partition moved to another member the tracker is stale and this is harmless:
        the new owner reads from the committed offset and handles the record again.
        """
        if not self._acked:
            self._acked = True
            self._tracker.acked(self.offset)

    def __repr__(self) -> str:
        kind = self.envelope.type if self.envelope is not None else "invalid"
        return f"<Delivery {self.topic}[{self.partition}]@{self.offset} {kind}>"


class Subscription(abc.ABC):
    """A member of a consumer group: an async iterator of deliveries plus flow control.

    Use as ``async with broker.subscribe(...) as sub: async for delivery in sub: ...``, or
    ``async for batch in sub.batches(): ...`` for one await per fetched batch.
    Leaving the ``async with`` block commits what is committable and leaves the group.
    """

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Delivery:
        """The next delivery from any assigned, unpaused partition (waits for one)."""

    async def next_batch(self) -> list[Delivery]:
        """Every delivery ready now from one partition, in offset order (waits for the first).

        The consumer's fast path: one await per fetched batch instead of one per record. Each
        delivery is still acknowledged on its own. The batch is never empty; at most the
        broker's ``max_batch`` records.

        Raises:
            StopAsyncIteration: the subscription was closed or aborted.
            BrokerNotStartedError: the subscription was never started.
        """
        return [await self.__anext__()]

    def batches(self) -> AsyncIterator[list[Delivery]]:
        """Iterate with :meth:`next_batch`: ``async for batch in sub.batches(): ...``."""
        return _Batches(self)

    @abc.abstractmethod
    async def start(self) -> None:
        """Join the group. Raises BrokerNotStartedError if the broker is not started."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""

    @abc.abstractmethod
    def pause(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Stop fetching from ``partitions`` (all assigned ones by default).

        Records already handed out are unaffected; no new ones arrive until :meth:`resume`.
        """

    @abc.abstractmethod
    def resume(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Fetch again from ``partitions`` (all paused ones by default)."""

    @abc.abstractmethod
    def paused(self) -> frozenset[TopicPartition]:
        """The partitions currently paused."""

    @abc.abstractmethod
    async def commit(self) -> dict[TopicPartition, int]:
        """Commit each owned partition up to its contiguous acknowledged offset.

        Returns what was committed (partition -> next offset to read); partitions with nothing new
        are left out.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is committable, then leave the group. Idempotent."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Leave the group without committing anything more, as a crashed member would."""


@final
class _Batches:
    """An async iterator over :meth:`Subscription.next_batch` (a class, not an async generator,
    so an abandoned loop leaves no generator to finalise)."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[Delivery]:
        return await self._subscription.next_batch()


class Broker(abc.ABC):
    """A message bus. Use as an async context manager: ``async with broker: ...``."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Raises BrokerUnavailableError, naming the address, if it cannot."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush pending publishes and disconnect. Idempotent."""

    @abc.abstractmethod
    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        """Create each topic with the given partition count; an existing topic is left alone."""

    @abc.abstractmethod
    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has. Raises BrokerError if it does not exist."""

    @abc.abstractmethod
    async def publish(self, topic: str, envelope: Envelope, *, key: str | None = None) -> None:
        """Append ``envelope`` to ``topic`` and wait until the broker has it durably (acks=all).

        ``key`` (default ``envelope.key``) picks the partition.
        """

    @abc.abstractmethod
    async def publish_raw(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Append a record as-is (no envelope), waiting as :meth:`publish` does.

        For dead-lettering a record that is not a valid envelope without loss, and for tests that
        need a record some other tool could have written. ``key`` picks the partition as in
        :meth:`publish`; subscribers see a record without valid envelope headers as a
        :class:`Delivery` whose ``error`` is an :class:`InvalidRecordError`.
        """

    async def publish_many(self, topic: str, envelopes: Iterable[Envelope]) -> None:
        """Publish several envelopes, pipelined, and wait for all; keys from each envelope."""
        for envelope in envelopes:
            await self.publish(topic, envelope)

    @abc.abstractmethod
    def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        *,
        from_beginning: bool = True,
    ) -> Subscription:
        """A new member of consumer group ``group`` over ``topics`` (not yet started).

        ``from_beginning`` decides where a group with no committed offset starts reading.
        """

    @abc.abstractmethod
    async def committed(self, group: str, partition: TopicPartition) -> int | None:
        """The offset ``group`` has committed for ``partition``, or None if it never committed."""
