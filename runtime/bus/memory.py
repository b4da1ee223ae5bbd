"""An in-process broker that emulates Kafka's log model, for tests and single-process runs.

Each topic has N partitions; each partition is an append-only list whose index is the offset.
Consumer groups split partitions among live members and move them when members join or leave;
a member reads a partition from the group's committed offset, so unacknowledged records go to
whoever takes the partition next. Everything happens on one event loop, so no locks are needed:
a group change is a synchronous step between two awaits, like one Kafka rebalance.

Envelopes are stored as objects (no encoding on the hot path); :meth:`MemoryBroker.publish_raw`
stores a raw record, decoded at delivery time exactly as a Kafka record would be, so invalid
records behave as they do on Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import final
from zlib import crc32

import anyio
import anyio.lowlevel

from runtime.bus._partitioner import KeyPartitioner
from runtime.bus.base import (
    Broker,
    BrokerClosedError,
    BrokerError,
    BrokerNotStartedError,
    Delivery,
    OffsetTracker,
    Subscription,
    TopicPartition,
)
from runtime.messages import Envelope, InvalidRecordError, envelope_from_record

__all__ = ["MemoryBroker", "MemorySubscription"]

# (envelope or None for a raw record, key, value, headers)
_Record = tuple[Envelope | None, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]

# Yield to the event loop every this many deliveries, so a busy consumer (or publisher) cannot
# starve other tasks; a checkpoint per message would cost more than the rest of the path.
_CHECKPOINT_EVERY = 128


@final
class _Partition:
    __slots__ = ("records", "waiters")

    def __init__(self) -> None:
        self.records: list[_Record] = []
        # Members blocked in __anext__ that own this partition; woken on append.
        self.waiters: set[MemorySubscription] = set()


@final
class _Group:
    __slots__ = ("committed", "members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[MemorySubscription] = []  # join order decides assignment order
        self.committed: dict[TopicPartition, int] = {}


@final
class _Claim:
    """One member's hold on one partition: read position, in-flight tracker, pause flag."""

    __slots__ = ("committed", "end", "paused", "position", "records", "topic", "tp", "tracker")

    def __init__(
        self, tp: TopicPartition, part: _Partition, position: int, committed: int | None
    ) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.records = part.records
        self.position = position
        self.end = position  # end of the batch being handed out (exclusive)
        self.tracker = OffsetTracker(position)
        self.committed = committed
        self.paused = False


