#!/usr/bin/env python3
"""Prepare real infrastructure for Greenroom's services; safe to run again at any time.

For every service it makes, idempotently:

* Kafka: ``<prefix><service>.commands``, ``.events`` and ``.dlq`` with ``--partitions`` each
  (an existing topic with fewer partitions is grown, never shrunk);
* Postgres: a login role, and a schema named after the service owned by that role, with nothing
  granted to PUBLIC, so no other service's role can even look inside it;
* Redis: an ACL user limited to keys and channels under ``<service>:``.

Each service's credentials come from its settings file ``<secrets-dir>/<service>.toml`` (the same
``GREENROOM_CONFIG`` file the service itself mounts), so there is one source for every password:
the role is the user name in ``postgres_url``, the Redis user the one in ``redis_url``.
Buckets are made by ``init_buckets.sh`` with MinIO's ``mc`` (user management is MinIO's admin
API, which no library in this image speaks).

Runs in the Greenroom image (aiokafka, asyncpg and redis are its dependencies) and imports
nothing from Greenroom: infrastructure set-up must not depend on application code.
Exit status: 0 when everything exists as described, 1 with a message naming what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

SERVICES = ("auth", "users", "orders", "inventory", "payments", "files")
TOPIC_KINDS = ("commands", "events", "dlq")
_TOPIC_ALREADY_EXISTS = 36


class InitError(RuntimeError):
    """A step could not be completed; the message names the service and the resource."""


@dataclass(frozen=True)
class Credentials:
    """What one service logs in with, read from its settings file."""

    service: str
    postgres_user: str | None = None
    postgres_password: str | None = None
    redis_user: str | None = None
    redis_password: str | None = None


def _user_and_password(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user, password


def read_credentials(secrets_dir: Path, service: str) -> Credentials:
    """The credentials in ``<secrets_dir>/<service>.toml``.

    Raises:
        InitError: the file is missing or is not TOML.
    """
    path = secrets_dir / f"{service}.toml"
    try:
        settings = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InitError(f"{service}: cannot read its settings file {path}: {exc}") from exc
    pg_user, pg_password = _user_and_password(str(settings.get("postgres_url", "")))
    redis_user, redis_password = _user_and_password(str(settings.get("redis_url", "")))
    return Credentials(service, pg_user, pg_password, redis_user, redis_password)


def redis_acl_rules(password: str, prefix: str) -> list[str]:
    """ACL SETUSER rules: the password, keys and channels under ``prefix:``, no admin commands.

    ``reset`` first makes a re-run converge (a rotated password replaces the old one).
    """
    return [
        "reset",
        "on",
        f">{password}",
        f"~{prefix}:*",
        f"&{prefix}:*",
        "+@all",
        "-@admin",
        "-@dangerous",
    ]


def redis_acl_file_line(user: str, password: str, prefix: str) -> str:
    """The same rules as :func:`redis_acl_rules` as an aclfile line, the password as a hash."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = [f"#{digest}" if r == f">{password}" else r for r in redis_acl_rules(password, prefix)]
    return " ".join(["user", user, *(r for r in rules if r != "reset")])


