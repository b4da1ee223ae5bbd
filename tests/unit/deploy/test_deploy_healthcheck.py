"""deploy/healthcheck.py: the container probe for nodes (heartbeat file) and the edge (HTTP)."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.deploy._deployfiles import DEPLOY


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _heartbeat(path: Path, state: str, age: float = 0.0) -> None:
    path.write_text(json.dumps({"actor": "orders", "state": state, "at": time.time() - age}))


def _node_cmd(path: Path) -> list[str]:
    return [
        "/usr/bin/tini",
        "--",
        "/usr/local/bin/greenroom",
        "run",
        "orders",
        "--health-file",
        str(path),
    ]


@pytest.mark.parametrize(
    ("state", "age", "codes"),
    [
        ("running", 0.0, (0, 0)),
        ("starting", 0.0, (0, 1)),
        ("draining", 0.0, (0, 1)),  # a draining node must not be killed, nor get new work
        ("stopped", 0.0, (1, 1)),
        ("running", 60.0, (1, 1)),  # stale: the event loop is stuck
    ],
)
def test_node_probe_reads_the_heartbeat(probe, tmp_path, state, age, codes) -> None:
    alive, ready = codes  # exit codes of the liveness and the readiness probe
    health = tmp_path / "health.json"
    _heartbeat(health, state, age)
    assert probe.main(["greenroom-healthcheck"], _node_cmd(health)) == alive
    assert probe.main(["greenroom-healthcheck", "--ready"], _node_cmd(health)) == ready


def test_node_probe_fails_without_a_heartbeat(probe, tmp_path) -> None:
    assert probe.main(["x"], _node_cmd(tmp_path / "missing.json")) == 1
    assert probe.main(["x"], ["tini", "--", "greenroom", "run", "orders"]) == 1
    assert probe.main(["x"], ["python", "something-else"]) == 1


@pytest.fixture
def edge_server(monkeypatch) -> Iterator[dict[str, int]]:
    codes = {"/health": 200, "/ready": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(codes.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GREENROOM_EDGE_PORT", str(server.server_address[1]))
    try:
        yield codes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_edge_probe_uses_health_and_ready(probe, edge_server) -> None:
    edge = ["tini", "--", "greenroom", "edge"]
    assert probe.main(["x"], edge) == 0
    assert probe.main(["x", "--ready"], edge) == 1
    edge_server["/ready"] = 200
    assert probe.main(["x", "--ready"], edge) == 0
