"""Fixtures of the chaos suite: ``up`` processes closed after each test, and a Ledger system
(``greenroom up`` + the edge with the ledger route) for the load scenarios."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from runtime.infra._process import free_port
from runtime.infra.tansu import TansuServer
from tests.chaos._chaosrun import ChaosRun
from tests.chaos._harness import UpProcess, base_env, up_processes

PARTITIONS = 6
DEADLINE_S = 5.0

StartLedger = Callable[..., Awaitable[ChaosRun]]


@pytest.fixture
def ups() -> Iterator[list[UpProcess]]:
    """Every ``greenroom up`` a test starts; each is killed (with its tree) afterwards."""
    yield from up_processes()


@pytest.fixture
async def ledger_system(  # noqa: PLR0917 - pytest passes fixtures positionally
    tansu: TansuServer,
    postgres_url: str,
    redis_url: str,
    unique: str,
    tmp_path: Path,
    ups: list[UpProcess],
) -> AsyncIterator[StartLedger]:
    """Start ``greenroom up`` with Ledger nodes and the edge serving ``POST /ledger/credit``.

    Call it as ``await ledger_system(replicas=3, **extra_env)``; extra variables reach the nodes
    and the edge (e.g. ``GREENROOM_POSTGRES_URL`` pointing at a fault proxy). Everything is
    stopped, and the Ledger's schema dropped, after the test.
    """
    from adapters.postgres import drop_actor

    data_name = f"chaos_ledger_{unique}"
    runs: list[ChaosRun] = []

    async def start(replicas: int = 1, **extra: str) -> ChaosRun:
        defaults = {
            "GREENROOM_PARTITIONS": str(PARTITIONS),
            "GREENROOM_POSTGRES_URL": postgres_url,
            "GREENROOM_REDIS_URL": redis_url,
            "GREENROOM_EDGE_PORT": str(free_port()),
            "GREENROOM_REQUEST_TIMEOUT_S": str(DEADLINE_S),
            "CHAOS_DATA_NAME": data_name,
        }
        env = base_env(tansu.bootstrap, unique, tmp_path / "run", **{**defaults, **extra})
        run = ChaosRun(
            env=env,
            tmp=tmp_path,
            ups=ups,
            actors=["tests.chaos.actors:Ledger"],
            scale={"ledger": replicas},
            edge_routes="tests.chaos.routes:LEDGER_ROUTES",
            # One client IP sends the whole load: per-IP limits would turn it into 429s.
            edge_args=["--rate-limit-ip", "0", "--rate-limit-subject", "0"],
            up_args=["--max-restarts", "50", "--period", "60", "--backoff-base", "0.2"],
        )
        runs.append(run)
        await run.start()
        return run

    try:
        yield start
    finally:
        for run in runs:
            await run.close()
        await drop_actor(postgres_url, data_name)
