"""A node over MemoryBroker: dispatch, key order, acks and commits, retries and the DLQ,
invalid records, the responder (replies, error replies, expired deadlines), backpressure, drain."""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import msgspec
import pytest

from runtime.actor import INTERNAL_ERROR_MESSAGE
from runtime.bus.base import Delivery, TopicPartition
from runtime.bus.memory import MemoryBroker
from runtime.codec import encode
from runtime.config import Settings
from runtime.dlq import DeadLetter
from runtime.errors import ERROR_REPLY_TYPE, ConflictError, ErrorReply, NotFoundError
from runtime.messages import Envelope, new_id
from runtime.metrics import registry
from runtime.node import Node
from tests.support.demo import Demo, Echo, Echoed, Flaky, Lookup, Poison, Work
from tests.support.wait import eventually

REPLIES = "replies.test"


class SmallDemo(Demo):
    """A demo with a tiny mailbox, to see backpressure."""

    mailbox_size = 4
    concurrency = 2


@dataclass
class Harness:
    node: Node
    demo: Demo
    broker: MemoryBroker
    settings: Settings

    async def send(
        self, message: msgspec.Struct, *, key: str, reply_to: str = "", deadline: int = 0
    ) -> Envelope:
        type_tag, body = encode(message)
        envelope = Envelope.new(type_tag, body, key=key, reply_to=reply_to, deadline=deadline)
        await self.broker.publish(Demo.commands_topic(self.settings), envelope)
        return envelope

    async def stop(self) -> None:
        """Drain the node and wait until it stopped (the broker keeps running)."""
        self.node.drain()
        await eventually(lambda: self.node.state == "stopped")

    @property
    def group(self) -> str:
        return Demo.consumer_group(self.settings)


@asynccontextmanager
async def running(
    unique: str, demo: Demo | None = None, *, partitions: int = 4
) -> AsyncIterator[Harness]:
    settings = Settings(
        broker="memory",
        topic_prefix=f"{unique}.",
        partitions=partitions,
        shutdown_timeout_s=5.0,
        commit_interval_s=0.02,
    )
    broker = MemoryBroker(commit_interval_s=0.02)
    demo = demo or Demo()
    async with broker:
        await broker.ensure_topics({REPLIES: 1})
        node = Node(demo, settings, broker=broker)
        async with anyio.create_task_group() as tg:
            await tg.start(node.run)
            yield Harness(node, demo, broker, settings)
            node.drain()


async def read(broker: MemoryBroker, topic: str, count: int) -> list[Delivery]:
    """The first ``count`` records of ``topic`` (fails the test if fewer arrive)."""
    out: list[Delivery] = []
    async with broker.subscribe([topic], f"reader-{new_id()}") as sub:
        with anyio.fail_after(10):
            async for delivery in sub:
                delivery.ack()
                out.append(delivery)
                if len(out) >= count:
                    break
    return out


async def topic_size(broker: MemoryBroker, topic: str) -> int:
    return sum(len(p.records) for p in broker._topics[topic])


def other_lane(key: str, lanes: int, count: int) -> list[str]:
    lane = zlib.crc32(key.encode()) % lanes
    keys = (f"other-{i}" for i in range(1000))
    return [k for k in keys if zlib.crc32(k.encode()) % lanes != lane][:count]


async def test_handlers_run_per_key_in_order_and_across_keys_concurrently(unique: str) -> None:
    async with running(unique) as h:
        for seq in range(50):
            for k in range(8):
                await h.send(Work(seq=seq, sleep_s=0.0005), key=f"key-{k}")
        await eventually(lambda: len(h.demo.handled) == 400)
    assert h.demo.order_violations == []
    assert h.demo.same_key_overlap == 0
    assert 1 < h.demo.max_running <= Demo.concurrency
    assert len({mid for _, _, mid in h.demo.handled}) == 400
    assert h.demo.stopped


