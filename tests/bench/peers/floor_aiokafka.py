"""The broker's floor, responder side: raw aiokafka request/reply, no HTTP, no framework.

    python floor_aiokafka.py BOOTSTRAP REQUEST_TOPIC GROUP

Consumes ``REQUEST_TOPIC``; for each record (JSON ``{"key": ...}``, headers ``reply_to`` and
``correlation_id``) it publishes ``{"key": ..., "value": ...}`` to the ``reply_to`` topic with the
same correlation id. Replies of one fetched batch are sent together and awaited together: the
least a competent hand-written responder would do. The requester side is the load client's
``kafka`` mode (loadgen.py). Settings match every other peer: acks=all, no idempotence (Tansu
refuses InitProducerId), fetch_max_wait_ms=5 (Tansu does not wake a waiting fetch).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from workload import make_table

FETCH_MAX_WAIT_MS = 5
PARTITIONS = 12  # as Greenroom's lookup.commands
COMMIT_INTERVAL_S = 0.5  # as Greenroom's default commit_interval_s: commits are not per message


async def serve(bootstrap: str, topic: str, group: str) -> None:
    table = make_table()
    # Created up front with the same partition count as Greenroom's, not auto-created on first
    # use with the broker's default.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("floor_aiokafka ready", flush=True)
    last_commit = loop.time()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            sends = []
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    key = json.loads(record.value)["key"]
                    reply = json.dumps({"key": key, "value": table.get(key, "")}).encode()
                    sends.append(
                        await producer.send(
                            headers["reply_to"].decode(),
                            reply,
                            headers=[("correlation_id", headers["correlation_id"])],
                        )
                    )
            if sends:
                await asyncio.gather(*sends)
            # Commit only what was answered and acknowledged: at-least-once, like the others.
            if loop.time() - last_commit >= COMMIT_INTERVAL_S:
                await consumer.commit()
                last_commit = loop.time()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))
