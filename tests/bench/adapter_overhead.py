"""Adapter overhead: each adapter against its raw client, on the same server, one run.

    python tests/bench/adapter_overhead.py [--count 2000] [--s3-count 50] [--json PATH]

Measures, sequentially (one call in flight, so the figure is per-call latency):

* Postgres ``SELECT $1::int``: asyncpg pool vs :class:`adapters.postgres.Database` (policy:
  bulkhead, breaker, timeout, retry), both as the actor's role;
* Redis ``GET`` of a small key: redis.asyncio vs :class:`adapters.redis.ActorRedis` (prefix and
  policy);
* S3 ``PUT`` of 1 MiB: aiobotocore vs :class:`adapters.storage.ObjectStore.put` on a SeaweedFS
  started for the run (runtime.infra.seaweedfs).

Postgres and Redis: ``GREENROOM_POSTGRES_URL``/``GREENROOM_REDIS_URL`` or the machine's servers on
127.0.0.1. Prints mean/p50/p99 per call and adapter/raw ratios of the means, writes JSON (default
bench-results/adapter_overhead.json). It measures; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.logging import configure_logging  # noqa: E402

PG = os.environ.get("GREENROOM_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("GREENROOM_REDIS_URL", "redis://127.0.0.1:6379/0")


async def timed(fn: Callable[[], Awaitable[Any]], count: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "calls": count,
        "mean_us": statistics.fmean(samples) * 1e6,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    }


async def bench_postgres(count: int, actor: str) -> dict[str, Any]:
    import asyncpg

    from adapters.postgres import Database, drop_actor, provision_actor

    credentials = await provision_actor(PG, actor)
    try:
        raw = await asyncpg.create_pool(
            PG, user=credentials.user, password=credentials.password, min_size=1, max_size=1
        )
        db = await Database.connect(credentials, min_size=1, max_size=1)
        try:
            out = {
                "raw": await timed(lambda: raw.fetchval("SELECT $1::int", 1), count, 200),
                "adapter": await timed(lambda: db.fetchval("SELECT $1::int", 1), count, 200),
            }
        finally:
            await raw.close()
            await db.close()
    finally:
        await drop_actor(PG, actor)
    return out


async def bench_redis(count: int, actor: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from adapters.redis import ActorRedis, drop_redis_user, provision_redis_user

    credentials = await provision_redis_user(REDIS, actor)
    try:
        raw = aioredis.Redis.from_url(
            REDIS, username=credentials.username, password=credentials.password
        )
        client = ActorRedis.connect(credentials)
        try:
            await client.set("k", b"x" * 100)
            key = client.key("k")
            out = {
                "raw": await timed(lambda: raw.get(key), count, 200),
                "adapter": await timed(lambda: client.get("k"), count, 200),
            }
        finally:
            await raw.aclose()
            await client.aclose()
    finally:
        await drop_redis_user(REDIS, actor)
    return out


async def bench_s3(count: int, actor: str) -> dict[str, Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from adapters.storage import ObjectStore, SeaweedFSProvisioner
    from runtime.infra.seaweedfs import SeaweedFSServer

    body = os.urandom(1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="gr-bench-") as tmp:
        server = SeaweedFSServer(Path(tmp))
        server.start()
        try:
            creds = await SeaweedFSProvisioner(server).provision(actor)
            config = AioConfig(
                retries={"total_max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
            )
            async with (
                get_session().create_client(
                    "s3",
                    endpoint_url=creds.endpoint,
                    region_name=creds.region,
                    aws_access_key_id=creds.access_key,
                    aws_secret_access_key=creds.secret_key,
                    config=config,
                ) as raw,
                ObjectStore(creds) as store,
            ):

                async def raw_put() -> None:
                    await raw.put_object(Bucket=creds.bucket, Key="raw.bin", Body=body)

                return {
                    "raw": await timed(raw_put, count, 5),
                    "adapter": await timed(lambda: store.put("adapter.bin", body), count, 5),
                }
        finally:
            server.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    results = {
        "postgres_select": await bench_postgres(args.count, f"bench_pg_{run}"),
        "redis_get": await bench_redis(args.count, f"bench_redis_{run}"),
        "s3_put_1mib": await bench_s3(args.s3_count, f"bench_s3_{run}"),
    }
    for case in results.values():
        case["ratio_mean"] = case["adapter"]["mean_us"] / case["raw"]["mean_us"]
        case["ratio_p50"] = case["adapter"]["p50_us"] / case["raw"]["p50_us"]
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{'case':<16}{'client':<9}{'mean us':>10}{'p50 us':>10}{'p99 us':>10}")
    for name, case in results.items():
        for client in ("raw", "adapter"):
            row = case[client]
            print(
                f"{name:<16}{client:<9}{row['mean_us']:>10.1f}{row['p50_us']:>10.1f}"
                f"{row['p99_us']:>10.1f}"
            )
        print(
            f"{name:<16}{'ratio':<9}{case['ratio_mean']:>10.3f}{case['ratio_p50']:>10.3f}"
            "   (adapter / raw: mean, p50)"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="Postgres and Redis calls")
    parser.add_argument("--s3-count", type=int, default=50, help="1 MiB S3 PUTs")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench-results" / "adapter_overhead.json"
    )
    args = parser.parse_args()
    configure_logging("warning")
    results = anyio.run(main, args)
    report(results)
    data = {
        "benchmark": "adapter_overhead",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    cli()
