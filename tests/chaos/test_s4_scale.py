"""S4: an actor scaled 1 -> 3 -> 1 under load, with the chaos suite's Ledger actor.

``greenroom up`` supervises one Ledger node and the edge serves ``POST /ledger/credit``. While
requests flow through the edge and fire-and-forget credits flow straight onto the bus, two more
replicas are started (``greenroom run``, as an orchestrator scaling out would; they join the
consumer group and take partitions), held, then stopped with SIGTERM (a graceful drain: the
group hands their partitions back to the first node).

Checks: both extra replicas drained and exited 0; every credit published on the bus has exactly
one effect (none lost across two rebalances); every request answered 2xx has exactly one effect;
no effect happened twice. The domain version (orders under the shop's load) uses the same steps.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process

from runtime.bus.factory import broker_from_settings
from runtime.codec import encode
from runtime.config import load_settings
from runtime.messages import Envelope
from tests.chaos._chaosrun import LoadReport
from tests.chaos._harness import ROOT, poll, write_summary
from tests.chaos.actors import Credit, Ledger
from tests.chaos.conftest import DEADLINE_S, StartLedger

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
]

RATE_PER_S = 15.0
LOAD_S = 36.0
SCALE_OUT_AT_S = 6.0
HOLD_S = 10.0


def _heartbeat(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def test_s4_scale_out_and_in_under_load(
    ledger_system: StartLedger, postgres_url: str, tmp_path: Path
) -> None:
    import asyncpg

    run = await ledger_system(replicas=1)
    settings = load_settings(run.env)
    topic = Ledger.commands_topic(settings)
    extra: list[Process] = []
    published: dict[str, int] = {}
    timeline: dict[str, float] = {}
    reports: list[LoadReport] = []

    async def credit(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(
            "/ledger/credit", json={"account": f"acc-{i % 24}", "amount": 1, "seq": i}
        )

    warm = await run.run(credit, count=5, rate_per_s=5, deadline_s=DEADLINE_S)
    assert len(warm.ok()) == 5, [(r.status, r.body) for r in warm.results]
    exit_codes: list[int | None] = []
    try:
        broker = broker_from_settings(settings)
        async with broker, anyio.create_task_group() as tg:
            t0 = time.monotonic()

            async def http_load() -> None:
                reports.append(
                    await run.run(
                        credit,
                        count=int(LOAD_S * RATE_PER_S),
                        rate_per_s=RATE_PER_S,
                        deadline_s=DEADLINE_S,
                        first_index=10_000,
                    )
                )

            async def bus_load() -> None:
                seq = 100_000
                while time.monotonic() - t0 < LOAD_S:
                    account = f"acc-{seq % 24}"
                    type_tag, body = encode(Credit(account=account, amount=1, seq=seq))
                    envelope = Envelope.new(type_tag, body, key=account)
                    with anyio.fail_after(30):
                        await broker.publish(topic, envelope)
                    published[envelope.id] = seq
                    seq += 1
                    await anyio.sleep(1 / RATE_PER_S)

            tg.start_soon(http_load)
            tg.start_soon(bus_load)
            await anyio.sleep(SCALE_OUT_AT_S)
            health = tmp_path / "extra-health"
            timeline["scale_out"] = time.monotonic() - t0
            for replica in (1, 2):
                with (tmp_path / f"extra-{replica}.log").open("ab") as log:
                    extra.append(
                        await anyio.open_process(
                            [
                                sys.executable,
                                "-c",
                                "import sys; from runtime.cli import main; sys.exit(main())",
                                "run",
                                "tests.chaos.actors:Ledger",
                                "--app-dir",
                                str(ROOT),
                                "--health-file",
                                str(health / f"ledger-{replica}.json"),
                            ],
                            env=run.env,
                            cwd=ROOT,
                            stdout=log,
                            stderr=None,
                            start_new_session=True,
                        )
                    )
            await poll(
                lambda: all(
                    _heartbeat(health / f"ledger-{r}.json").get("state") == "running"
                    for r in (1, 2)
                ),
                90,
                "two extra replicas running",
            )
            timeline["three_running"] = time.monotonic() - t0
            await anyio.sleep(HOLD_S)
            timeline["scale_in"] = time.monotonic() - t0
            for process in extra:
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                for process in extra:
                    exit_codes.append(await process.wait())
            timeline["one_running"] = time.monotonic() - t0
    finally:
        for process in extra:
            if process.returncode is None:
                process.kill()
                await process.wait()

    (load,) = reports
    admin = await asyncpg.connect(postgres_url)
    data_name = run.env["CHAOS_DATA_NAME"]
    sql = f'SELECT seq, count(*) AS n FROM "{data_name}".effects GROUP BY seq'

    async def effects() -> dict[int, int]:
        return {row["seq"]: row["n"] for row in await admin.fetch(sql)}

    try:
        with anyio.move_on_after(90):
            while not set(published.values()) <= set(await effects()):  # noqa: ASYNC110
                await anyio.sleep(0.25)
        done = await effects()
    finally:
        await admin.close()
    lost = sorted(seq for seq in published.values() if seq not in done)
    ok = {r.index for r in load.ok()}
    missing = sorted(i for i in ok if i not in done)
    duplicated = sorted(seq for seq, n in done.items() if n > 1)
    write_summary(
        "s4_scale",
        {
            **load.figures(),
            "replicas": "1 -> 3 -> 1",
            "timeline_s": {k: round(v, 3) for k, v in timeline.items()},
            "extra_replica_exit_codes": exit_codes,
            "bus_published": len(published),
            "bus_lost": len(lost),
            "acknowledged_2xx_missing": len(missing),
            "duplicated_effects": len(duplicated),
        },
    )
    assert exit_codes == [0, 0], "a scaled-in replica did not drain and exit 0"
    assert not lost, f"{len(lost)} bus messages never handled: {lost[:20]}"
    assert not missing, f"2xx answered but no effect for {missing[:20]}"
    assert not duplicated, f"effects done twice for {duplicated[:20]}"
