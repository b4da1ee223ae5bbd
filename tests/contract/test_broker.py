"""One conformance suite for every Broker implementation (DESIGN.md, delivery contract).

Each test runs against MemoryBroker and against KafkaBroker on Tansu. Waits are bounded with
``anyio.fail_after`` so a broken implementation fails instead of hanging; no test asserts a time.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio
import pytest

from runtime.bus.base import (
    Broker,
    BrokerNotStartedError,
    BrokerUnavailableError,
    Delivery,
    Subscription,
    TopicPartition,
)
from runtime.messages import Envelope, InvalidRecordError
from tests.contract.conftest import BrokerMaker

WAIT = 60.0  # generous bound: a Tansu group join or rebalance takes a few seconds


async def take(sub: Subscription, count: int, *, ack: bool = True) -> list[Delivery]:
    """The next ``count`` deliveries of ``sub`` (acknowledged unless ``ack`` is False)."""
    got: list[Delivery] = []
    with anyio.fail_after(WAIT):
        async for delivery in sub:
            if ack:
                delivery.ack()
            got.append(delivery)
            if len(got) == count:
                break
    return got


async def nothing_arrives(sub: Subscription, seconds: float = 1.5) -> bool:
    """True when ``sub`` hands out no delivery for ``seconds`` (used only to show a pause)."""
    with anyio.move_on_after(seconds):
        await sub.__anext__()
        return False
    return True


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds; fail after WAIT seconds."""
    with anyio.fail_after(WAIT):
        # Assignments change inside the broker's own tasks, which offer no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.05)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.envelope.id for d in deliveries if d.envelope is not None]


def envelopes(count: int, *, keys: int) -> list[Envelope]:
    return [Envelope.new("test.Ping", b"%d" % i, key=f"key-{i % keys}") for i in range(count)]


pytestmark = pytest.mark.contract