async def test_ack_only_after_the_handler_so_the_commit_never_passes_unfinished_work(
    unique: str,
) -> None:
    async with running(unique, partitions=1) as h:
        tp = TopicPartition(Demo.commands_topic(h.settings), 0)
        await h.send(Work(seq=0, gate="hold"), key="slow")
        for key in other_lane("slow", Demo.concurrency, 5):
            await h.send(Work(seq=0), key=key)
        await eventually(lambda: len(h.demo.handled) == 5)
        assert "hold" in h.demo.started_gates
        assert h.node.mailbox is not None
        await h.node.mailbox.subscription.commit()  # type: ignore[union-attr]
        assert (await h.broker.committed(h.group, tp)) in (None, 0)
        h.demo.gate("hold").set()
        await eventually(lambda: len(h.demo.handled) == 6)
        await h.stop()
        # Drained: everything finished is committed.
        assert await h.broker.committed(h.group, tp) == 6


async def test_a_poison_message_is_retried_then_dead_lettered_and_the_partition_moves_on(
    unique: str,
) -> None:
    async with running(unique) as h:
        poison = await h.send(Poison(note="bad"), key="p")
        await h.send(Work(seq=1), key="p")  # same key: same partition and lane, after it
        await eventually(lambda: len(h.demo.handled) == 1)
        assert h.demo.attempts[poison.id] == [1, 2, 3]
        (dead,) = await read(h.broker, Demo.dlq_topic(h.settings), 1)
    assert dead.envelope is not None
    assert dead.envelope.id == poison.id
    assert dead.envelope.body == poison.body
    assert dead.envelope.correlation_id == poison.correlation_id
    letter = DeadLetter.from_delivery(dead)
    assert letter.error_type == "RuntimeError"
    assert letter.error_message == "poison message: bad"
    assert letter.attempts == 3
    assert letter.source_topic == Demo.commands_topic(h.settings)
    assert letter.key == "p"


async def test_a_flaky_request_succeeds_on_a_retry_and_sees_the_attempt_number(
    unique: str,
) -> None:
    async with running(unique) as h:
        request = await h.send(Flaky(fails=2, text="ok"), key="f", reply_to=REPLIES)
        (reply,) = await read(h.broker, REPLIES, 1)
        assert await topic_size(h.broker, Demo.dlq_topic(h.settings)) == 0
    assert h.demo.attempts[request.id] == [1, 2, 3]
    assert reply.envelope is not None
    assert msgspec.json.decode(reply.envelope.body, type=Echoed) == Echoed(text="ok", attempt=3)


async def test_undecodable_records_go_to_the_dlq_at_once(unique: str) -> None:
    async with running(unique, partitions=1) as h:
        commands = Demo.commands_topic(h.settings)
        await h.broker.publish_raw(commands, key=b"r", value=b"not an envelope", headers=[])
        bad_body = Envelope.new("demo.Work", b'{"type":"demo.Work","seq":"x"}', key="r")
        await h.broker.publish(commands, bad_body)
        unknown = Envelope.new("demo.Nope", b"{}", key="r")
        await h.broker.publish(commands, unknown)
        await h.send(Work(seq=1), key="r")
        await eventually(lambda: len(h.demo.handled) == 1)
        dead = await read(h.broker, Demo.dlq_topic(h.settings), 3)
    letters = [DeadLetter.from_delivery(d) for d in dead]
    assert [letter.error_type for letter in letters] == [
        "InvalidRecord",
        "DecodeError",
        "UnknownType",
    ]
    assert all(letter.attempts == 0 for letter in letters)
    assert dead[0].envelope is None
    assert dead[0].value == b"not an envelope"
    assert "$.seq" in letters[1].error_message
    assert letters[1].id == bad_body.id
    assert letters[2].id == unknown.id
    assert [letter.source_offset for letter in letters] == [0, 1, 2]


async def test_a_request_gets_its_reply_with_correlation_and_causation(unique: str) -> None:
    async with running(unique) as h:
        request = await h.send(Echo(text="hello"), key="e1", reply_to=REPLIES)
        (reply,) = await read(h.broker, REPLIES, 1)
    env = reply.envelope
    assert env is not None
    assert env.type == "demo.Echoed"
    assert env.correlation_id == request.correlation_id
    assert env.causation_id == request.id
    assert env.key == "e1"
    assert msgspec.json.decode(env.body, type=Echoed) == Echoed(text="hello")


