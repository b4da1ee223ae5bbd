"""A consumer-group member for test_bus_kill.py, run as its own process.

    python _bus_member.py BOOTSTRAP TOPIC GROUP

Prints ``JOINED <partitions>`` once it has its assignment, then one line per record:
``ACKED <id>`` for every third record and ``HELD <id>`` for the others, which it never
acknowledges. When no record has come for two seconds it commits (covering only the contiguous
acknowledged prefix), prints ``COMMITTED <json>`` and waits to be killed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime.bus.base import Delivery
from runtime.bus.kafka import KafkaBroker


def say(line: str) -> None:
    print(line, flush=True)


async def main(bootstrap: str, topic: str, group: str) -> None:
    broker = KafkaBroker(
        bootstrap,
        idempotence=False,
        fetch_max_wait_ms=5,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        commit_interval_s=0.2,
    )
    held: list[Delivery] = []  # referenced until the process dies, never acknowledged
    async with broker, broker.subscribe([topic], group) as sub:
        say("JOINED " + json.dumps(sorted(p for _, p in sub.assignment())))
        count = 0
        while True:
            delivery = None
            with anyio.move_on_after(2.0 if count else 120.0):
                delivery = await sub.__anext__()
            if delivery is None:
                break
            count += 1
            assert delivery.envelope is not None
            if count % 3 == 0:
                delivery.ack()
                say(f"ACKED {delivery.envelope.id}")
            else:
                held.append(delivery)
                say(f"HELD {delivery.envelope.id}")
        committed = await sub.commit()
        say("COMMITTED " + json.dumps({f"{t}/{p}": o for (t, p), o in committed.items()}))
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
