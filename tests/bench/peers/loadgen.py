"""The load client: a separate process that keeps ``concurrency`` requests in flight.

    python loadgen.py http URL --concurrency 64 --warmup 2 --duration 8
    python loadgen.py kafka BOOTSTRAP REQUEST_TOPIC --concurrency 64 --warmup 2 --duration 8

Every worker sends one request, waits for its answer, and sends the next (a closed loop), over
a persistent connection of its own (aiohttp keeps one per worker). Only requests that start
after the warm-up and finish before the end are counted. It prints ``MEASURE_START`` when the
warm-up ends and ``MEASURE_END`` when measuring stops (the runner samples the peer's CPU between
those two lines), then one JSON line: completed, errors, req/s, p50/p99/mean/max in ms.

``kafka`` mode is the requester of the raw aiokafka floor: requests to ``REQUEST_TOPIC`` with
``reply_to`` and ``correlation_id`` headers, answers read from a reply topic of its own
(assigned, not subscribed, so there is no group rebalance to wait for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from workload import key_for

FETCH_MAX_WAIT_MS = 5

Send = Callable[[int], Awaitable[bool]]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


REQUEST_TIMEOUT_S = 10.0


async def drive(send: Send, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    began = time.perf_counter()
    start = began + warmup
    end = start + duration
    latencies: list[float] = []
    errors = 0
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            counter += 1
            try:
                ok = await send(counter)
            except Exception:  # a failed request is counted, not fatal: the run goes on
                ok = False
            t1 = time.perf_counter()
            if t0 >= start and t1 <= end:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1
            if not ok:
                await asyncio.sleep(0.01)  # do not spin on a peer that refuses

    async def mark() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        print("MEASURE_START", flush=True)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        print("MEASURE_END", flush=True)

    await asyncio.gather(mark(), *(worker() for _ in range(concurrency)))
    latencies.sort()
    ms = 1000.0
    return {
        "completed": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.50) * ms,
        "p99_ms": percentile(latencies, 0.99) * ms,
        "mean_ms": (sum(latencies) / len(latencies) * ms) if latencies else float("nan"),
        "max_ms": (latencies[-1] * ms) if latencies else float("nan"),
    }


async def run_http(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    # A peer that stalls must cost an error, not hold a worker for aiohttp's default 5 minutes
    # (faust once left requests unanswered at 64 concurrent and the run never ended).
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int) -> bool:
            body = b'{"key":"%s"}' % key_for(i).encode()
            async with session.post(args.target, data=body, headers=headers) as response:
                payload = await response.read()
            # A cheap check that the answer is the lookup's, not an error page.
            return response.status == 200 and b'"value-' in payload

        return await drive(send, args.concurrency, args.warmup, args.duration)


async def run_kafka(args: argparse.Namespace) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    reply_topic = f"{args.topic}.replies.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.target)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(reply_topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=args.target, acks="all", enable_idempotence=False, linger_ms=0
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.target,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(reply_topic, 0)])
    waiting: dict[bytes, asyncio.Future[bytes]] = {}

    async def read_replies() -> None:
        async for record in consumer:
            correlation = dict(record.headers).get("correlation_id", b"")
            future = waiting.pop(correlation, None)
            if future is not None and not future.done():
                future.set_result(record.value)

    reader = asyncio.create_task(read_replies())
    reply_header = reply_topic.encode()

    async def send(i: int) -> bool:
        key = key_for(i)
        correlation = uuid.uuid4().hex.encode()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting[correlation] = future
        try:
            await producer.send_and_wait(
                args.topic,
                b'{"key":"%s"}' % key.encode(),
                key=key.encode(),
                headers=[("reply_to", reply_header), ("correlation_id", correlation)],
            )
            payload = await asyncio.wait_for(future, 5.0)
        finally:
            waiting.pop(correlation, None)
        return b'"value-' in payload

    try:
        return await drive(send, args.concurrency, args.warmup, args.duration)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["http", "kafka"])
    parser.add_argument("target", help="URL (http) or bootstrap address (kafka)")
    parser.add_argument("topic", nargs="?", default="", help="request topic (kafka mode)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    runner = run_http if args.mode == "http" else run_kafka
    result = asyncio.run(runner(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
