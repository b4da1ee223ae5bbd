"""The development infrastructure as one unit: start what is not configured, stop it all.

:class:`InfraStack` starts, in this order, Tansu (unless ``kafka_bootstrap`` is set), SeaweedFS
(unless ``s3_endpoint`` is set), Postgres (unless ``postgres_url`` is set) and Redis (unless
``redis_url`` is set), each on 127.0.0.1 on a free port with its log under ``run_dir/<name>/``,
each waited for with a real round trip. Configured Postgres and Redis URLs are checked with a
round trip too, so a wrong URL fails here and not in the first actor. Servers stop in reverse
order, also when start-up fails half way or is interrupted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, final

import msgspec

from runtime.config import ENV_PREFIX, Settings
from runtime.infra._process import ServerStartError

__all__ = ["INFRA_SETTINGS", "InfraStack"]

#: The settings the stack decides; another process needs exactly these to use it.
INFRA_SETTINGS: Final = (
    "kafka_bootstrap",
    "kafka_idempotence",
    "kafka_fetch_max_wait_ms",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_region",
    "postgres_url",
    "redis_url",
)


class _Server(Protocol):
    def start(self, timeout: float) -> None: ...

    def stop(self) -> None: ...


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


@final
class InfraStack:
    """Embedded servers for whatever ``settings`` leaves unconfigured; a context manager.

    ``with InfraStack(settings, run_dir) as infra: infra.settings()`` gives the settings that
    reach every server. ``progress`` receives one line per step (default: standard output).
    """

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        *,
        timeout: float = 60.0,
        progress: Callable[[str], None] | None = _say,
    ) -> None:
        self.run_dir = run_dir
        self.timeout = timeout
        self._given = settings
        self._settings = settings
        self._progress = progress or (lambda _line: None)
        # (name, server) in start order; stopped in reverse.
        self.started: list[tuple[str, _Server]] = []
        #: pid and address of each started server (pid 0: a wheel's server we hold no pid for).
        self.pids: dict[str, int] = {}
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> InfraStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def settings(self) -> Settings:
        """The given settings with the addresses and credentials of the started servers."""
        return self._settings

    def env(self) -> dict[str, str]:
        """The ``GREENROOM_*`` variables another process needs to use these servers."""
        out = {}
        for name in INFRA_SETTINGS:
            value = getattr(self._settings, name)
            out[ENV_PREFIX + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return out

    def dead(self) -> list[str]:
        """Names of started servers whose process has exited (for a watchdog)."""
        out = []
        for name, server in self.started:
            process = getattr(server, "process", None)
            if process is not None and not process.alive():
                out.append(name)
        return out

    def start(self) -> Settings:
        """Start every server not configured in the settings; return :meth:`settings`.

        Raises:
            ServerStartError: a server did not start or a configured one did not answer; the
                servers already started are stopped first.
            RuntimeError: a binary's package is missing (the message names the extra).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_all()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM turned into an exception) or failed: leave nothing.
            self.stop()
            raise
        return self._settings

    def stop(self) -> None:
        """Stop the started servers in reverse order (idempotent, never raises on a dead one)."""
        while self.started:
            name, server = self.started.pop()
            began = time.monotonic()
            server.stop()
            self.pids.pop(name, None)
            self.addresses.pop(name, None)
            self._progress(f"stopped {name} in {time.monotonic() - began:.1f}s")

    def _start_all(self) -> None:
        given = self._given
        changes: dict[str, object] = {}
        if given.kafka_bootstrap:
            self._progress(f"using configured kafka at {given.kafka_bootstrap}")
        else:
            from runtime.infra.tansu import TansuServer

            tansu = TansuServer(self.run_dir / "tansu")
            self._start("tansu", tansu, lambda: tansu.bootstrap)
            self.pids["tansu"] = tansu.process.pid or 0
            # Tansu's limits (DESIGN.md): no idempotent producer; fetches wait the full time.
            changes.update(
                kafka_bootstrap=tansu.bootstrap,
                kafka_idempotence=False,
                kafka_fetch_max_wait_ms=5,
            )
        if given.s3_endpoint:
            self._check_s3(given)
        else:
            from runtime.infra.seaweedfs import SeaweedFSServer

            seaweed = SeaweedFSServer(self.run_dir / "seaweedfs", region=given.s3_region)
            self._start("seaweedfs", seaweed, lambda: seaweed.endpoint)
            self.pids["seaweedfs"] = seaweed.process.pid or 0
            changes.update(
                s3_endpoint=seaweed.endpoint,
                s3_access_key=seaweed.access_key,
                s3_secret_key=seaweed.secret_key,
            )
        if given.postgres_url:
            from runtime.infra.postgres import postgres_round_trip

            self._check(
                "postgres", given.postgres_url, lambda: postgres_round_trip(given.postgres_url)
            )
        else:
            from runtime.infra.postgres import PostgresServer, embedded_postgres

            pg = embedded_postgres(self.run_dir / "postgres")
            self._start("postgres", pg, lambda: pg.url)
            if isinstance(pg, PostgresServer):
                self.pids["postgres"] = pg.process.pid or 0
            changes["postgres_url"] = pg.url
        if given.redis_url:
            from runtime.infra.redis import redis_round_trip

            self._check("redis", given.redis_url, lambda: redis_round_trip(given.redis_url))
        else:
            from runtime.infra.redis import RedisServer, embedded_redis

            rd = embedded_redis(self.run_dir / "redis")
            self._start("redis", rd, lambda: rd.url)
            if isinstance(rd, RedisServer):
                self.pids["redis"] = rd.process.pid or 0
            changes["redis_url"] = rd.url
        self._settings = msgspec.structs.replace(given, **changes)

    def _start(self, name: str, server: _Server, address: Callable[[], str]) -> None:
        self._progress(f"starting {name} ...")
        began = time.monotonic()
        # Registered before start: a start that fails half way still gets its stop().
        self.started.append((name, server))
        server.start(self.timeout)
        self.addresses[name] = address()
        self._progress(f"{name} ready on {address()} in {time.monotonic() - began:.1f}s")

    def _check(self, name: str, url: str, round_trip: Callable[[], None]) -> None:
        try:
            round_trip()
        except Exception as exc:
            # Any failure of the round trip means the same thing: the configured URL is unusable.
            setting = ENV_PREFIX + name.upper() + "_URL"
            raise ServerStartError(
                f"{setting}: configured {name} at {_redact(url)} does not answer: {exc}"
            ) from exc
        self._progress(f"using configured {name} at {_redact(url)}")

    def _check_s3(self, given: Settings) -> None:
        from runtime.infra.seaweedfs import s3_round_trip

        if not (given.s3_access_key and given.s3_secret_key):
            raise ServerStartError(
                "GREENROOM_S3_ENDPOINT is set, so GREENROOM_S3_ACCESS_KEY and"
                " GREENROOM_S3_SECRET_KEY must be set too"
            )
        try:
            s3_round_trip(
                given.s3_endpoint, given.s3_access_key, given.s3_secret_key, given.s3_region
            )
        except Exception as exc:
            # botocore raises ClientError or BotoCoreError subclasses; both mean "unusable".
            raise ServerStartError(
                f"GREENROOM_S3_ENDPOINT: configured S3 at {given.s3_endpoint} refused"
                f" ListBuckets with the configured keys: {exc}"
            ) from exc
        self._progress(f"using configured s3 at {given.s3_endpoint}")


def _redact(url: str) -> str:
    # postgresql://user:secret@host/db -> postgresql://user:***@host/db
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
