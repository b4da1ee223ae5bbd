"""What the dependency-fault scenarios (S3) share: load in named phases, accounts made through the
edge, and the per-phase figures of the summary.

A phase is one :meth:`~tests.chaos._chaosrun.ChaosRun.run` (open loop, fixed rate) under a name
(``normal``, ``slowed``, ``cut``, ``healed-<n>``); :meth:`Phases.until_healthy` sends batches
until one is all 2xx, within a bound, and says how long that took.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from tests.chaos._chaosrun import ChaosRun, LoadReport, RequestResult, Send
from tests.chaos._harness import percentiles

T = TypeVar("T")


def statuses(results: list[RequestResult]) -> dict[str, int]:
    """How many requests ended with each status (``none``: no HTTP answer)."""
    out: dict[str, int] = {}
    for r in results:
        key = str(r.status) if r.status is not None else f"none ({r.error})"
        out[key] = out.get(key, 0) + 1
    return out


def latency_ms(results: list[RequestResult]) -> dict[str, float]:
    """Latency percentiles of ``results``, in milliseconds."""
    return percentiles([r.latency_s * 1000 for r in results])


def is_2xx(r: RequestResult) -> bool:
    return r.status is not None and 200 <= r.status < 300


@dataclass
class Phases:
    """Phases of load through ``run``'s edge, numbered on from ``first_index``."""

    run: ChaosRun
    send: Send
    rate_per_s: float
    deadline_s: float
    index: int = 0
    reports: dict[str, LoadReport] = field(default_factory=dict)

    async def phase(self, name: str, count: int) -> LoadReport:
        """Send ``count`` requests at the rate; the report is kept under ``name``."""
        report = await self.run.run(
            self.send,
            count=count,
            rate_per_s=self.rate_per_s,
            deadline_s=self.deadline_s,
            first_index=self.index,
        )
        self.index += count
        self.reports[name] = report
        return report

    async def until_healthy(
        self,
        label: str,
        *,
        batch: int = 10,
        within: float = 60.0,
        also: Callable[[], Awaitable[bool]] | None = None,
    ) -> float | None:
        """Batches (``<label>-<first index>``) until one is all 2xx and ``also()`` (if given)
        holds after it; the seconds that took, or None if not within ``within``."""
        began = anyio.current_time()
        with anyio.move_on_after(within):
            while True:
                report = await self.phase(f"{label}-{self.index}", batch)
                if len(report.ok()) == batch and (also is None or await also()):
                    return anyio.current_time() - began
        return None

    def named(self, prefix: str) -> list[RequestResult]:
        """Every result of the phases whose name starts with ``prefix``."""
        return [
            r for name, rep in self.reports.items() if name.startswith(prefix) for r in rep.results
        ]

    def all_results(self) -> list[RequestResult]:
        return [r for rep in self.reports.values() for r in rep.results]

    def figures(self) -> dict[str, Any]:
        """Statuses and latency (ms) per phase, for the summary."""
        return {
            name: {"statuses": statuses(rep.results), "latency_ms": latency_ms(rep.results)}
            for name, rep in self.reports.items()
        }


async def settle(call: Callable[[], Awaitable[T]], *, conflict_ok: bool = False) -> T | None:
    """A set-up call through the edge, retried (bounded) on 5xx: a loaded machine makes the
    password KDF slow. With ``conflict_ok`` a 409 (done by an earlier attempt) returns None."""
    from edge.client import ApiError

    for attempt in range(6):
        try:
            return await call()
        except ApiError as exc:
            if conflict_ok and exc.status == 409:
                return None
            if exc.status < 500 or attempt == 5:
                raise
            await anyio.sleep(1 + attempt)
    return None


async def account(base_url: str, email: str, password: str) -> tuple[str, str]:
    """Register (if needed) and log in ``email`` through the edge: (user id, access token)."""
    from edge.client import ShopClient

    async with ShopClient(base_url, timeout_s=30) as client:
        await settle(lambda: client.register(email, password), conflict_ok=True)
        pair = await settle(lambda: client.login(email, password))
    assert pair is not None
    return pair.user_id, pair.access_token


def breaker_changes(run: ChaosRun, name: str) -> list[str]:
    """The states breaker ``name`` moved to, in order, from every node's JSON log lines."""
    assert run.up is not None
    changes = []
    for line in run.up.slot_logs().splitlines():
        if not line.startswith("{") or "breaker.state_changed" not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "breaker.state_changed" and event.get("name") == name:
            changes.append(str(event.get("to_state")))
    return changes


def first_2xx_after(results: list[RequestResult], since: float) -> float | None:
    """Seconds from ``since`` (monotonic) to the first 2xx answer among ``results``, if any."""
    answered = [r.started + r.latency_s for r in results if is_2xx(r)]
    return round(min(answered) - since, 3) if answered else None
