#!/usr/bin/env python3
"""Container health probe for the Greenroom image (Docker HEALTHCHECK, Kubernetes exec probes).

    greenroom-healthcheck            alive?  (Kubernetes liveness)
    greenroom-healthcheck --ready    ready?  (Docker HEALTHCHECK, compose, Kubernetes readiness)

It reads PID 1's command line (tini's, in the image) to learn which role runs here:

* a node, ``greenroom run <actor> --health-file PATH``: the node rewrites PATH every second with
  its state (runtime/node.py). Alive: the file is younger than ``MAX_AGE_S`` and the state is
  starting, running or draining (a draining node must not be killed mid-drain). Ready: the state
  is ``running``. A missing or stale file means the event loop is stuck or the node is gone.
* the edge, ``greenroom edge``: ``GET /health`` (alive) or ``GET /ready`` (the bus and Redis
  answer) on ``GREENROOM_EDGE_PORT``.

Exit 0 healthy, 1 not (the reason on stderr). Standard library only and no Greenroom import: the
slim image has no curl, and a probe runs every few seconds so it must stay cheap.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

MAX_AGE_S = 10.0  # the node writes every 1 s; allow for a busy machine before calling it stuck
EDGE_DEFAULT_PORT = "8000"  # Settings.edge_port's default
ALIVE_STATES = frozenset({"starting", "running", "draining"})


class UnhealthyError(Exception):
    """The probe failed; the message says why."""


def role_of(cmdline: Sequence[str]) -> tuple[str, list[str]]:
    """``("edge" | "node" | "unknown", arguments after the subcommand)`` from PID 1's argv."""
    names = [Path(arg).name for arg in cmdline]
    if "greenroom" not in names:
        return "unknown", []
    rest = list(cmdline[names.index("greenroom") + 1 :])
    if rest[:1] == ["edge"]:
        return "edge", rest[1:]
    if rest[:1] == ["run"]:
        return "node", rest[1:]
    return "unknown", rest


def health_file_of(args: Sequence[str]) -> Path:
    """The ``--health-file`` given to ``greenroom run``."""
    for i, arg in enumerate(args):
        if arg == "--health-file" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--health-file="):
            return Path(arg.split("=", 1)[1])
    raise UnhealthyError("the node runs without --health-file, so it cannot be probed")


def check_node(health_file: Path, *, ready: bool, now: float | None = None) -> str:
    """Raise :class:`UnhealthyError` unless the heartbeat file is fresh and its state fits."""
    try:
        report = json.loads(health_file.read_text())
    except (OSError, ValueError) as exc:
        raise UnhealthyError(f"no readable heartbeat at {health_file}: {exc}") from exc
    age = (time.time() if now is None else now) - float(report.get("at", 0))
    if age > MAX_AGE_S:
        raise UnhealthyError(f"heartbeat {age:.1f}s old (limit {MAX_AGE_S:.0f}s): node stuck")
    state = report.get("state")
    if ready and state != "running":
        raise UnhealthyError(f"node state {state!r}, not running")
    if not ready and state not in ALIVE_STATES:
        raise UnhealthyError(f"node state {state!r}")
    return f"node {report.get('actor')} {state}"


def check_edge(env: Mapping[str, str], *, ready: bool) -> str:
    """Raise :class:`UnhealthyError` unless the edge answers /health (or /ready) with 2xx."""
    port = env.get("GREENROOM_EDGE_PORT", EDGE_DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}/{'ready' if ready else 'health'}"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status = response.status
    except (OSError, urllib.error.URLError) as exc:
        raise UnhealthyError(f"{url}: {exc}") from exc
    if not 200 <= status < 300:
        raise UnhealthyError(f"{url}: HTTP {status}")
    return f"edge {url} {status}"


def pid1_cmdline() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [arg for arg in raw.decode(errors="replace").split("\0") if arg]


def main(argv: Sequence[str], cmdline: Sequence[str] | None = None) -> int:
    ready = "--ready" in argv[1:]
    role, args = role_of(pid1_cmdline() if cmdline is None else cmdline)
    if role == "unknown":
        print(
            f"unhealthy: PID 1 is not `greenroom run` or `greenroom edge`: {args}", file=sys.stderr
        )
        return 1
    try:
        if role == "node":
            print(check_node(health_file_of(args), ready=ready))
        else:
            print(check_edge(os.environ, ready=ready))
    except UnhealthyError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
