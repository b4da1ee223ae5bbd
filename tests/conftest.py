"""Session-wide real servers and per-test unique names.

Servers are started by the project's own code (runtime.infra) on 127.0.0.1 free ports and
stopped when the session ends. Each test gets unique topic/group names so tests never see each
other's state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from runtime.infra.tansu import TansuServer

if TYPE_CHECKING:
    from runtime.infra.seaweedfs import SeaweedFSServer

RUN_ROOT = Path(
    os.environ.get("GREENROOM_TEST_RUN_DIR", Path(__file__).parent.parent / ".run" / "tests")
)


@pytest.fixture(scope="session")
def run_dir() -> Path:
    path = RUN_ROOT / uuid.uuid4().hex[:8]
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tansu(run_dir: Path) -> Iterator[TansuServer]:
    """One Tansu broker for the whole session (in-memory storage)."""
    server = TansuServer(run_dir / "tansu")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for topic, group, schema and bucket names."""
    return uuid.uuid4().hex[:10]


# In CI a test that needs a real server must run, never skip: a skipped Kafka test would hide a
# broken infrastructure start behind a green build.
_REAL_SERVER_MARKERS = ("kafka", "postgres", "redis", "s3", "e2e", "chaos")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("CI")
        and report.skipped
        and any(item.get_closest_marker(m) for m in _REAL_SERVER_MARKERS)
        and not item.get_closest_marker("allow_skip_in_ci")
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI, but it needs a real server that CI provides: {report.longrepr}"
        )


# --- data servers (runtime.infra): the machine's own where present, else embedded ones.

MACHINE_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def seaweed(run_dir: Path) -> Iterator[SeaweedFSServer]:
    """One SeaweedFS (``weed mini``, S3 with an admin identity) for the whole session."""
    from runtime.infra.seaweedfs import SeaweedFSServer

    server = SeaweedFSServer(run_dir / "seaweedfs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(run_dir: Path) -> Iterator[str]:
    """The machine's Postgres on 127.0.0.1:5432 if it answers, else an embedded one."""
    from runtime.infra.postgres import postgres_round_trip, start_embedded_postgres

    try:
        postgres_round_trip(MACHINE_POSTGRES_URL, timeout=2.0)
    except Exception:  # any failure means "not usable here": start our own
        server = start_embedded_postgres(run_dir / "postgres")
        try:
            yield server.url
        finally:
            server.stop()
        return
    yield MACHINE_POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url(run_dir: Path) -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379 if it answers, else an embedded one."""
    from runtime.infra.redis import redis_round_trip, start_embedded_redis

    try:
        redis_round_trip(MACHINE_REDIS_URL, timeout=2.0)
    except Exception:  # any failure means "not usable here": start our own
        server = start_embedded_redis(run_dir / "redis")
        try:
            yield server.url
        finally:
            server.stop()
        return
    yield MACHINE_REDIS_URL
