"""S3: a dependency slowed, then cut, through the fault proxy; then healed. Postgres leg.

Scenario S3 has three legs, one per dependency, each through a
:class:`~runtime.testing.fault_proxy.FaultProxy`:

- Postgres (this module): the suite's Ledger actor; its breaker opens, the edge answers ``503``
  fast, requests succeed again after healing, no effect lost or doubled.
- Redis (``test_s3_redis_faults.py``): the shop's inventory and users services, whose Redis is
  only a cache: requests keep succeeding from Postgres, fast, while their cache breakers are open;
  the cache is written and read again after healing.
- Object storage (``test_s3_storage_faults.py``): the files service over SeaweedFS; its breaker
  opens, the edge answers ``503`` with ``Retry-After`` fast, completions succeed again after
  healing, and every acknowledged upload reads back intact.

Here the Ledger nodes (tests/chaos/actors.py, ``CHAOS_FAST_BREAKER=1``: 1 s call timeout, a breaker
over 10 calls that opens for 2 s) reach Postgres only through the proxy
(``GREENROOM_POSTGRES_URL`` points at it). Requests
flow through the edge while the proxy is normal, then adds latency, then blackholes every byte,
then heals.

Checks (behaviour): with Postgres cut, the breaker opens and the edge answers ``503`` with
``Retry-After`` (printed: how fast); after healing, requests succeed again; across it all, every
2xx has exactly one effect and no effect happened twice.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from runtime.testing.fault_proxy import FaultProxy
from tests.chaos._chaosrun import LoadReport
from tests.chaos._harness import percentiles, write_summary
from tests.chaos.conftest import DEADLINE_S, StartLedger

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
]

RATE_PER_S = 10.0


async def test_s3_postgres_slowed_then_cut_opens_the_breaker_and_recovers(
    ledger_system: StartLedger, postgres_url: str
) -> None:
    import asyncpg

    upstream = urlsplit(postgres_url)
    index = 0
    phases: dict[str, LoadReport] = {}

    async def credit(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(
            "/ledger/credit", json={"account": f"acc-{i % 8}", "amount": 1, "seq": i}
        )

    async with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
        via_proxy = postgres_url.replace(
            f"{upstream.hostname}:{upstream.port or 5432}", f"{proxy.host}:{proxy.port}"
        )
        run = await ledger_system(
            replicas=1, GREENROOM_POSTGRES_URL=via_proxy, CHAOS_FAST_BREAKER="1"
        )
        try:

            async def phase(name: str, count: int) -> LoadReport:
                nonlocal index
                report = await run.run(
                    credit,
                    count=count,
                    rate_per_s=RATE_PER_S,
                    deadline_s=DEADLINE_S,
                    first_index=index,
                )
                index += count
                phases[name] = report
                return report

            async def until_healthy(label: str) -> float | None:
                """Batches of 10 until one is all 2xx (bounded); seconds it took, or None."""
                began = anyio.current_time()
                with anyio.move_on_after(60):
                    while True:
                        batch = await phase(f"{label}-{index}", 10)
                        if len(batch.ok()) == 10:
                            return anyio.current_time() - began
                return None

            # A baseline: on a loaded machine the first calls may be slow enough to trip the
            # (deliberately twitchy) breaker, so wait for a clean batch rather than assume one.
            assert await until_healthy("normal") is not None, "never healthy before the faults"
            proxy.latency(1.5)
            await phase("slowed", 30)
            proxy.blackhole()
            cut = await phase("cut", 40)
            proxy.heal()
            # Recovered: the breaker half-opens after 2 s and a trial call closes it.
            recovered_after = await until_healthy("healed")
        finally:
            # Stop the system while its Postgres path still exists, so the nodes drain cleanly.
            await run.close()

    admin = await asyncpg.connect(postgres_url)
    data_name = run.env["CHAOS_DATA_NAME"]
    try:
        rows = await admin.fetch(
            f'SELECT seq, count(*) AS n FROM "{data_name}".effects GROUP BY seq'
        )
    finally:
        await admin.close()
    effects = {row["seq"]: row["n"] for row in rows}
    ok = {r.index for report in phases.values() for r in report.ok()}
    missing = sorted(i for i in ok if i not in effects)
    duplicated = sorted(seq for seq, n in effects.items() if n > 1)
    unavailable = [r for r in cut.results if r.status == 503]
    with_retry_after = [r for r in unavailable if r.retry_after]
    healed = [name for name in phases if name.startswith("healed-")]
    assert healed

    def statuses(report: LoadReport) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in report.results:
            key = str(r.status) if r.status is not None else "none"
            out[key] = out.get(key, 0) + 1
        return out

    write_summary(
        "s3_dependency_faults",
        {
            "dependency": "postgres",
            "phases": {
                name: {
                    "statuses": statuses(report),
                    "latency_ms": percentiles([r.latency_s * 1000 for r in report.results]),
                }
                for name, report in phases.items()
            },
            "cut_503_count": len(unavailable),
            "cut_503_latency_ms": percentiles([r.latency_s * 1000 for r in unavailable]),
            "recovered_after_heal_s": round(recovered_after, 3) if recovered_after else None,
            "healed_batches": len(healed),
            "acknowledged_2xx_missing": len(missing),
            "duplicated_effects": len(duplicated),
        },
    )
    assert unavailable, f"no 503 while Postgres was cut: {statuses(cut)}"
    assert len(with_retry_after) == len(unavailable), "a 503 without Retry-After"
    assert recovered_after is not None, "requests did not succeed again after healing"
    assert not missing, f"2xx answered but no effect for {missing[:20]}"
    assert not duplicated, f"effects done twice for {duplicated[:20]}"
