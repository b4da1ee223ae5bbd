"""Postgres for development and tests: a configured server, or an embedded one started here.

Order of choice (:func:`start_embedded_postgres`): the machine's own binaries (``initdb`` and
``postgres`` on PATH or under the usual package folders), run on a free 127.0.0.1 port with trust
authentication and no Unix socket; else the ``pgserver`` wheel (extra ``embedded-db``); else an
error saying what to install or which ``GREENROOM_`` variable to set.

Postgres refuses to run as root, so under root the server runs as the ``postgres`` OS user and
its data folder is handed to that user; the run folder's parents must be readable by it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar, final

from runtime.infra._process import ServerProcess, ServerStartError, free_port

__all__ = [
    "EmbeddedPostgres",
    "PgserverPostgres",
    "PostgresServer",
    "embedded_postgres",
    "find_postgres_bin",
    "postgres_round_trip",
    "start_embedded_postgres",
]

_T = TypeVar("_T")

# Where distributions put versioned server binaries that are not on PATH.
_BIN_GLOBS: Final = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL (PGDG)
    "/opt/homebrew/opt/postgresql*/bin",  # macOS, Apple silicon
    "/usr/local/opt/postgresql*/bin",  # macOS, Intel
)

NO_POSTGRES_HINT: Final = (
    "no Postgres available: set GREENROOM_POSTGRES_URL to a running server, install the"
    " Postgres server binaries (initdb, postgres), or pip install 'greenroom[embedded-db]'"
)


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]], timeout: float) -> _T:
    """Run the coroutine ``factory()`` to completion from synchronous code and return its result.

    Works whether or not the calling thread already runs an event loop (then a helper thread
    runs it), so start-up code can use async clients for its round trips.

    Raises:
        Whatever the coroutine raises; TimeoutError after ``timeout`` seconds.
    """

    async def bounded() -> _T:
        return await asyncio.wait_for(factory(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


def postgres_round_trip(url: str, timeout: float = 3.0) -> None:
    """Connect to ``url`` and run ``SELECT 1``.

    Raises:
        OSError, asyncpg.PostgresError, TimeoutError: the server is not there or refused us.
    """
    import asyncpg

    async def select_one() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            if await conn.fetchval("SELECT 1") != 1:
                raise OSError(f"Postgres at {url} answered SELECT 1 wrongly")
        finally:
            await conn.close()

    _run_blocking(select_one, timeout)


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (newest version first), or None."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    for pattern in _BIN_GLOBS:
        root = Path("/")
        found = sorted(root.glob(pattern.lstrip("/")), key=_version_key, reverse=True)
        candidates.extend(found)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); sort numerically so 9 < 15.
    digits = "".join(c if c.isdigit() else " " for c in str(path)).split()
    return tuple(int(d) for d in digits)


def _server_user() -> str | None:
    """None when we may run Postgres ourselves; the OS user to run it as when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerStartError(
            "Postgres refuses to run as root and there is no 'postgres' OS user to run it as; "
            + NO_POSTGRES_HINT
        ) from None
    return "postgres"


@final
class PostgresServer:
    """The machine's Postgres binaries run on 127.0.0.1:``port`` with data under ``run_dir``.

    Trust authentication for the ``postgres`` superuser, TCP on 127.0.0.1 only (no Unix socket),
    and fsync off: this is a throw-away development server, not a place to keep data.
    """

    name: Final = "postgres"

    def __init__(self, run_dir: Path, *, port: int | None = None, bin_dir: Path | None = None):
        found = bin_dir or find_postgres_bin()
        if found is None:
            raise ServerStartError(NO_POSTGRES_HINT)
        self.bin_dir = found
        self.run_dir = run_dir
        self.data_dir = run_dir / "data"
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = _server_user()
        self.process = ServerProcess(
            "postgres",
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-F",  # fsync off: nothing here must survive a machine crash
            ],
            run_dir / "postgres.log",
            cwd=self.data_dir,
            user=self.user,
            # SIGINT is Postgres's "fast" shutdown; SIGTERM ("smart") waits for clients to leave.
            stop_signal=signal.SIGINT,
        )

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster on first use, start the server and wait for ``SELECT 1``.

        Raises:
            ServerStartError: initdb failed, or the server exited or did not answer in time.
        """
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(timeout)
        self.process.start()
        self.process.wait_ready(self._answers, timeout)

    def _answers(self) -> bool:
        postgres_round_trip(self.url)
        return True

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected); idempotent. The data folder stays."""
        self.process.stop()

    def _initdb(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        log_path = self.run_dir / "initdb.log"
        with open(log_path, "ab") as log:
            done = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
                extra_groups=[] if self.user else None,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
            hint = (
                f" (it runs as OS user {self.user!r}, who must be able to enter {self.run_dir})"
                if self.user
                else ""
            )
            raise ServerStartError(
                f"postgres: initdb failed with code {done.returncode}{hint};"
                f" log {log_path}:\n{tail}"
            )


@final
class PgserverPostgres:
    """Postgres from the ``pgserver`` wheel (extra ``embedded-db``), reached by a Unix socket.

    Under root, pgserver creates an OS user ``pgserver`` and widens the permissions of its data
    folder's parents; prefer the machine's binaries (:class:`PostgresServer`) where they exist.
    """

    name: Final = "postgres"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.url = ""
        self._server: Any = None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or join) pgserver's server for ``run_dir`` and check ``SELECT 1``.

        Raises:
            ServerStartError: pgserver is not installed or its server does not answer.
        """
        try:
            import pgserver
        except ImportError as exc:
            raise ServerStartError(NO_POSTGRES_HINT) from exc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.run_dir / "pgdata", cleanup_mode="stop")
        self.url = str(self._server.get_uri())
        try:
            postgres_round_trip(self.url, timeout)
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise ServerStartError(f"postgres (pgserver) does not answer: {exc}") from exc

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


EmbeddedPostgres = PostgresServer | PgserverPostgres


def embedded_postgres(run_dir: Path) -> EmbeddedPostgres:
    """A development Postgres, not started: the machine's binaries if found, else pgserver.

    The pgserver choice raises at ``start()`` when the wheel is missing, with the hint.
    """
    if find_postgres_bin() is not None:
        return PostgresServer(run_dir)
    return PgserverPostgres(run_dir)


def start_embedded_postgres(run_dir: Path, timeout: float = 60.0) -> EmbeddedPostgres:
    """Start :func:`embedded_postgres` and wait for it.

    Raises:
        ServerStartError: neither kind is available (the message says what to install or set),
            or the chosen server failed to start.
    """
    server = embedded_postgres(run_dir)
    server.start(timeout)
    return server