async def test_domain_errors_become_error_replies_and_are_not_retried(unique: str) -> None:
    async with running(unique) as h:
        await h.send(Lookup(item="missing"), key="l", reply_to=REPLIES)
        await h.send(Lookup(item="taken"), key="l", reply_to=REPLIES)
        await h.send(Lookup(item="quiet"), key="l")  # no reply_to: logged and acked
        await h.send(Poison(note="secret detail"), key="l", reply_to=REPLIES)
        replies = await read(h.broker, REPLIES, 3)
        await h.send(Work(seq=1), key="l")
        await eventually(lambda: len(h.demo.handled) == 1)
        dlq = await topic_size(h.broker, Demo.dlq_topic(h.settings))
    bodies = [msgspec.json.decode(r.envelope.body, type=ErrorReply) for r in replies if r.envelope]
    assert all(r.envelope is not None and r.envelope.type == ERROR_REPLY_TYPE for r in replies)
    assert bodies[0].kind == NotFoundError.kind
    assert bodies[1] == ErrorReply(kind=ConflictError.kind, message="item is taken", field="$.item")
    assert bodies[2] == ErrorReply(kind="internal", message=INTERNAL_ERROR_MESSAGE)
    assert dlq == 1  # only the poison; domain errors are answers, not failures


async def test_a_request_past_its_deadline_is_dropped_unhandled(unique: str) -> None:
    expired = registry.counter("greenroom_messages_total")
    before = expired.value(actor="demo", outcome="expired")
    async with running(unique) as h:
        past = time.time_ns() // 1_000_000 - 1_000
        await h.send(Flaky(fails=0, text="late"), key="d", reply_to=REPLIES, deadline=past)
        future = time.time_ns() // 1_000_000 + 60_000
        fresh = await h.send(Echo(text="in time"), key="d", reply_to=REPLIES, deadline=future)
        (reply,) = await read(h.broker, REPLIES, 1)
        assert await topic_size(h.broker, REPLIES) == 1
    assert reply.envelope is not None
    assert reply.envelope.causation_id == fresh.id
    assert h.demo.attempts == {}  # the late Flaky never ran
    assert expired.value(actor="demo", outcome="expired") == before + 1


async def test_a_full_mailbox_pauses_fetching_and_resumes_below_low_water(unique: str) -> None:
    demo = SmallDemo()
    async with running(unique, demo, partitions=2) as h:
        for i in range(60):
            await h.send(Work(seq=i, gate="bp"), key=f"k{i % 6}")
        mailbox = h.node.mailbox
        assert mailbox is not None
        assert mailbox.subscription is not None
        await eventually(lambda: mailbox.paused)
        assert mailbox.subscription.paused()
        assert mailbox.held == SmallDemo.mailbox_size
        demo.gate("bp").set()
        await eventually(lambda: len(demo.handled) == 60)
        assert mailbox.resumes >= 1
        assert not mailbox.subscription.paused()
    assert mailbox.pauses >= 2  # it filled up again after resuming: 60 messages, room for 4
    assert demo.order_violations == []


async def test_drain_finishes_held_work_commits_and_stops(unique: str) -> None:
    demo = SmallDemo()
    async with running(unique, demo, partitions=1) as h:
        for i in range(20):
            await h.send(Work(seq=i, sleep_s=0.001), key=f"k{i % 3}")
        await eventually(lambda: len(demo.handled) >= 2)
        await h.stop()
        tp = TopicPartition(Demo.commands_topic(h.settings), 0)
        committed = await h.broker.committed(h.group, tp)
    # Whatever was handled is committed, and nothing beyond it: a restart repeats nothing.
    assert committed == len(demo.handled)
    assert demo.stopped


async def test_the_real_requester_talks_to_the_responder(unique: str) -> None:
    from runtime.request import Requester

    async with running(unique) as h, Requester(h.broker, h.settings) as requester:
        reply = await requester.request(
            "demo", Echo(text="via requester"), key="r", reply_type=Echoed
        )
        assert reply == Echoed(text="via requester")
        with pytest.raises(NotFoundError):
            await requester.request("demo", Lookup(item="nope"), key="r", reply_type=Echoed)
