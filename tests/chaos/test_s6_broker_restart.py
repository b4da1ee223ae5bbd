"""S6: the broker restarted. Tansu with durable ``s3://`` storage on SeaweedFS is stopped and
started again on the same port while ``greenroom up`` runs two Ledger nodes (tests/chaos/actors.py,
Postgres inbox) and a producer publishes with retry. Consumers reconnect (or their nodes are
restarted by ``up``); every message the broker acknowledged is handled, none twice.

The producer retries a publish that failed or timed out with the *same* envelope (same message id),
as any at-least-once producer does; a message that reached the broker twice is deduplicated by
the inbox, so the effect count per message id must still be exactly one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.bus.base import BrokerError
from runtime.bus.factory import broker_from_settings
from runtime.codec import encode
from runtime.config import load_settings
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from tests.chaos._harness import (
    UpProcess,
    base_env,
    percentiles,
    start_up,
    write_summary,
)
from tests.chaos.actors import Credit, Ledger

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.timeout(240),
]

PARTITIONS = 4
RATE_PER_S = 40
BEFORE_S = 6.0  # publishing before the broker stops
DOWN_S = 3.0  # the broker is away this long
AFTER_S = 8.0  # publishing after it is back


@pytest.fixture
def durable_tansu(seaweed: Any, unique: str, tmp_path: Path) -> Iterator[TansuServer]:
    """A Tansu of its own whose storage is a bucket on the session's SeaweedFS."""
    from runtime.infra.seaweedfs import _s3_client

    bucket = f"tansu-{unique}"
    client = _s3_client(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, seaweed.region)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()
    server = TansuServer(
        tmp_path / "tansu",
        storage=f"s3://{bucket}/",
        env={
            "AWS_ENDPOINT": seaweed.endpoint,
            "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
            "AWS_DEFAULT_REGION": seaweed.region,
            "AWS_ALLOW_HTTP": "true",
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_s6_broker_restart_loses_nothing(
    durable_tansu: TansuServer,
    postgres_url: str,
    unique: str,
    tmp_path: Path,
    ups: list[UpProcess],
) -> None:
    import asyncpg

    from adapters.postgres import drop_actor

    data_name = f"chaos_s6_{unique}"
    env = base_env(
        durable_tansu.bootstrap,
        unique,
        tmp_path / "run",
        GREENROOM_PARTITIONS=str(PARTITIONS),
        GREENROOM_POSTGRES_URL=postgres_url,
        CHAOS_DATA_NAME=data_name,
    )
    settings = load_settings(env)
    topic = Ledger.commands_topic(settings)
    admin = await asyncpg.connect(postgres_url)
    acked: dict[str, int] = {}  # message id -> seq, for every publish the broker acknowledged
    attempts_failed = 0
    publish_ms: list[float] = []
    timeline: dict[str, float] = {}
    try:
        up = start_up(
            ups,
            [
                "--actors",
                "tests.chaos.actors:Ledger",
                "--scale",
                "ledger=2",
                "--no-edge",
                "--max-restarts",
                "30",
                "--period",
                "60",
                "--backoff-base",
                "0.2",
                "--backoff-cap",
                "2",
            ],
            env,
            tmp_path,
        )
        await up.wait_running(2, within=120)
        broker = broker_from_settings(settings)
        async with broker, anyio.create_task_group() as tg:
            await broker.ensure_topics({topic: PARTITIONS})
            stop_publishing = anyio.Event()

            async def publish() -> None:
                nonlocal attempts_failed
                seq = 0
                while not stop_publishing.is_set():
                    type_tag, body = encode(Credit(account=f"acc-{seq % 16}", amount=1, seq=seq))
                    envelope = Envelope.new(type_tag, body, key=f"acc-{seq % 16}")
                    delay = 0.1
                    while True:  # bounded by the test's timeout and stop_publishing
                        began = time.monotonic()
                        try:
                            with anyio.fail_after(5):
                                await broker.publish(topic, envelope)
                        except (BrokerError, TimeoutError):
                            attempts_failed += 1
                            if stop_publishing.is_set():
                                return  # never acknowledged: not counted
                            await anyio.sleep(delay)
                            delay = min(delay * 2, 1.0)
                            continue
                        publish_ms.append((time.monotonic() - began) * 1000)
                        acked[envelope.id] = seq
                        break
                    seq += 1
                    await anyio.sleep(1 / RATE_PER_S)

            tg.start_soon(publish)
            await anyio.sleep(BEFORE_S)
            timeline["stopped_at"] = time.monotonic()
            await anyio.to_thread.run_sync(durable_tansu.stop)
            timeline["gone_at"] = time.monotonic()
            acked_before_stop = len(acked)
            await anyio.sleep(DOWN_S)
            await anyio.to_thread.run_sync(durable_tansu.start)
            timeline["back_at"] = time.monotonic()
            await anyio.sleep(AFTER_S)
            stop_publishing.set()
            tg.cancel_scope.cancel()  # ends a publish still retrying; it was never acknowledged

        counts_sql = f'SELECT message_id, count(*) FROM "{data_name}".effects GROUP BY message_id'

        async def effects() -> dict[str, int]:
            return {row[0]: row[1] for row in await admin.fetch(counts_sql)}

        drained_at = None
        with anyio.move_on_after(120):
            while not set(acked) <= set(await effects()):  # noqa: ASYNC110 - polling Postgres
                await anyio.sleep(0.25)
            drained_at = time.monotonic()
        done = await effects()
        lost = sorted(seq for mid, seq in acked.items() if mid not in done)
        duplicated = sorted(mid for mid, n in done.items() if n > 1)
        unknown = sorted(set(done) - set(acked))  # published, ack lost, retried: fine, counted
        state = up.state()
        restarts = {
            f"{p.actor}-{p.replica}": p.restarts for p in (state.processes if state else [])
        }
        summary = {
            "storage": durable_tansu.storage,
            "broker_down_s": round(timeline["back_at"] - timeline["stopped_at"], 3),
            "broker_stop_took_s": round(timeline["gone_at"] - timeline["stopped_at"], 3),
            "published_acked": len(acked),
            "acked_before_stop": acked_before_stop,
            "publish_attempts_failed": attempts_failed,
            "publish_latency_ms": percentiles(publish_ms),
            "effects": sum(done.values()),
            "lost": len(lost),
            "duplicated_effects": len(duplicated),
            "handled_not_acked": len(unknown),
            "node_restarts": restarts,
            # Redeliveries the inbox absorbed (a commit lost with the broker, a retried publish).
            "redelivered_deduplicated": up.slot_logs().count('"inbox.duplicate"'),
            "all_handled_after_broker_back_s": (
                round(drained_at - timeline["back_at"], 3) if drained_at else None
            ),
        }
        write_summary("s6_broker_restart", summary)
        assert acked_before_stop > 0
        assert len(acked) > acked_before_stop, "nothing was acknowledged after the restart"
        assert not lost, f"{len(lost)} acknowledged messages never handled (seqs {lost[:20]})"
        assert not duplicated, f"{len(duplicated)} messages had their effect more than once"
        assert await up.stop() == 0, up.output()
    finally:
        await admin.close()
        await drop_actor(postgres_url, data_name)
