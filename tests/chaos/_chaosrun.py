"""``ChaosRun``: a whole system under ``greenroom up``, load through the edge, faults on a schedule.

One run: start ``greenroom up`` with the chosen actors and scale (and the edge: under ``up`` with
the default routes, or as its own process when the scenario serves another route table), wait
for readiness (every slot ``running`` in ``up.json``, the edge answering), then send a bounded
number of requests at a fixed rate (open loop: a request starts on schedule whether or not the
previous ones finished) while :func:`runtime.chaos.run_chaos` signals processes on its own
schedule. Each request records its phase (before, during or after the chaos window), status and
latency; the client's timeout is the edge's deadline plus a margin, so a request the edge failed
to answer by its deadline is counted, not waited for forever. A request answered later than the
deadline plus :data:`LATE_MARGIN_S` is *late*: the edge answers 504 at the deadline, so lateness
beyond scheduling jitter means something held the answer back.

Invariants are the scenario's business: it reads the actors' own databases (read-only, as the
admin user) after :meth:`ChaosRun.run` returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from runtime.chaos import ChaosConfig, ChaosReport, run_chaos
from tests.chaos._harness import ROOT, UpProcess, percentiles, start_up

Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]

LATE_MARGIN_S = 1.0
"""How much later than its deadline a request may be answered before it counts as late: room for
scheduling jitter on a loaded two-core machine (the edge's 504 at the deadline, the client's own
event loop). The client's own timeout is the deadline plus ``margin_s`` (2 s by default)."""


@dataclass
class RequestResult:
    """One request of the load: when it started, how it ended."""

    index: int
    started: float  # monotonic
    phase: str = "before"
    status: int | None = None  # None: no HTTP answer (client timeout or connection error)
    latency_s: float = 0.0
    body: Any = None
    error: str = ""
    retry_after: str | None = None


@dataclass
class LoadReport:
    """Every request's outcome and the chaos report of the run."""

    results: list[RequestResult]
    chaos: ChaosReport | None
    deadline_s: float
    margin_s: float
    chaos_window: tuple[float, float] = (0.0, 0.0)

    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.status is not None and 200 <= r.status < 300]

    def over_deadline(self) -> list[RequestResult]:
        """Requests not answered within deadline + margin (the client gave up on them)."""
        return [
            r
            for r in self.results
            if r.status is None or r.latency_s > self.deadline_s + self.margin_s
        ]

    def unanswered(self) -> list[RequestResult]:
        """Requests that got no HTTP answer at all (client timeout or connection error)."""
        return [r for r in self.results if r.status is None]

    def answered_late(self, margin_s: float = LATE_MARGIN_S) -> list[RequestResult]:
        """Requests answered, but later than deadline + ``margin_s``."""
        return [
            r
            for r in self.results
            if r.status is not None and r.latency_s > self.deadline_s + margin_s
        ]

    def figures(self) -> dict[str, Any]:
        """Success rate, statuses and latency percentiles (ms) per phase, plus the chaos summary."""
        phases: dict[str, Any] = {}
        for phase in ("before", "chaos", "after"):
            rows = [r for r in self.results if r.phase == phase]
            if not rows:
                continue
            ok = [r for r in rows if r.status is not None and 200 <= r.status < 300]
            statuses: dict[str, int] = {}
            for r in rows:
                key = str(r.status) if r.status is not None else f"none ({r.error})"
                statuses[key] = statuses.get(key, 0) + 1
            phases[phase] = {
                "requests": len(rows),
                "success_rate": round(len(ok) / len(rows), 4),
                "statuses": statuses,
                "latency_ms_2xx": percentiles([r.latency_s * 1000 for r in ok]),
                "latency_ms_all": percentiles([r.latency_s * 1000 for r in rows]),
            }
        return {
            "requests": len(self.results),
            "ok_2xx": len(self.ok()),
            "success_rate": round(len(self.ok()) / max(1, len(self.results)), 4),
            "deadline_s": self.deadline_s,
            "over_deadline": len(self.over_deadline()),
            "unanswered": len(self.unanswered()),
            "late_margin_s": LATE_MARGIN_S,
            "answered_after_deadline_plus_margin": len(self.answered_late()),
            "max_latency_s": round(max((r.latency_s for r in self.results), default=0.0), 3),
            "phases": phases,
            "chaos": (
                {k: v for k, v in self.chaos.summary().items() if k != "faults"}
                if self.chaos
                else None
            ),
        }


