"""OffsetTracker: a commit never passes an offset that is not acknowledged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtime.bus.base import Delivery, OffsetTracker
from runtime.messages import Envelope


def test_nothing_delivered_commits_the_start() -> None:
    tracker = OffsetTracker(17)
    assert tracker.committable == 17
    assert tracker.in_flight == 0


def test_gap_holds_the_commit_point() -> None:
    tracker = OffsetTracker(0)
    for offset in range(4):
        tracker.delivered(offset)
    for offset in (0, 1, 3):
        tracker.acked(offset)
    assert tracker.committable == 2
    assert tracker.in_flight == 1
    tracker.acked(2)
    assert tracker.committable == 4
    assert tracker.in_flight == 0


def test_repeated_and_unknown_acks_are_harmless() -> None:
    tracker = OffsetTracker(10)
    tracker.delivered(10)
    tracker.delivered(11)
    tracker.acked(10)
    tracker.acked(10)
    tracker.acked(3)
    assert tracker.committable == 11


def test_delivery_ack_is_idempotent() -> None:
    tracker = OffsetTracker(0)
    delivery = Delivery(
        topic="t", partition=0, offset=0, tracker=tracker, envelope=Envelope.new("t", b"")
    )
    assert tracker.committable == 0
    delivery.ack()
    delivery.ack()
    assert delivery.acked
    assert tracker.committable == 1
    assert delivery.topic_partition == ("t", 0)


@given(
    start=st.integers(min_value=0, max_value=1_000),
    count=st.integers(min_value=0, max_value=60),
    data=st.data(),
)
def test_committable_never_passes_an_unacked_offset(
    start: int, count: int, data: st.DataObject
) -> None:
    tracker = OffsetTracker(start)
    offsets = list(range(start, start + count))
    for offset in offsets:
        tracker.delivered(offset)
    order = data.draw(st.permutations(offsets))
    stop = data.draw(st.integers(min_value=0, max_value=len(order)))
    acked: set[int] = set()
    for offset in order[:stop]:
        tracker.acked(offset)
        acked.add(offset)
        # Everything below the commit point is acknowledged, and it is as high as that allows.
        point = tracker.committable
        assert all(o in acked for o in range(start, point))
        assert point == start + count or point not in acked
        assert tracker.in_flight == count - len(acked)
    if stop == len(order):
        assert tracker.committable == start + count