# --------------------------------------------------------------------------------------- Kafka


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], *, replication: int, timeout_s: float = 60.0
) -> None:
    """Create ``topics`` (name -> partitions); grow an existing topic that has fewer.

    Raises:
        InitError: the cluster did not answer within ``timeout_s`` or refused a topic.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="greenroom-init")
    await _retry_until(admin.start, f"Kafka at {bootstrap}", timeout_s)
    try:
        try:
            response = await admin.create_topics(
                [NewTopic(name, count, replication) for name, count in topics.items()]
            )
        except KafkaError as exc:
            raise InitError(f"creating topics at {bootstrap} failed: {exc!r}") from exc
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise InitError(f"topic {name!r}: error code {code} {rest[0] if rest else ''}")
        described = await admin.describe_topics(list(topics))
        grow = {
            entry["topic"]: NewPartitions(total_count=topics[entry["topic"]])
            for entry in described
            if entry["error_code"] == 0 and len(entry["partitions"]) < topics[entry["topic"]]
        }
        if grow:
            await admin.create_partitions(grow)
    finally:
        await admin.close()


# ------------------------------------------------------------------------------------ Postgres


async def ensure_postgres(
    admin_url: str,
    admin_password: str | None,
    creds: Sequence[Credentials],
    *,
    timeout_s: float = 60.0,
) -> None:
    """One login role and one schema (named after the service, owned by the role) per service.

    PUBLIC loses every privilege on the database and the schemas, and each role gets CONNECT
    only, so a service's role can reach its own schema and nothing else.

    Raises:
        InitError: Postgres did not answer within ``timeout_s`` or refused a statement.
    """
    import asyncpg

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(admin_url, password=admin_password)

    conn = await _retry_until(connect, "Postgres", timeout_s)
    try:
        database = await conn.fetchval("SELECT current_database()")
        # DDL takes no bind parameters; format() with %I/%L quotes names and passwords server-side.
        await _ddl(conn, "REVOKE ALL ON DATABASE %I FROM PUBLIC", database)
        await _ddl(conn, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for c in creds:
            if not (c.postgres_user and c.postgres_password):
                continue
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_roles WHERE rolname = $1", c.postgres_user
            )
            await _ddl(
                conn,
                ("ALTER" if exists else "CREATE")
                + " ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                " NOREPLICATION NOBYPASSRLS PASSWORD %L",
                c.postgres_user,
                c.postgres_password,
            )
            await _ddl(conn, "GRANT CONNECT ON DATABASE %I TO %I", database, c.postgres_user)
            await _ddl(
                conn, "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I", c.service, c.postgres_user
            )
            await _ddl(conn, "ALTER SCHEMA %I OWNER TO %I", c.service, c.postgres_user)
            await _ddl(conn, "REVOKE ALL ON SCHEMA %I FROM PUBLIC", c.service)
            await _ddl(conn, "ALTER ROLE %I SET search_path = %I", c.postgres_user, c.service)
    except asyncpg.PostgresError as exc:
        raise InitError(f"Postgres set-up failed: {exc}") from exc
    finally:
        await conn.close()


async def _ddl(conn: object, template: str, *args: str) -> None:
    placeholders = ", ".join(f"${i}::text" for i in range(1, len(args) + 1))
    query = f"SELECT format('{template}'{', ' if args else ''}{placeholders})"
    statement = await conn.fetchval(query, *args)  # type: ignore[attr-defined]
    await conn.execute(statement)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- Redis


async def ensure_redis(
    admin_url: str,
    admin_password: str | None,
    creds: Sequence[Credentials],
    *,
    save: bool,
    timeout_s: float = 60.0,
) -> None:
    """An ACL user per service, confined to ``<service>:`` keys and channels.

    With ``save``, ``ACL SAVE`` writes them to the server's aclfile so a restart keeps them.

    Raises:
        InitError: Redis did not answer within ``timeout_s`` or refused a rule.
    """
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(admin_url, password=admin_password)
    try:
        await _retry_until(client.ping, "Redis", timeout_s)
        for c in creds:
            if not (c.redis_user and c.redis_password):
                continue
            await client.execute_command(
                "ACL", "SETUSER", c.redis_user, *redis_acl_rules(c.redis_password, c.service)
            )
        if save:
            await client.execute_command("ACL", "SAVE")
    except RedisError as exc:
        raise InitError(f"Redis set-up failed: {exc}") from exc
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------- driving


async def _retry_until(start: object, what: str, timeout_s: float) -> object:
    # The init container may start before its servers accept connections (or they restart);
    # retry with a bounded total time instead of failing the whole deployment at once.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.5
    while True:
        try:
            return await start()  # type: ignore[operator]
        except Exception as exc:
            if loop.time() + delay > deadline:
                raise InitError(f"{what} did not answer within {timeout_s:.0f}s: {exc!r}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _read_secret(path: str | None) -> str | None:
    return Path(path).read_text().strip() if path else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--services",
        default=",".join(SERVICES),
        help="comma-separated service names (default: all six)",
    )
    parser.add_argument(
        "--redis-only",
        default="edge",
        help="comma-separated names that get only a Redis user (the edge)",
    )
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path("/run/secrets"),
        help="folder holding <service>.toml settings files",
    )
    parser.add_argument("--kafka-bootstrap", default=env.get("GREENROOM_KAFKA_BOOTSTRAP", ""))
    parser.add_argument("--topic-prefix", default=env.get("GREENROOM_TOPIC_PREFIX", ""))
    parser.add_argument(
        "--partitions", type=int, default=int(env.get("GREENROOM_PARTITIONS", "12"))
    )
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument(
        "--postgres-admin-url",
        default="",
        help="e.g. postgresql://postgres@postgres:5432/greenroom",
    )
    parser.add_argument("--postgres-admin-password-file")
    parser.add_argument("--redis-admin-url", default="", help="e.g. redis://default@redis:6379/0")
    parser.add_argument("--redis-admin-password-file")
    parser.add_argument(
        "--redis-acl-save",
        action="store_true",
        help="ACL SAVE afterwards (the server must run with an aclfile)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each server to answer"
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Every step the arguments ask for (a step without its server address is skipped)."""
    services = [s for s in args.services.split(",") if s]
    creds = [read_credentials(args.secrets_dir, s) for s in services]
    redis_creds = creds + [
        read_credentials(args.secrets_dir, s) for s in args.redis_only.split(",") if s
    ]
    if args.kafka_bootstrap:
        topics = {
            f"{args.topic_prefix}{s}.{kind}": args.partitions
            for s in services
            for kind in TOPIC_KINDS
        }
        await ensure_topics(
            args.kafka_bootstrap,
            topics,
            replication=args.replication_factor,
            timeout_s=args.timeout,
        )
        print(f"kafka: {len(topics)} topics with {args.partitions} partitions", flush=True)
    if args.postgres_admin_url:
        await ensure_postgres(
            args.postgres_admin_url,
            _read_secret(args.postgres_admin_password_file),
            creds,
            timeout_s=args.timeout,
        )
        print(f"postgres: roles and schemas for {', '.join(services)}", flush=True)
    if args.redis_admin_url:
        await ensure_redis(
            args.redis_admin_url,
            _read_secret(args.redis_admin_password_file),
            redis_creds,
            save=args.redis_acl_save,
            timeout_s=args.timeout,
        )
        print(
            f"redis: ACL users for {', '.join(c.service for c in redis_creds if c.redis_user)}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except InitError as exc:
        print(f"init failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