@dataclass
class ChaosRun:
    """A system under ``greenroom up`` plus an HTTP load and a chaos schedule (module docstring).

    ``edge_routes`` (``module:attribute``) runs the edge as its own process with that route
    table; without it ``up`` runs the edge with the default one. ``edge_env`` overrides
    variables of ``env`` for that edge process only (e.g. its Redis URL, when the nodes reach
    Redis through a fault proxy but the edge should not); it needs ``edge_routes``. Every
    process is stopped by :meth:`close` (the owning fixture calls it, also on failure).
    """

    env: Mapping[str, str]
    tmp: Path
    ups: list[UpProcess]
    actors: list[str]
    scale: Mapping[str, int] = field(default_factory=dict)
    edge_routes: str | None = None
    edge_args: list[str] = field(default_factory=list)
    edge_env: Mapping[str, str] = field(default_factory=dict)
    up_args: list[str] = field(default_factory=list)
    up: UpProcess | None = None
    edge: subprocess.Popen[bytes] | None = None
    edge_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    async def start(self, within: float = 120.0) -> None:
        """Start everything and wait until every slot runs and the edge answers."""
        if self.edge_env and not self.edge_routes:
            raise ValueError("edge_env needs edge_routes (an edge process of the run's own)")
        self.edge_port = int(self.env["GREENROOM_EDGE_PORT"])
        args = ["--actors", ",".join(self.actors)]
        for name, n in self.scale.items():
            args += ["--scale", f"{name}={n}"]
        if self.edge_routes:
            args.append("--no-edge")
        self.up = start_up(self.ups, [*args, *self.up_args], self.env, self.tmp)
        slots = len(self.actors) + sum(n - 1 for n in self.scale.values())
        await self.up.wait_running(slots + (0 if self.edge_routes else 1), within=within)
        if self.edge_routes:
            log = (self.tmp / "edge.log").open("ab")
            # Popen only forks and execs (milliseconds); the process runs on its own.
            self.edge = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-c",
                    "import sys; from runtime.cli import main; sys.exit(main())",
                    "edge",
                    "--routes",
                    self.edge_routes,
                    "--app-dir",
                    str(ROOT),
                    *self.edge_args,
                ],
                env={**self.env, **self.edge_env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:

            async def answers() -> bool:
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            with anyio.move_on_after(within):
                while not await answers():  # noqa: ASYNC110 - another process's port
                    await anyio.sleep(0.2)
                return
        raise AssertionError(f"the edge did not answer on {self.base_url} within {within}s")

    async def run(
        self,
        send: Send,
        *,
        count: int,
        rate_per_s: float,
        deadline_s: float,
        margin_s: float = 2.0,
        chaos: ChaosConfig | None = None,
        chaos_after_s: float = 0.0,
        first_index: int = 0,
    ) -> LoadReport:
        """Send ``count`` requests at ``rate_per_s``; start ``chaos`` ``chaos_after_s`` in."""
        assert self.up is not None
        results: list[RequestResult] = []
        window = [float("inf"), float("inf")]
        report: list[ChaosReport] = []
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
        async with (
            httpx.AsyncClient(
                base_url=self.base_url, timeout=deadline_s + margin_s, limits=limits
            ) as client,
            anyio.create_task_group() as tg,
        ):
            t0 = time.monotonic()

            async def one(i: int) -> None:
                result = RequestResult(index=i, started=time.monotonic())
                results.append(result)
                response = None
                # httpx's timeout bounds each phase (connect, write, read), not the whole call:
                # the deadline + margin bound is the client's own.
                with anyio.move_on_after(deadline_s + margin_s):
                    try:
                        response = await send(client, i)
                    except httpx.HTTPError as exc:
                        result.error = type(exc).__name__
                if response is None:
                    result.error = result.error or "client timeout"
                else:
                    result.status = response.status_code
                    result.retry_after = response.headers.get("retry-after")
                    try:
                        result.body = response.json()
                    except ValueError:
                        result.body = response.text
                result.latency_s = time.monotonic() - result.started

            async def faults() -> None:
                assert chaos is not None
                assert self.up is not None
                await anyio.sleep(chaos_after_s)
                window[0] = time.monotonic()
                report.append(await run_chaos(self.up.run_dir, chaos))
                window[1] = time.monotonic()

            if chaos is not None:
                tg.start_soon(faults)
            for i in range(count):
                await anyio.sleep(max(0.0, t0 + i / rate_per_s - time.monotonic()))
                tg.start_soon(one, first_index + i)
        for r in results:
            r.phase = (
                "before" if r.started < window[0] else "chaos" if r.started < window[1] else "after"
            )
        return LoadReport(
            results=sorted(results, key=lambda r: r.index),
            chaos=report[0] if report else None,
            deadline_s=deadline_s,
            margin_s=margin_s,
            chaos_window=(window[0], window[1]),
        )

    async def close(self) -> None:
        """Stop the edge (if this run started it) and ``up``; SIGKILL whatever hangs."""
        edge = self.edge
        if edge is not None and edge.poll() is None:
            os.killpg(edge.pid, signal.SIGTERM)
            with anyio.move_on_after(15):
                while edge.poll() is None:  # noqa: ASYNC110 - another process
                    await anyio.sleep(0.05)
        if self.edge is not None and self.edge.poll() is None:
            os.killpg(self.edge.pid, signal.SIGKILL)
            self.edge.wait(5)
        if self.up is not None:
            await self.up.stop()
