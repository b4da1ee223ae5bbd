"""SIGKILL a consumer that holds unacknowledged messages: a surviving member gets every one.

The member runs in its own process (``_bus_member.py``) in the same consumer group as a member
in this test process. It acknowledges some records and holds the rest; after ``kill -9`` the
group notices it is gone (session timeout), moves its partition to the survivor, and the
survivor reads from the committed offset, so every held record arrives again: none is lost.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from runtime.bus.base import Subscription, TopicPartition
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from tests.contract.conftest import kafka_broker

MEMBER = Path(__file__).with_name("_bus_member.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_sigkilled_member_loses_nothing(tansu: TansuServer, unique: str) -> None:
    topic, group = f"kill-{unique}", f"g-{unique}"
    broker = kafka_broker(tansu.bootstrap)
    async with broker:
        await broker.ensure_topics({topic: 2})
        survivor = broker.subscribe([topic], group)
        await survivor.start()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = await anyio.open_process(
            [sys.executable, str(MEMBER), tansu.bootstrap, topic, group],
            env=env,
            cwd=ROOT,
            stderr=None,
        )
        held: set[str] = set()
        acked: set[str] = set()
        seen: set[str] = set()
        try:
            assert process.stdout is not None
            lines = _lines(TextReceiveStream(process.stdout))
            with anyio.fail_after(60):
                joined = json.loads((await anext(lines)).removeprefix("JOINED "))
                assert len(joined) == 1, "the member owns one of the two partitions"
                mine = TopicPartition(topic, 1 - joined[0])
                while survivor.assignment() != {mine}:
                    await _consume_briefly(survivor, seen)
            sent = [Envelope.new("test.Work", b"%d" % i, key=f"k{i}") for i in range(60)]
            await broker.publish_many(topic, sent)
            with anyio.fail_after(60):
                async for line in lines:
                    kind, _, rest = line.partition(" ")
                    if kind == "HELD":
                        held.add(rest)
                    elif kind == "ACKED":
                        acked.add(rest)
                    elif kind == "COMMITTED":
                        break
            assert held, "the member holds unacknowledged records when it is killed"
            process.send_signal(signal.SIGKILL)
            await process.wait()
            assert process.returncode == -signal.SIGKILL
            # The survivor keeps consuming; the group moves the dead member's partition to it.
            with anyio.fail_after(90):
                while not held <= seen:
                    await _consume_briefly(survivor, seen)
            assert held <= seen, "every unacknowledged record reached the survivor"
            assert {e.id for e in sent} <= seen | acked, "nothing was lost"
            assert len(survivor.assignment()) == 2
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
            await survivor.close()


async def _lines(stream: TextReceiveStream) -> AsyncIterator[str]:
    buffer = ""
    async for chunk in stream:
        buffer += chunk
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            yield line


async def _consume_briefly(sub: Subscription, seen: set[str]) -> None:
    """Read (and acknowledge) whatever arrives within half a second."""
    with anyio.move_on_after(0.5):
        async for delivery in sub:
            delivery.ack()
            if delivery.envelope is not None:
                seen.add(delivery.envelope.id)
