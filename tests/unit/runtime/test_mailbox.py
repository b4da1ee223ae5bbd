"""The mailbox: key order, concurrency across keys, ack after the handler, bound, backpressure."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest

from runtime.bus.base import Delivery, OffsetTracker, TopicPartition
from runtime.bus.memory import MemoryBroker
from runtime.mailbox import Mailbox, lane_of
from runtime.messages import Envelope
from tests.support.wait import eventually


def _delivery(tracker: OffsetTracker, offset: int, key: str, partition: int = 0) -> Delivery:
    return Delivery(
        topic="t",
        partition=partition,
        offset=offset,
        tracker=tracker,
        envelope=Envelope.new("x.Msg", str(offset).encode(), key=key),
    )


async def test_same_key_in_order_and_different_keys_concurrently_up_to_the_lane_count() -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    peak = 0
    overlap_same_key = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal peak, overlap_same_key
        assert delivery.envelope is not None
        key = delivery.envelope.key
        if key in running:
            overlap_same_key += 1
        running.add(key)
        peak = max(peak, len(running))
        for _ in range(3):  # interleave with other lanes
            await anyio.lowlevel.checkpoint()
        seen[key].append(int(delivery.envelope.body))
        running.discard(key)

    tracker = OffsetTracker(0)
    keys = [f"k{i}" for i in range(16)]
    mailbox = Mailbox(handler, actor="t", capacity=32, lanes=4)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(mailbox.run)
            for offset in range(400):
                await mailbox.put(_delivery(tracker, offset, keys[offset % len(keys)]))
            mailbox.close()
    for key, offsets in seen.items():
        assert offsets == sorted(offsets), key
    assert sum(len(v) for v in seen.values()) == 400
    assert overlap_same_key == 0
    assert 1 < peak <= 4
    assert tracker.committable == 400
    assert mailbox.held == 0


async def test_a_delivery_is_acked_only_after_its_handler_returned() -> None:
    release = anyio.Event()
    finished: list[int] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.offset == 0:
            await release.wait()
        finished.append(delivery.offset)

    tracker = OffsetTracker(0)
    mailbox = Mailbox(handler, actor="t", capacity=10, lanes=4)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(mailbox.run)
            first = _delivery(tracker, 0, "slow")
            await mailbox.put(first)
            later = [_delivery(tracker, i, f"fast{i}") for i in range(1, 4)]
            # Keys chosen to avoid the slow key's lane, so they can finish while it waits.
            later = [d for d in later if lane_of(d, 4) != lane_of(first, 4)]
            for delivery in later:
                await mailbox.put(delivery)
            await eventually(lambda: len(finished) == len(later))
            assert all(d.acked for d in later)
            assert not first.acked
            assert tracker.committable == 0  # the commit never passes the unfinished message
            release.set()
            mailbox.close()
    assert first.acked


async def test_a_failing_handler_leaves_its_delivery_unacked_and_stops_the_mailbox() -> None:
    async def handler(delivery: Delivery) -> None:
        raise OSError("bus refused the dead letter")

    tracker = OffsetTracker(0)
    mailbox = Mailbox(handler, actor="t", capacity=10, lanes=1)
    delivery = _delivery(tracker, 0, "k")

    async def feed_one() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mailbox.run)
            await mailbox.put(delivery)

    with anyio.fail_after(10), pytest.raises(ExceptionGroup) as caught:
        await feed_one()
    assert caught.group_contains(OSError)
    assert not delivery.acked
    assert tracker.committable == 0


async def test_a_full_mailbox_pauses_the_subscription_and_resumes_below_low_water() -> None:
    broker = MemoryBroker()
    async with broker:
        await broker.ensure_topics({"bp": 2})
        for i in range(40):
            await broker.publish("bp", Envelope.new("x.Msg", b"1", key=f"k{i}"))
        gate = anyio.Event()
        handled = 0

        async def handler(delivery: Delivery) -> None:
            nonlocal handled
            await gate.wait()
            handled += 1

        async with broker.subscribe(["bp"], "g") as sub:
            mailbox = Mailbox(
                handler, actor="bp", capacity=8, lanes=2, low_water=2, subscription=sub
            )
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    await tg.start(mailbox.run)

                    async def consume() -> None:
                        async for delivery in sub:
                            await mailbox.put(delivery)

                    tg.start_soon(consume)
                    await eventually(lambda: mailbox.paused)
                    assert mailbox.held == 8  # the bound, never more
                    assert sub.paused() == {TopicPartition("bp", 0), TopicPartition("bp", 1)}
                    gate.set()
                    await eventually(lambda: handled == 40)
                    assert mailbox.pauses >= 1
                    assert mailbox.resumes >= 1
                    assert not sub.paused()
                    tg.cancel_scope.cancel()


def test_keyless_records_use_their_partition_and_keys_are_stable() -> None:
    tracker = OffsetTracker(0)
    raw = Delivery(topic="t", partition=5, offset=0, tracker=tracker, envelope=None)
    assert lane_of(raw, 4) == 1
    a = _delivery(tracker, 1, "order-1")
    b = _delivery(tracker, 2, "order-1")
    assert lane_of(a, 7) == lane_of(b, 7)


def test_capacity_and_lanes_must_be_positive() -> None:
    async def handler(delivery: Delivery) -> None: ...

    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(handler, actor="t", capacity=0, lanes=1)