async def test_headers_round_trip(broker: Broker, unique: str) -> None:
    topic = f"headers-{unique}"
    await broker.ensure_topics({topic: 1})
    sent = Envelope(
        id="0190aa00000000000000000000000001",
        type="orders.PlaceOrder",
        key="order-7",
        body=b'{"qty":2}',
        correlation_id="corr-1",
        causation_id="cause-1",
        reply_to="replies.edge-1",
        deadline=1_900_000_000_000,
        attempt=3,
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    await broker.publish(topic, sent)
    async with broker.subscribe([topic], f"g-{unique}") as sub:
        [got] = await take(sub, 1)
    assert got.error is None
    assert got.envelope == sent


async def test_same_key_keeps_order(broker: Broker, unique: str) -> None:
    topic = f"order-{unique}"
    await broker.ensure_topics({topic: 3})
    sent = envelopes(60, keys=4)
    await broker.publish_many(topic, sent)
    async with broker.subscribe([topic], f"g-{unique}") as sub:
        got = await take(sub, 60)
    assert sorted(ids(got)) == sorted(e.id for e in sent)
    for key in {e.key for e in sent}:
        expected = [e.id for e in sent if e.key == key]
        received = [d.envelope.id for d in got if d.envelope is not None and d.envelope.key == key]
        assert received == expected, key
    # and a key always lands on one partition
    for key in {e.key for e in sent}:
        assert len({d.partition for d in got if d.envelope and d.envelope.key == key}) == 1


async def test_group_of_three_shares_the_load(broker: Broker, unique: str) -> None:
    topic, group = f"share-{unique}", f"g-{unique}"
    await broker.ensure_topics({topic: 3})
    members = [broker.subscribe([topic], group) for _ in range(3)]
    async with anyio.create_task_group() as tg:
        for member in members:
            tg.start_soon(member.start)
    try:
        everything = {TopicPartition(topic, p) for p in range(3)}
        await wait_until(
            lambda: (
                all(len(m.assignment()) == 1 for m in members)
                and set().union(*(m.assignment() for m in members)) == everything
            )
        )
        sent = envelopes(90, keys=30)
        await broker.publish_many(topic, sent)
        received: list[list[Delivery]] = [[] for _ in members]
        done = anyio.Event()

        async def consume(index: int) -> None:
            async for delivery in members[index]:
                delivery.ack()
                received[index].append(delivery)
                if sum(map(len, received)) >= len(sent):
                    done.set()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for index in range(3):
                    tg.start_soon(consume, index)
                await done.wait()
                tg.cancel_scope.cancel()
        assert sorted(i for r in received for i in ids(r)) == sorted(e.id for e in sent)
        assert all(received), "every member of the group got a share"
        for member, got in zip(members, received, strict=True):
            assert {d.topic_partition for d in got} <= member.assignment()
    finally:
        for member in members:
            await member.close()


async def test_rebalance_when_a_member_leaves(broker: Broker, unique: str) -> None:
    topic, group = f"leave-{unique}", f"g-{unique}"
    await broker.ensure_topics({topic: 2})
    first = broker.subscribe([topic], group)
    second = broker.subscribe([topic], group)
    await first.start()
    try:
        await second.start()
        await wait_until(lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1)
        sent = envelopes(40, keys=16)
        await broker.publish_many(topic, sent)
        # The leaving member takes two records, acknowledges only the first, and leaves.
        held = await take(second, 2, ack=False)
        held[0].ack()
        await second.close()
        await wait_until(lambda: len(first.assignment()) == 2)
        finished = held[0].envelope.id if held[0].envelope else ""
        seen = await take_ids(first, {e.id for e in sent} - {finished})
        assert {e.id for e in sent} - {finished} <= seen, "nothing is lost when a member leaves"
        assert held[1].envelope is not None
        assert held[1].envelope.id in seen, "the unacknowledged record moved to the survivor"
    finally:
        await first.close()
        await second.close()


async def take_ids(sub: Subscription, wanted: set[str]) -> set[str]:
    """Consume (acking) until every id in ``wanted`` was seen; returns all ids seen."""
    seen: set[str] = set()
    with anyio.fail_after(WAIT):
        async for delivery in sub:
            delivery.ack()
            if delivery.envelope is not None:
                seen.add(delivery.envelope.id)
            if wanted <= seen:
                break
    return seen


async def test_unacknowledged_redelivered_after_consumer_dies(broker: Broker, unique: str) -> None:
    topic, group = f"abort-{unique}", f"g-{unique}"
    await broker.ensure_topics({topic: 1})
    sent = envelopes(6, keys=1)
    await broker.publish_many(topic, sent)
    doomed = broker.subscribe([topic], group)
    await doomed.start()
    got = await take(doomed, 5, ack=False)
    got[0].ack()
    got[1].ack()
    assert await doomed.commit() == {TopicPartition(topic, 0): 2}
    got[4].ack()  # acknowledged but not committed: a crash may repeat it, never lose it
    await doomed.abort()
    async with broker.subscribe([topic], group) as survivor:
        again = await take(survivor, 4)
    assert ids(again) == [e.id for e in sent[2:]]
    assert [d.offset for d in again] == [2, 3, 4, 5]


async def test_commit_covers_only_contiguous_acknowledged_offsets(
    broker: Broker, unique: str
) -> None:
    topic, group = f"commit-{unique}", f"g-{unique}"
    tp = TopicPartition(topic, 0)
    await broker.ensure_topics({topic: 1})
    await broker.publish_many(topic, envelopes(4, keys=1))
    async with broker.subscribe([topic], group) as sub:
        got = await take(sub, 4, ack=False)
        assert [d.offset for d in got] == [0, 1, 2, 3]
        for index in (0, 1, 3):
            got[index].ack()
        assert await sub.commit() == {tp: 2}
        assert await broker.committed(group, tp) == 2
        assert await sub.commit() == {}, "nothing new to commit"
        got[2].ack()
        assert await sub.commit() == {tp: 4}
    assert await broker.committed(group, tp) == 4
    assert await broker.committed(f"other-{unique}", tp) is None


async def test_close_commits_what_is_committable(broker: Broker, unique: str) -> None:
    topic, group = f"close-{unique}", f"g-{unique}"
    tp = TopicPartition(topic, 0)
    await broker.ensure_topics({topic: 1})
    await broker.publish_many(topic, envelopes(3, keys=1))
    async with broker.subscribe([topic], group) as sub:
        got = await take(sub, 3, ack=False)
        got[0].ack()
        got[2].ack()
    assert await broker.committed(group, tp) == 1


async def test_publish_before_start_raises(make_broker: BrokerMaker, unique: str) -> None:
    broker = make_broker()
    envelope = Envelope.new("test.Ping", b"", key="k")
    with pytest.raises(BrokerNotStartedError):
        await broker.publish(f"early-{unique}", envelope)
    with pytest.raises(BrokerNotStartedError):
        await broker.publish_raw(f"early-{unique}", key=None, value=b"x")
    with pytest.raises(BrokerNotStartedError):
        await broker.subscribe([f"early-{unique}"], f"g-{unique}").start()
    async with broker:
        await broker.ensure_topics({f"early-{unique}": 1})
        await broker.publish(f"early-{unique}", envelope)
    with pytest.raises(BrokerNotStartedError):
        await broker.publish(f"early-{unique}", envelope)


async def test_pause_stops_delivery_and_resume_restarts_it(broker: Broker, unique: str) -> None:
    topic = f"pause-{unique}"
    tp = TopicPartition(topic, 0)
    await broker.ensure_topics({topic: 1})
    sent = envelopes(6, keys=1)
    await broker.publish_many(topic, sent)
    async with broker.subscribe([topic], f"g-{unique}") as sub:
        before = await take(sub, 3)
        sub.pause()
        assert sub.paused() == {tp}
        assert await nothing_arrives(sub)
        sub.resume()
        assert sub.paused() == frozenset()
        after = await take(sub, 3)
    assert ids(before) + ids(after) == [e.id for e in sent]


async def test_invalid_record_surfaces_as_typed_error(broker: Broker, unique: str) -> None:
    topic = f"invalid-{unique}"
    await broker.ensure_topics({topic: 1})
    await broker.publish_raw(topic, key=b"k", value=b"not an envelope", headers=[("x", b"1")])
    valid = Envelope.new("test.Ping", b"ok", key="k")
    await broker.publish(topic, valid)
    async with broker.subscribe([topic], f"g-{unique}") as sub:
        bad, good = await take(sub, 2)
    assert bad.envelope is None
    assert isinstance(bad.error, InvalidRecordError)
    assert (bad.error.topic, bad.error.partition, bad.error.offset) == (topic, 0, 0)
    assert bad.value == b"not an envelope"
    assert bad.key == b"k"
    assert list(bad.headers) == [("x", b"1")]
    assert good.error is None
    assert good.envelope == valid


async def take_batches(sub: Subscription, count: int) -> list[list[Delivery]]:
    """Batches from ``sub`` until they hold ``count`` deliveries (none acknowledged)."""
    got: list[list[Delivery]] = []
    with anyio.fail_after(WAIT):
        async for batch in sub.batches():
            got.append(batch)
            if sum(map(len, got)) >= count:
                break
    return got


async def test_batches_hand_out_one_partition_in_offset_order(broker: Broker, unique: str) -> None:
    topic, group = f"batch-{unique}", f"g-{unique}"
    await broker.ensure_topics({topic: 3})
    sent = envelopes(60, keys=6)
    await broker.publish_many(topic, sent)
    async with broker.subscribe([topic], group) as sub:
        batches = await take_batches(sub, 60)
        for batch in batches:
            assert batch, "a batch is never empty"
            assert len({d.partition for d in batch}) == 1, "a batch comes from one partition"
            offsets = [d.offset for d in batch]
            assert offsets == list(range(offsets[0], offsets[0] + len(batch)))
        deliveries = [d for batch in batches for d in batch]
        assert sorted(ids(deliveries)) == sorted(e.id for e in sent)
        for delivery in deliveries:
            delivery.ack()


async def test_batch_deliveries_are_acknowledged_one_by_one(broker: Broker, unique: str) -> None:
    topic, group = f"batch-ack-{unique}", f"g-{unique}"
    tp = TopicPartition(topic, 0)
    await broker.ensure_topics({topic: 1})
    await broker.publish_many(topic, envelopes(5, keys=1))
    async with broker.subscribe([topic], group) as sub:
        got = [d for batch in await take_batches(sub, 5) for d in batch]
        assert [d.offset for d in got] == [0, 1, 2, 3, 4]
        for index in (0, 1, 3, 4):
            got[index].ack()
        assert await sub.commit() == {tp: 2}, "the unacknowledged offset 2 holds the commit"
        got[2].ack()
        assert await sub.commit() == {tp: 5}


async def test_batch_handed_out_before_a_pause_is_kept_and_nothing_skipped(
    broker: Broker, unique: str
) -> None:
    topic = f"batch-pause-{unique}"
    await broker.ensure_topics({topic: 1})
    sent = envelopes(50, keys=1)
    await broker.publish_many(topic, sent[:40])
    async with broker.subscribe([topic], f"g-{unique}") as sub:
        with anyio.fail_after(WAIT):
            first = await sub.next_batch()
        sub.pause()
        await broker.publish_many(topic, sent[40:])
        assert await nothing_arrives(sub)
        for delivery in first:
            delivery.ack()  # handed out before the pause: still valid, still acknowledged
        sub.resume()
        rest = [d for batch in await take_batches(sub, 50 - len(first)) for d in batch]
        for delivery in rest:
            delivery.ack()
    assert ids(first) + ids(rest) == [e.id for e in sent]


@pytest.mark.kafka
async def test_unreachable_kafka_fails_fast_naming_the_address() -> None:
    from runtime.bus.kafka import KafkaBroker

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        broker = KafkaBroker(f"127.0.0.1:{port}", connect_timeout_s=2.0)
        with anyio.fail_after(30), pytest.raises(BrokerUnavailableError) as caught:
            await broker.start()
    assert f"127.0.0.1:{port}" in str(caught.value)
    with pytest.raises(BrokerNotStartedError):
        await broker.publish("any", Envelope.new("test.Ping", b""))


@pytest.mark.kafka
async def test_silent_kafka_times_out_naming_the_address() -> None:
    from runtime.bus.kafka import KafkaBroker

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # accepts connections but never answers a request
        port = sock.getsockname()[1]
        broker = KafkaBroker(f"127.0.0.1:{port}", connect_timeout_s=1.0)
        with anyio.fail_after(30), pytest.raises(BrokerUnavailableError) as caught:
            await broker.start()
    assert f"127.0.0.1:{port}" in str(caught.value)
