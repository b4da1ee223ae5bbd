"""The Kafka broker, on aiokafka (works against Apache Kafka and against Tansu).

This is the only module that imports aiokafka, so importing :mod:`runtime.bus` stays light.
aiokafka is asyncio-only, so a :class:`KafkaBroker` must run under anyio's asyncio backend.

Consumers never auto-commit: each :class:`KafkaSubscription` commits, per partition, the
contiguous acknowledged offset (:class:`~runtime.bus.base.OffsetTracker`) every
``commit_interval_s`` while it is iterated, when partitions are revoked in a rebalance, and on
close. :meth:`KafkaSubscription.abort` stops the consumer without committing, like a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

import anyio

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
    from aiokafka import TopicPartition as KafkaTP
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import ConsumerStoppedError, KafkaError
except ImportError as exc:  # pragma: no cover - aiokafka is a core dependency
    raise ImportError(
        "KafkaBroker needs aiokafka: pip install greenroom (it is a core dependency)"
    ) from exc

from runtime.bus.base import (
    Broker,
    BrokerClosedError,
    BrokerError,
    BrokerNotStartedError,
    BrokerUnavailableError,
    Delivery,
    OffsetTracker,
    Subscription,
    TopicPartition,
)
from runtime.logging import get_logger
from runtime.messages import Envelope, InvalidRecordError, envelope_from_record, envelope_to_headers

if TYPE_CHECKING:
    from runtime.config import Settings

__all__ = ["KafkaBroker", "KafkaSubscription"]

_log = get_logger("runtime.bus.kafka")

_TOPIC_ALREADY_EXISTS = 36


@final
class KafkaBroker(Broker):
    """A :class:`~runtime.bus.base.Broker` on a Kafka-protocol cluster.

    Producers wait for ``acks=all`` and are idempotent when ``idempotence`` is on (turn it off for
    Tansu, which refuses InitProducerId). ``fetch_max_wait_ms`` bounds how long a fetch waits for
    data; keep it ~5 ms on Tansu, whose waiting fetches are not woken by new records.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        idempotence: bool = True,
        fetch_max_wait_ms: int = 100,
        connect_timeout_s: float = 10.0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        max_batch: int = 500,
        commit_interval_s: float = 0.5,
        linger_ms: int = 1,
        join_timeout_s: float = 60.0,
        client_id: str = "greenroom",
    ) -> None:
        if not bootstrap:
            raise BrokerError("KafkaBroker needs a bootstrap address (GREENROOM_KAFKA_BOOTSTRAP)")
        self.bootstrap = bootstrap
        self.idempotence = idempotence
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.connect_timeout_s = connect_timeout_s
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_batch = max_batch
        self.commit_interval_s = commit_interval_s
        self.linger_ms = linger_ms
        self.join_timeout_s = join_timeout_s
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaBroker:
        """A broker configured from the ``kafka_*`` settings and ``commit_interval_s``."""
        return cls(
            settings.kafka_bootstrap,
            idempotence=settings.kafka_idempotence,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            connect_timeout_s=settings.kafka_connect_timeout_s,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            max_batch=settings.kafka_max_batch,
            commit_interval_s=settings.commit_interval_s,
            linger_ms=settings.kafka_linger_ms,
        )

    # --- lifecycle

    async def start(self) -> None:
        """Connect the producer and the admin client.

        Raises:
            BrokerUnavailableError: the cluster did not answer within ``connect_timeout_s``; the
                message names the bootstrap address.
        """
        if self._producer is not None:
            return
        timeout_ms = max(1000, int(self.connect_timeout_s * 1000))
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=self.idempotence,
            linger_ms=self.linger_ms,
            request_timeout_ms=timeout_ms,
        )
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=timeout_ms,
        )
        try:
            await _connect(self.bootstrap, self.connect_timeout_s, producer.start(), admin.start())
        except BaseException:
            await _quietly(producer.stop())
            await _quietly(admin.close())
            raise
        self._producer = producer
        self._admin = admin

    async def stop(self) -> None:
        """Flush pending publishes and disconnect. Idempotent."""
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            await producer.stop()
        if admin is not None:
            await admin.close()

    def _started(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        if self._producer is None or self._admin is None:
            raise BrokerNotStartedError(
                f"KafkaBroker({self.bootstrap}) is not started: use `async with broker:`"
            )
        return self._producer, self._admin

    # --- topics

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        """Create each topic with its partition count; an existing topic is fine.

        Raises:
            BrokerNotStartedError: before ``start()``.
            BrokerError: the cluster refused a topic for any other reason; names the topic.
        """
        _, admin = self._started()
        if not topics:
            return
        new = [NewTopic(name, count, 1) for name, count in topics.items()]
        try:
            response = await admin.create_topics(new)
        except KafkaError as exc:
            raise BrokerError(f"creating topics {sorted(topics)} failed: {exc!r}") from exc
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                detail = rest[0] if rest and rest[0] else ""
                raise BrokerError(f"creating topic {name!r} failed: error code {code} {detail}")

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``.

        Raises:
            BrokerNotStartedError: before ``start()``.
            BrokerError: the topic does not exist.
        """
        _, admin = self._started()
        try:
            described = await admin.describe_topics([topic])
        except KafkaError as exc:
            raise BrokerError(f"describing topic {topic!r} failed: {exc!r}") from exc
        for entry in described:
            if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
                return len(entry["partitions"])
        raise BrokerError(f"unknown topic {topic!r}")

    # --- publishing

    async def publish(self, topic: str, envelope: Envelope, *, key: str | None = None) -> None:
        """Send ``envelope`` and wait for ``acks=all``.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the cluster refused the record.
        """
        producer = self._producer
        if producer is None:
            self._started()
            return
        text = envelope.key if key is None else key
        try:
            future = await producer.send(
                topic,
                envelope.body,
                key=text.encode() if text else None,
                headers=envelope_to_headers(envelope),
            )
            await future
        except KafkaError as exc:
            raise BrokerError(f"publish to {topic!r} failed: {exc!r}") from exc

    async def publish_many(self, topic: str, envelopes: Iterable[Envelope]) -> None:
        """Send all envelopes pipelined (keys from each), then wait for every ack.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the cluster refused a record.
        """
        producer, _ = self._started()
        send = producer.send
        futures: list[asyncio.Future[Any]] = []
        try:
            for envelope in envelopes:
                key = envelope.key
                futures.append(
                    await send(
                        topic,
                        envelope.body,
                        key=key.encode() if key else None,
                        headers=envelope_to_headers(envelope),
                    )
                )
            for future in futures:
                await future
        except KafkaError as exc:
            raise BrokerError(f"publish to {topic!r} failed: {exc!r}") from exc

    async def publish_raw(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Send a record as-is and wait for ``acks=all``.

        Raises:
            BrokerNotStartedError: before ``start()`` or after ``stop()``.
            BrokerError: the cluster refused the record.
        """
        producer, _ = self._started()
        try:
            future = await producer.send(topic, value, key=key or None, headers=list(headers))
            await future
        except KafkaError as exc:
            raise BrokerError(f"publish to {topic!r} failed: {exc!r}") from exc

    # --- consuming

    def subscribe(
        self, topics: Sequence[str], group: str, *, from_beginning: bool = True
    ) -> KafkaSubscription:
        """A new, not yet started member of ``group`` reading ``topics``."""
        return KafkaSubscription(self, tuple(topics), group, from_beginning=from_beginning)

    async def committed(self, group: str, partition: TopicPartition) -> int | None:
        """The group's committed offset for ``partition``, or None if it never committed.

        Raises:
            BrokerNotStartedError: before ``start()``.
            BrokerError: the cluster could not answer.
        """
        _, admin = self._started()
        tp = KafkaTP(partition[0], partition[1])
        try:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
        except KafkaError as exc:
            raise BrokerError(f"reading offsets of group {group!r} failed: {exc!r}") from exc
        found = offsets.get(tp)
        if found is None or found.offset < 0:
            return None
        return int(found.offset)


@final
class KafkaSubscription(Subscription):
    """One member of a consumer group, over an ``AIOKafkaConsumer``.

    :meth:`start` returns once the member has its first assignment (possibly empty). After
    :meth:`close` or :meth:`abort`, iteration ends; other calls raise BrokerClosedError.
    """

    def __init__(
        self, broker: KafkaBroker, topics: tuple[str, ...], group: str, *, from_beginning: bool
    ) -> None:
        self.topics = topics
        self.group = group
        self._broker = broker
        self._from_beginning = from_beginning
        self._consumer: AIOKafkaConsumer | None = None
        self._closed = False
        self._assigned = anyio.Event()
        self._trackers: dict[KafkaTP, OffsetTracker] = {}
        self._committed: dict[KafkaTP, int] = {}
        self._paused: set[KafkaTP] = set()
        self._batches: deque[tuple[KafkaTP, list[Any]]] = deque()
        self._records: list[Any] = []
        self._index = 0
        self._tracker: OffsetTracker | None = None
        self._current: KafkaTP | None = None
        self._next_commit = 0.0
        self._timeout_ms = max(1, int(broker.commit_interval_s * 1000))

    # --- lifecycle

    async def start(self) -> None:
        """Connect, join the group and wait for the first assignment.

        Raises:
            BrokerNotStartedError: the broker is not started.
            BrokerClosedError: this subscription was closed.
            BrokerUnavailableError: the cluster did not answer within the connect timeout, or
                the group did not settle within ``join_timeout_s``; names the address.
        """
        broker = self._broker
        broker._started()
        if self._closed:
            raise BrokerClosedError(f"subscription to group {self.group!r} is closed")
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            client_id=broker.client_id,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self._from_beginning else "latest",
            fetch_max_wait_ms=broker.fetch_max_wait_ms,
            session_timeout_ms=broker.session_timeout_ms,
            heartbeat_interval_ms=broker.heartbeat_interval_ms,
            max_poll_records=broker.max_batch,
            request_timeout_ms=max(broker.session_timeout_ms + 5000, 10_000),
        )
        try:
            await _connect(broker.bootstrap, broker.connect_timeout_s, consumer.start())
            consumer.subscribe(list(self.topics), listener=_Listener(self))
            self._consumer = consumer
            with anyio.move_on_after(broker.join_timeout_s) as scope:
                await self._assigned.wait()
        except BaseException:
            self._consumer = None
            await _quietly(consumer.stop())
            raise
        if scope.cancelled_caught:
            self._consumer = None
            await _quietly(consumer.stop())
            raise BrokerUnavailableError(
                f"group {self.group!r} at {broker.bootstrap} did not assign partitions "
                f"within {broker.join_timeout_s}s"
            )
        self._next_commit = time.monotonic() + broker.commit_interval_s

    async def close(self) -> None:
        """Commit what is committable (best effort), then leave the group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await self._commit(consumer, raise_errors=False)
        finally:
            self._drop_buffers()
            await consumer.stop()

    async def abort(self) -> None:
        """Stop the consumer without committing, as a crashed member would."""
        self._closed = True
        consumer, self._consumer = self._consumer, None
        self._drop_buffers()
        if consumer is not None:
            await consumer.stop()

    def _drop_buffers(self) -> None:
        self._batches.clear()
        self._records = []
        self._index = 0
        self._current = None
        self._tracker = None

    # --- iteration

    async def __anext__(self) -> Delivery:
        """The next record from an assigned, unpaused partition; waits for one.

        A record that is not a valid envelope comes as a Delivery with ``envelope=None`` and
        ``error`` set; iteration goes on after it.

        Raises:
            StopAsyncIteration: the subscription was closed or aborted.
            BrokerNotStartedError: the subscription was never started.
        """
        while True:
            index = self._index
            records = self._records
            if index < len(records):
                self._index = index + 1
                tracker = self._tracker
                assert tracker is not None
                return _delivery(records[index], tracker)
            if not self._take_batch():
                await self._fetch()

    async def next_batch(self) -> list[Delivery]:
        """Every record left of the current fetched partition batch (waits for one).

        Raises:
            StopAsyncIteration: the subscription was closed or aborted.
            BrokerNotStartedError: the subscription was never started.
        """
        while True:
            index = self._index
            records = self._records
            if index < len(records):
                self._index = len(records)
                tracker = self._tracker
                assert tracker is not None
                return [_delivery(record, tracker) for record in records[index:]]
            if not self._take_batch():
                await self._fetch()

    def _take_batch(self) -> bool:
        batches = self._batches
        while batches:
            tp, records = batches.popleft()
            if tp in self._paused or not records:
                continue
            tracker = self._trackers.get(tp)
            if tracker is None:
                # First records of this partition since it was assigned: they start at the
                # consumer's position, which is the committed offset (or the reset point).
                tracker = self._trackers[tp] = OffsetTracker(records[0].offset)
                self._committed.setdefault(tp, records[0].offset)
            self._current = tp
            self._tracker = tracker
            self._records = records
            self._index = 0
            return True
        self._current = None
        return False

    async def _fetch(self) -> None:
        consumer = self._consumer
        if consumer is None:
            if self._closed:
                raise StopAsyncIteration
            raise BrokerNotStartedError("subscription is not started: use `async with sub:`")
        if time.monotonic() >= self._next_commit:
            await self._commit(consumer, raise_errors=False)
        try:
            # Bounded wait, so acks made while idle are committed every commit interval.
            batches = await consumer.getmany(
                timeout_ms=self._timeout_ms, max_records=self._broker.max_batch
            )
        except ConsumerStoppedError:
            raise StopAsyncIteration from None
        if self._consumer is None:
            raise StopAsyncIteration
        self._batches.extend(batches.items())

    # --- flow control

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        return frozenset(TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment())

    def pause(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Stop fetching from ``partitions`` (default: all owned); others are ignored.

        Records fetched but not yet handed out are dropped and re-read after :meth:`resume`.

        Raises:
            BrokerClosedError: the subscription is closed.
        """
        consumer = self._check_open()
        owned = consumer.assignment()
        wanted = owned if partitions is None else {KafkaTP(t, p) for t, p in partitions} & owned
        if not wanted:
            return
        self._paused |= wanted
        consumer.pause(*wanted)
        # Rewind over buffered records of paused partitions, so none is skipped.
        if self._current in wanted and self._index < len(self._records):
            consumer.seek(self._current, self._records[self._index].offset)
            self._records = []
            self._index = 0
        kept: deque[tuple[KafkaTP, list[Any]]] = deque()
        for tp, records in self._batches:
            if tp in wanted:
                if records:
                    consumer.seek(tp, records[0].offset)
            else:
                kept.append((tp, records))
        self._batches = kept

    def resume(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Fetch again from ``partitions`` (default: all paused ones).

        Raises:
            BrokerClosedError: the subscription is closed.
        """
        consumer = self._check_open()
        wanted = (
            set(self._paused)
            if partitions is None
            else {KafkaTP(t, p) for t, p in partitions} & self._paused
        )
        self._paused -= wanted
        owned = wanted & consumer.assignment()
        if owned:
            consumer.resume(*owned)

    def paused(self) -> frozenset[TopicPartition]:
        """Owned partitions that are paused."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        owned = consumer.assignment()
        return frozenset(TopicPartition(tp.topic, tp.partition) for tp in self._paused & owned)

    def _check_open(self) -> AIOKafkaConsumer:
        consumer = self._consumer
        if consumer is None:
            raise BrokerClosedError(f"subscription to group {self.group!r} is not open")
        return consumer

    async def commit(self) -> dict[TopicPartition, int]:
        """Commit each owned partition up to its contiguous acknowledged offset.

        Raises:
            BrokerClosedError: the subscription is closed.
            BrokerError: the cluster refused the commit (e.g. during a rebalance).
        """
        return await self._commit(self._check_open(), raise_errors=True)

    async def _commit(
        self, consumer: AIOKafkaConsumer, *, raise_errors: bool
    ) -> dict[TopicPartition, int]:
        self._next_commit = time.monotonic() + self._broker.commit_interval_s
        offsets = self._committable(self._trackers)
        if not offsets:
            return {}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            if raise_errors:
                raise BrokerError(f"commit for group {self.group!r} failed: {exc!r}") from exc
            # The next commit (or the new owner after a rebalance) covers these offsets.
            _log.warning("commit_failed", group=self.group, error=repr(exc))
            return {}
        self._committed.update(offsets)
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    def _committable(self, trackers: Mapping[KafkaTP, OffsetTracker]) -> dict[KafkaTP, int]:
        committed = self._committed
        return {
            tp: tracker.committable
            for tp, tracker in trackers.items()
            if tracker.committable != committed.get(tp)
        }

    # --- rebalance (called by _Listener inside aiokafka's group coordination)

    async def _on_revoked(self, revoked: set[KafkaTP]) -> None:
        consumer = self._consumer
        gone = {tp: self._trackers[tp] for tp in revoked if tp in self._trackers}
        offsets = self._committable(gone)
        if consumer is not None and offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # The new owner re-reads from the older commit: duplicates, never loss.
                _log.warning("commit_on_revoke_failed", group=self.group, error=repr(exc))
        for tp in revoked:
            self._trackers.pop(tp, None)
            self._committed.pop(tp, None)
        if self._current in revoked:
            self._records = []
            self._index = 0
            self._current = None
        self._batches = deque((tp, rs) for tp, rs in self._batches if tp not in revoked)

    def _on_assigned(self, assigned: set[KafkaTP]) -> None:
        consumer = self._consumer
        # aiokafka forgets pauses across a rebalance; keep ours, so backpressure holds.
        still_paused = self._paused & assigned
        self._paused = still_paused
        if consumer is not None and still_paused:
            consumer.pause(*still_paused)
        self._assigned.set()


@final
class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        await self._subscription._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        self._subscription._on_assigned(set(assigned))


def _delivery(record: Any, tracker: OffsetTracker) -> Delivery:
    """A Delivery for one aiokafka ConsumerRecord; an invalid envelope becomes its error."""
    try:
        envelope = envelope_from_record(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers,
        )
    except InvalidRecordError as error:
        return Delivery(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            tracker=tracker,
            envelope=None,
            error=error,
            key=record.key,
            value=record.value,
            headers=record.headers,
        )
    return Delivery(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        tracker=tracker,
        envelope=envelope,
        key=record.key,
        value=record.value,
        headers=record.headers,
    )


async def _connect(bootstrap: str, timeout_s: float, *starts: Any) -> None:
    """Await each client's ``start()`` within ``timeout_s`` in total.

    aiokafka may retry a bootstrap for ever; the deadline turns that into a clear error.

    Raises:
        BrokerUnavailableError: naming ``bootstrap``, on timeout or a connection error.
    """
    try:
        with anyio.fail_after(timeout_s):
            for start in starts:
                await start
    except TimeoutError as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} did not answer within {timeout_s}s"
        ) from exc
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from exc
    finally:
        for start in starts:
            start.close()  # a coroutine never awaited (after an early error) must not warn


async def _quietly(closing: Any) -> None:
    # Cleanup after a failed start: the original error is what the caller needs to see.
    try:
        await closing
    except (KafkaError, OSError, RuntimeError) as exc:
        _log.debug("cleanup_failed", error=repr(exc))
