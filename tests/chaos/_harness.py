"""What every chaos scenario shares: a ``greenroom up`` subprocess, polling, and the JSON summary.

Every scenario is bounded in time (each wait has a deadline), uses loopback servers only, stops
every process it started (also when it fails), and prints its figures and writes them to
``bench-results/chaos/<scenario>.json``. Scenarios assert behaviour (nothing lost, nothing done
twice), never timings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from tests.support.up import UpProcess

__all__ = [
    "RESULTS",
    "ROOT",
    "SESSION_TIMEOUT_MS",
    "UpProcess",
    "base_env",
    "percentiles",
    "poll",
    "start_up",
    "up_processes",
    "write_summary",
]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results" / "chaos"

# Tansu notices a killed member after session timeout + ~4 s: keep the timeout low so a scenario
# spends its time on recovery, not on waiting for the broker to give up on a dead consumer.
SESSION_TIMEOUT_MS = 6000


def base_env(bootstrap: str, unique: str, run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``greenroom up`` (and its nodes) on the given Tansu, for one test."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
        "PYTHONPATH": str(ROOT),
        "GREENROOM_BROKER": "kafka",
        "GREENROOM_KAFKA_BOOTSTRAP": bootstrap,
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": "5",
        "GREENROOM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "GREENROOM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "GREENROOM_COMMIT_INTERVAL_S": "0.2",
        "GREENROOM_TOPIC_PREFIX": f"chaos{unique}.",
        "GREENROOM_RUN_DIR": str(run_dir),
        "GREENROOM_SHUTDOWN_TIMEOUT_S": "5",
        "GREENROOM_LOG_FORMAT": "json",
        **extra,
    }


def start_up(
    started: list[UpProcess], args: list[str], env: Mapping[str, str], tmp: Path
) -> UpProcess:
    """Start ``greenroom up`` with ``args``; it is closed by the fixture that owns ``started``."""
    run_dir = Path(env["GREENROOM_RUN_DIR"])
    # The chaos suite brings its own servers and runs actors from this checkout.
    command = ["--infra", "none", "--app-dir", str(ROOT), *args]
    up = UpProcess(command, env, run_dir, tmp / f"up-{len(started)}.out")
    started.append(up)
    return up


def up_processes() -> Iterator[list[UpProcess]]:
    """Generator body of the fixture that closes every ``up`` a test started."""
    started: list[UpProcess] = []
    try:
        yield started
    finally:
        for up in started:
            up.close()


async def poll(check: Callable[[], bool], within: float, what: str, interval: float = 0.05) -> None:
    """Wait for a condition owned by other processes; AssertionError naming it on timeout."""
    with anyio.move_on_after(within):
        while not check():  # noqa: ASYNC110 - the state lives in other processes
            await anyio.sleep(interval)
        return
    raise AssertionError(f"not {what} within {within}s")


def percentiles(values: list[float]) -> dict[str, float]:
    """min/p50/p99/max of ``values`` (milliseconds or seconds, as given), rounded; {} if none."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "min": at(0), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def write_summary(scenario: str, summary: dict[str, Any]) -> Path:
    """Print the scenario's figures and write them to ``bench-results/chaos/<scenario>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}.json"
    document = {"scenario": scenario, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ"), **summary}
    text = json.dumps(document, indent=2, sort_keys=False)
    path.write_text(text + "\n")
    print(f"\n{scenario}: {text}\n(written to {path})")
    return path
