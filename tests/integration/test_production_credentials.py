"""Production credentials: a service provisioned by ``deploy/scripts/init_infra.py`` (the compose /
Kubernetes init step) starts holding only its own Postgres login and Redis ACL user, and the
adapters accept them as they are; development's admin URLs provision instead (tested elsewhere).

Runs the real init functions against the real servers: Postgres in a database of its own (the
init step revokes PUBLIC's privileges on the database it is given), Redis with a unique user.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from adapters.postgres import (
    Database,
    ProvisioningError,
    actor_credentials,
    apply_migrations,
    migrations_from_package,
)
from adapters.postgres.migrations import GREENROOM_MIGRATIONS
from adapters.redis import ActorRedis, actor_redis_credentials

INIT_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "scripts" / "init_infra.py"


def _init_infra() -> ModuleType:
    spec = importlib.util.spec_from_file_location("greenroom_init_infra", INIT_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def own_database(postgres_url: str, unique: str) -> AsyncIterator[str]:
    """An admin URL of a fresh database, dropped (with the test's roles) afterwards."""
    name = f"gr_prod_{unique}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_path(postgres_url, f"/{name}")
    finally:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'DROP ROLE IF EXISTS "svc_{unique}"')
        finally:
            await admin.close()


@pytest.mark.postgres
async def test_a_service_provisioned_by_init_runs_with_only_its_own_postgres_login(
    own_database: str, unique: str
) -> None:
    init = _init_infra()
    service, password = f"svc_{unique}", f"pw-{unique}"
    await init.ensure_postgres(
        own_database,
        None,
        [init.Credentials(service=service, postgres_user=service, postgres_password=password)],
        timeout_s=10,
    )
    own_url = _with_login(own_database, service, password)

    credentials = await actor_credentials(own_url, service)

    assert (credentials.user, credentials.schema) == (service, service)
    database = await Database.connect(credentials)
    try:
        await apply_migrations(database, migrations_from_package(GREENROOM_MIGRATIONS))
        tables = await database.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", service
        )
        assert {"inbox", "outbox"} <= {row["table_name"] for row in tables}
    finally:
        await database.close()
    # The same login is no admin and owns no other actor's schema: a clear refusal.
    with pytest.raises(ProvisioningError, match="GREENROOM_POSTGRES_URL"):
        await actor_credentials(own_url, f"other_{unique}")


@pytest.mark.redis
async def test_a_service_provisioned_by_init_runs_with_only_its_own_redis_user(
    redis_url: str, unique: str
) -> None:
    init = _init_infra()
    service, password = f"svc_{unique}", f"pw-{unique}"
    await init.ensure_redis(
        redis_url,
        None,
        [init.Credentials(service=service, redis_user=service, redis_password=password)],
        save=False,
        timeout_s=10,
    )
    admin = aioredis.Redis.from_url(redis_url)
    try:
        credentials = await actor_redis_credentials(
            _with_login(redis_url, service, password), service
        )
        assert (credentials.username, credentials.prefix) == (service, f"{service}:")
        client = ActorRedis.connect(credentials)
        try:
            await client.set("greeting", b"hello")
            assert await client.get("greeting") == b"hello"
        finally:
            await client.aclose()
        # The key landed under the service's prefix, written as the service's own user.
        assert await admin.get(f"{service}:greeting") == b"hello"
    finally:
        await admin.execute_command("ACL", "DELUSER", service)  # type: ignore[no-untyped-call]
        await admin.delete(f"{service}:greeting")
        await admin.aclose()