@final
class MemoryBroker(Broker):
    """A faithful in-process stand-in for Kafka (see the module docstring).

    State (topics, records, committed offsets) belongs to the broker object and survives
    ``stop()``/``start()``, as a Kafka cluster outlives its clients.
    """

    def __init__(
        self,
        *,
        commit_interval_s: float = 0.5,
        max_batch: int = 500,
        default_partitions: int | None = None,
    ) -> None:
        """``default_partitions``: create unknown topics on first use with this many partitions
        (Kafka's auto-create); None (default) makes publishing to an unknown topic an error."""
        self._started = False
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._partitioner = KeyPartitioner()
        self._commit_interval_s = commit_interval_s
        self._max_batch = max_batch
        self._default_partitions = default_partitions
        self._ops = 0

    # --- lifecycle

    async def start(self) -> None:
        """Start accepting publishes and subscriptions. Never fails."""
        self._started = True

    async def stop(self) -> None:
        """Close every live subscription (committing what is committable), then stop. Idempotent."""
        if not self._started:
            return
        for group in list(self._groups.values()):
            for member in list(group.members):
                await member.close()
        self._started = False

    def _check_started(self) -> None:
        if not self._started:
            raise BrokerNotStartedError("MemoryBroker is not started: use `async with broker:`")

    # --- topics

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        """Create missing topics; existing ones keep their partition count.

        Raises:
            BrokerNotStartedError: the broker is not started.
            BrokerError: a partition count is below 1.
        """
        self._check_started()
        created = False
        for name, count in topics.items():
            if count < 1:
                raise BrokerError(f"topic {name!r}: partition count must be >= 1, got {count}")
            if name not in self._topics:
                self._topics[name] = [_Partition() for _ in range(count)]
                created = True
        if created:
            # Members already subscribed to a new topic get its partitions, as Kafka's metadata
            # refresh would trigger a rebalance.
            for group in self._groups.values():
                self._rebalance(group)

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``. Raises BrokerError if it does not exist."""
        self._check_started()
        return len(self._partitions(topic))

    def _partitions(self, topic: str) -> list[_Partition]:
        parts = self._topics.get(topic)
        if parts is None:
            if self._default_partitions is None:
                raise BrokerError(f"unknown topic {topic!r}: create it with ensure_topics")
            parts = self._topics[topic] = [_Partition() for _ in range(self._default_partitions)]
            for group in self._groups.values():
                self._rebalance(group)
        return parts

    # --- publishing

    async def publish(self, topic: str, envelope: Envelope, *, key: str | None = None) -> None:
        """Append ``envelope``; the key (default ``envelope.key``) picks the partition.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the topic does not exist.
        """
        self._check_started()
        self._append(topic, envelope, (envelope.key if key is None else key).encode(), None, ())
        self._ops += 1
        if self._ops >= _CHECKPOINT_EVERY:
            self._ops = 0
            await anyio.lowlevel.checkpoint()

    async def publish_many(self, topic: str, envelopes: Iterable[Envelope]) -> None:
        """Append each envelope in order (keys from each envelope), then yield once.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the topic does not exist.
        """
        self._check_started()
        # The hot path of bulk publishing: one topic lookup, KeyPartitioner's rule inlined, and each
        # waiting member woken once per call rather than once per record.
        parts = self._topics.get(topic) or self._partitions(topic)
        count = len(parts)
        choose = self._partitioner.partition
        woken: set[MemorySubscription] = set()
        for envelope in envelopes:
            key = envelope.key.encode()
            part = parts[crc32(key) % count] if key else parts[choose(None, count)]
            part.records.append((envelope, key, None, ()))
            if part.waiters:
                woken.update(part.waiters)
        for member in woken:
            member._wake()
        await anyio.lowlevel.checkpoint()

    async def publish_raw(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Append a raw record, decoded (or refused) at delivery time as on Kafka.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the topic does not exist.
        """
        self._check_started()
        self._append(topic, None, key, value, tuple(headers))
        await anyio.lowlevel.checkpoint()

    def _append(
        self,
        topic: str,
        envelope: Envelope | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        parts = self._topics.get(topic) or self._partitions(topic)
        part = parts[self._partitioner.partition(key, len(parts))]
        part.records.append((envelope, key, value, headers))
        if part.waiters:
            for member in part.waiters:
                member._wake()

    # --- consuming

    def subscribe(
        self, topics: Sequence[str], group: str, *, from_beginning: bool = True
    ) -> MemorySubscription:
        """A new, not yet started member of ``group`` reading ``topics``."""
        return MemorySubscription(self, tuple(topics), group, from_beginning=from_beginning)

    async def committed(self, group: str, partition: TopicPartition) -> int | None:
        """The group's committed offset for ``partition``, or None.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
        """
        self._check_started()
        found = self._groups.get(group)
        return None if found is None else found.committed.get(TopicPartition(*partition))

    # --- group membership (called by MemorySubscription)

    def _join(self, member: MemorySubscription) -> _Group:
        self._check_started()
        group = self._groups.get(member.group)
        if group is None:
            group = self._groups[member.group] = _Group(member.group)
        group.members.append(member)
        self._rebalance(group)
        return group

    def _leave(self, member: MemorySubscription, group: _Group) -> None:
        if member in group.members:
            group.members.remove(member)
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        # Round robin over (topic, partition) pairs among the members subscribed to each topic,
        # in join order: deterministic, and balanced for the usual one-topic group.
        wanted: dict[MemorySubscription, set[TopicPartition]] = {m: set() for m in group.members}
        turn = 0
        for topic in sorted({t for m in group.members for t in m.topics}):
            parts = self._topics.get(topic)
            if parts is None:
                continue
            candidates = [m for m in group.members if topic in m.topics]
            for index in range(len(parts)):
                wanted[candidates[turn % len(candidates)]].add(TopicPartition(topic, index))
                turn += 1
        # Revoke everywhere first (committing), so new owners read the fresh committed offsets.
        for member in group.members:
            member._revoke(wanted[member], group)
        for member in group.members:
            member._assign(wanted[member], group, self._topics)


@final
class MemorySubscription(Subscription):
    """One member of a consumer group on a :class:`MemoryBroker`.

    Not safe to iterate from two tasks at once (neither is a Kafka consumer). After
    :meth:`close` or :meth:`abort`, iteration ends; other calls raise BrokerClosedError.
    """

    def __init__(
        self, broker: MemoryBroker, topics: tuple[str, ...], group: str, *, from_beginning: bool
    ) -> None:
        self.topics = frozenset(topics)
        self.group = group
        self._broker = broker
        self._from_beginning = from_beginning
        self._group: _Group | None = None
        self._closed = False
        self._claims: dict[TopicPartition, _Claim] = {}
        self._order: list[_Claim] = []
        self._rr = 0
        self._current: _Claim | None = None
        self._event: anyio.Event | None = None
        self._ops = 0
        self._max_batch = broker._max_batch
        self._commit_interval_s = broker._commit_interval_s
        self._next_commit = 0.0

    # --- lifecycle

    async def start(self) -> None:
        """Join the group and take a share of its partitions.

        Raises:
            BrokerNotStartedError: the broker is not started.
            BrokerClosedError: this subscription was already closed.
        """
        if self._closed:
            raise BrokerClosedError(f"subscription to group {self.group!r} is closed")
        if self._group is None:
            self._next_commit = time.monotonic() + self._commit_interval_s
            self._group = self._broker._join(self)
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Commit what is committable, then leave the group. Idempotent."""
        if self._closed:
            return
        if self._group is not None:
            self._commit_now()
        self._leave()
        await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        """Leave without committing, as a crashed member: unacked records go to the next owner."""
        if not self._closed:
            self._leave()
        await anyio.lowlevel.checkpoint()

    def _leave(self) -> None:
        self._closed = True
        group, self._group = self._group, None
        self._claims.clear()
        if group is not None:
            self._broker._leave(self, group)
        self._order = []
        self._current = None
        self._wake()

    # --- iteration

    async def __anext__(self) -> Delivery:
        """The next record from an assigned, unpaused partition; waits for one.

        Raises:
            StopAsyncIteration: the subscription was closed or aborted.
            BrokerNotStartedError: the subscription was never started.
        """
        self._ops += 1
        if self._ops >= _CHECKPOINT_EVERY:
            self._ops = 0
            await anyio.lowlevel.checkpoint()
        while True:
            claim = self._current
            if claim is not None:
                offset = claim.position
                if offset < claim.end:
                    claim.position = offset + 1
                    return _stored_delivery(claim, offset, claim.records[offset])
            if self._group is None:
                if self._closed:
                    raise StopAsyncIteration
                raise BrokerNotStartedError("subscription is not started: use `async with sub:`")
            if not self._select():
                await self._wait()

    async def next_batch(self) -> list[Delivery]:
        """Every record left of the partition batch being handed out (waits for one).

        Raises:
            StopAsyncIteration: the subscription was closed or aborted.
            BrokerNotStartedError: the subscription was never started.
        """
        if self._ops >= _CHECKPOINT_EVERY:
            self._ops = 0
            await anyio.lowlevel.checkpoint()
        while True:
            claim = self._current
            if claim is not None:
                start, end = claim.position, claim.end
                if start < end:
                    claim.position = end
                    self._ops += end - start
                    return [
                        _stored_delivery(claim, offset, record)
                        for offset, record in enumerate(claim.records[start:end], start)
                    ]
            if self._group is None:
                if self._closed:
                    raise StopAsyncIteration
                raise BrokerNotStartedError("subscription is not started: use `async with sub:`")
            if not self._select():
                await self._wait()

    def _select(self) -> bool:
        # Next claim with unread records, round robin, handing out at most max_batch records
        # from one partition before moving on so one busy partition cannot starve the others.
        if time.monotonic() >= self._next_commit:
            self._commit_now()
        order = self._order
        count = len(order)
        for step in range(count):
            index = (self._rr + step) % count
            claim = order[index]
            available = len(claim.records)
            if not claim.paused and claim.position < available:
                self._rr = index + 1
                claim.end = min(available, claim.position + self._max_batch)
                self._current = claim
                return True
        self._current = None
        return False

    async def _wait(self) -> None:
        event = self._event = anyio.Event()
        watched = [
            self._broker._topics[claim.topic][claim.tp.partition]
            for claim in self._order
            if not claim.paused
        ]
        for part in watched:
            part.waiters.add(self)
        try:
            # Wake at least every commit interval, so acks made while idle still get committed.
            with anyio.move_on_after(self._commit_interval_s):
                await event.wait()
        finally:
            self._event = None
            for part in watched:
                part.waiters.discard(self)

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            event.set()

    # --- flow control

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""
        return frozenset(self._claims)

    def pause(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Stop handing out records from ``partitions`` (default: all owned).

        Partitions this member does not own are ignored (they may have just moved away).

        Raises:
            BrokerClosedError: the subscription is closed.
        """
        self._check_open()
        for tp in self._claims if partitions is None else partitions:
            claim = self._claims.get(TopicPartition(*tp))
            if claim is not None:
                claim.paused = True
                if self._current is claim:
                    self._current = None

    def resume(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Hand out records from ``partitions`` again (default: all paused ones).

        Raises:
            BrokerClosedError: the subscription is closed.
        """
        self._check_open()
        for tp in self._claims if partitions is None else partitions:
            claim = self._claims.get(TopicPartition(*tp))
            if claim is not None:
                claim.paused = False
        self._wake()

    def paused(self) -> frozenset[TopicPartition]:
        """Owned partitions that are paused."""
        return frozenset(tp for tp, claim in self._claims.items() if claim.paused)

    async def commit(self) -> dict[TopicPartition, int]:
        """Commit each owned partition up to its contiguous acknowledged offset.

        Raises:
            BrokerClosedError: the subscription is closed.
        """
        self._check_open()
        done = self._commit_now()
        await anyio.lowlevel.checkpoint()
        return done

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"subscription to group {self.group!r} is closed")

    def _commit_now(self) -> dict[TopicPartition, int]:
        self._next_commit = time.monotonic() + self._commit_interval_s
        group = self._group
        done: dict[TopicPartition, int] = {}
        if group is None:
            return done
        for tp, claim in self._claims.items():
            offset = claim.tracker.committable
            if offset != claim.committed:
                group.committed[tp] = claim.committed = done[tp] = offset
        return done

    # --- rebalance steps (called by MemoryBroker._rebalance)

    def _revoke(self, keep: set[TopicPartition], group: _Group) -> None:
        lost = [tp for tp in self._claims if tp not in keep]
        if not lost:
            return
        for tp in lost:
            claim = self._claims.pop(tp)
            offset = claim.tracker.committable
            if offset != claim.committed:
                group.committed[tp] = offset
        self._order = list(self._claims.values())
        self._current = None

    def _assign(
        self, wanted: set[TopicPartition], group: _Group, topics: dict[str, list[_Partition]]
    ) -> None:
        gained = [tp for tp in wanted if tp not in self._claims]
        if not gained:
            return
        for tp in sorted(gained):
            part = topics[tp.topic][tp.partition]
            committed = group.committed.get(tp)
            if committed is not None:
                position = committed
            else:
                position = 0 if self._from_beginning else len(part.records)
            self._claims[tp] = _Claim(tp, part, position, committed)
        self._order = list(self._claims.values())
        self._wake()


def _stored_delivery(
    claim: _Claim,
    offset: int,
    record: _Record,
) -> Delivery:
    envelope, key, value, headers = record
    if envelope is None:
        return _raw_delivery(claim, offset, key, value, headers)
    return Delivery(
        topic=claim.topic,
        partition=claim.tp.partition,
        offset=offset,
        tracker=claim.tracker,
        envelope=envelope,
        key=key,
        value=envelope.body,
    )


def _raw_delivery(
    claim: _Claim,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> Delivery:
    partition = claim.tp.partition
    try:
        envelope = envelope_from_record(
            topic=claim.topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
        )
    except InvalidRecordError as error:
        return Delivery(
            topic=claim.topic,
            partition=partition,
            offset=offset,
            tracker=claim.tracker,
            envelope=None,
            error=error,
            key=key,
            value=value,
            headers=headers,
        )
    return Delivery(
        topic=claim.topic,
        partition=partition,
        offset=offset,
        tracker=claim.tracker,
        envelope=envelope,
        key=key,
        value=value,
        headers=headers,
    )
