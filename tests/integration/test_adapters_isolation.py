"""Data ownership on the real servers (DESIGN.md): each actor's credentials reach its own data and
nothing else. Postgres: role + schema per actor, migrations; Redis: ACL user + key prefix, cache
single flight; S3: bucket + keys per actor, streamed get, multipart put, presigned URLs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from adapters.postgres import (
    Database,
    Migration,
    MigrationError,
    apply_migrations,
    drop_actor,
    migrations_from_package,
    provision_actor,
)
from adapters.postgres.migrations import GREENROOM_MIGRATIONS
from runtime.infra.seaweedfs import SeaweedFSServer

asyncpg = pytest.importorskip("asyncpg")
redis_exceptions = pytest.importorskip("redis.exceptions")
botocore_exceptions = pytest.importorskip("botocore.exceptions")


async def _pg_pair(postgres_url: str, unique: str) -> AsyncIterator[tuple[Database, Database]]:
    a, b = f"iso_a_{unique}", f"iso_b_{unique}"
    try:
        db_a = await Database.connect(await provision_actor(postgres_url, a))
        db_b = await Database.connect(await provision_actor(postgres_url, b))
        try:
            yield db_a, db_b
        finally:
            await db_a.close()
            await db_b.close()
    finally:
        await drop_actor(postgres_url, a)
        await drop_actor(postgres_url, b)


# -- Postgres ------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_role_cannot_read_another_actors_tables(
    postgres_url: str, unique: str
) -> None:
    async for db_a, db_b in _pg_pair(postgres_url, unique):
        await db_b.execute("CREATE TABLE secrets (value text)")
        await db_b.execute("INSERT INTO secrets VALUES ('b only')")
        assert await db_b.fetchval("SELECT value FROM secrets") == "b only"
        assert await db_a.fetchval("SELECT current_user") == f"gr_iso_a_{unique}"
        assert await db_a.fetchval("SHOW search_path") == f"iso_a_{unique}"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await db_a.fetch(f"SELECT * FROM iso_b_{unique}.secrets")
        # Nor can it create anything outside its schema.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db_a.execute(f"CREATE TABLE iso_b_{unique}.planted (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db_a.execute("CREATE TABLE public.planted (x int)")
        # The catalog agrees: no privilege on B's schema is granted to anyone but its owner.
        acl = await db_a.fetchval(
            "SELECT nspacl::text FROM pg_namespace WHERE nspname = $1", f"iso_b_{unique}"
        )
        assert acl == f"{{gr_iso_b_{unique}=UC/gr_iso_b_{unique}}}"


@pytest.mark.postgres
async def test_provisioning_is_idempotent_and_concurrent_safe(
    postgres_url: str, unique: str
) -> None:
    actor = f"idem_{unique}"
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(provision_actor, postgres_url, actor)
        creds = await provision_actor(postgres_url, actor)
        db = await Database.connect(creds)
        try:
            await db.execute("CREATE TABLE t (x int)")
            await provision_actor(postgres_url, actor)  # again, with data in place
            assert await db.fetchval("SELECT count(*) FROM t") == 0
        finally:
            await db.close()
    finally:
        await drop_actor(postgres_url, actor)


@pytest.mark.postgres
async def test_migrations_apply_once_in_order_and_detect_edits(
    postgres_url: str, unique: str
) -> None:
    actor = f"mig_{unique}"
    first = Migration(source="test", name="0001_init.sql", sql="CREATE TABLE item (id int)")
    second = Migration(source="test", name="0002_more.sql", sql="ALTER TABLE item ADD name text")
    try:
        db = await Database.connect(await provision_actor(postgres_url, actor))
        try:
            builtin = migrations_from_package(GREENROOM_MIGRATIONS)
            # Several starters at once: the advisory lock lets one apply, the rest find it done.
            applied: list[list[str]] = []

            async def start() -> None:
                applied.append(await apply_migrations(db, [*builtin, first, second]))

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(start)
            assert sorted(applied, key=len) == [
                [],
                [],
                ["0001_inbox_outbox.sql", "0001_init.sql", "0002_more.sql"],
            ]
            assert await db.fetchval("SELECT count(*) FROM schema_migrations") == 3
            await db.execute("INSERT INTO item (id, name) VALUES (1, 'x')")

            edited = Migration(
                source="test", name="0001_init.sql", sql="CREATE TABLE item (id bigint)"
            )
            with pytest.raises(MigrationError, match=r"test/0001_init\.sql was edited"):
                await apply_migrations(db, [edited])

            broken = Migration(source="test", name="0003_bad.sql", sql="ALTER TABLE nope ADD x int")
            with pytest.raises(MigrationError, match=r"0003_bad\.sql failed"):
                await apply_migrations(db, [first, second, broken])
            assert await db.fetchval("SELECT count(*) FROM schema_migrations") == 3
        finally:
            await db.close()
    finally:
        await drop_actor(postgres_url, actor)


@pytest.mark.postgres
async def test_transaction_commits_or_rolls_back_and_classifies_errors(
    postgres_url: str, unique: str
) -> None:
    from adapters.errors import postgres_transient

    async for db, _ in _pg_pair(postgres_url, unique):
        await db.execute("CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL)")

        async def open_two(conn: object) -> None:
            await conn.execute("INSERT INTO acct VALUES (1, 10)")  # type: ignore[attr-defined]
            await conn.execute("INSERT INTO acct VALUES (1, 20)")  # type: ignore[attr-defined]

        with pytest.raises(asyncpg.UniqueViolationError) as caught:
            await db.transaction(open_two)
        assert not postgres_transient(caught.value)  # a constraint violation is not retried
        assert await db.fetchval("SELECT count(*) FROM acct") == 0  # rolled back as a whole

        async def open_one(conn: object) -> int:
            await conn.execute("INSERT INTO acct VALUES (1, 10)")  # type: ignore[attr-defined]
            return 1

        assert await db.transaction(open_one, isolation="serializable") == 1
        assert await db.fetchval("SELECT balance FROM acct WHERE id = 1") == 10


# -- Redis ---------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_user_gets_noperm_on_another_actors_keys(redis_url: str, unique: str) -> None:
    from adapters.redis import ActorRedis, drop_redis_user, provision_redis_user

    a, b = f"iso_a_{unique}", f"iso_b_{unique}"
    try:
        creds_a = await provision_redis_user(redis_url, a)
        creds_b = await provision_redis_user(redis_url, b)
        assert await provision_redis_user(redis_url, a) == creds_a  # idempotent
        ra, rb = ActorRedis.connect(creds_a), ActorRedis.connect(creds_b)
        try:
            await rb.set("secret", b"b only", ttl_s=60)
            await ra.set("secret", b"a only", ttl_s=60)
            assert await rb.get("secret") == b"b only"  # same name, different key spaces
            assert await ra.get("secret") == b"a only"
            with pytest.raises(redis_exceptions.NoPermissionError):
                await ra.client.get(f"{b}:secret")
            with pytest.raises(redis_exceptions.NoPermissionError):
                await ra.client.set(f"{b}:secret", b"overwritten")
            with pytest.raises(redis_exceptions.NoPermissionError):
                await ra.client.publish(f"{b}:events", b"spoof")
            for command in (("SCAN", "0"), ("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*")):
                with pytest.raises(redis_exceptions.NoPermissionError):
                    await ra.client.execute_command(*command)
            assert await rb.get("secret") == b"b only"
            assert await ra.publish("events", b"mine") == 0
        finally:
            await ra.aclose()
            await rb.aclose()
    finally:
        await drop_redis_user(redis_url, a)
        await drop_redis_user(redis_url, b)


@pytest.mark.redis
async def test_cache_aside_single_flight_and_ttl(redis_url: str, unique: str) -> None:
    import msgspec

    from adapters.redis import ActorRedis, Cache, drop_redis_user, provision_redis_user

    class Profile(msgspec.Struct, frozen=True):
        name: str

    actor = f"cache_{unique}"
    try:
        client = ActorRedis.connect(await provision_redis_user(redis_url, actor))
        try:
            cache = Cache(client, Profile, ttl_s=30)
            calls = 0
            release = anyio.Event()

            async def load() -> Profile:
                nonlocal calls
                calls += 1
                await release.wait()
                return Profile(name="ada")

            results: list[Profile] = []

            async def lookup() -> None:
                results.append(await cache.get_or_load("user:1", load))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(lookup)
                await anyio.sleep(0.05)
                release.set()
            assert calls == 1
            assert results == [Profile(name="ada")] * 20
            assert await cache.get_or_load("user:1", load) == Profile(name="ada")
            assert calls == 1  # served from Redis now
            ttl = await client.ttl("cache:user:1")
            assert ttl is not None
            assert 0 < ttl <= 30

            async def fail() -> Profile:
                raise LookupError("source down")

            with pytest.raises(LookupError):
                await cache.get_or_load("user:2", fail)
            await cache.invalidate("user:1")
            assert await client.exists("cache:user:1") == 0
        finally:
            await client.aclose()
    finally:
        await drop_redis_user(redis_url, actor)


# -- S3 ------------------------------------------------------------------------------------------


@pytest.mark.s3
async def test_s3_keys_get_access_denied_on_another_actors_bucket(
    seaweed: SeaweedFSServer, unique: str
) -> None:
    from adapters.storage import ObjectStore, SeaweedFSProvisioner

    provisioner = SeaweedFSProvisioner(seaweed)
    creds_a = await provisioner.provision(f"iso_a_{unique}")
    creds_b = await provisioner.provision(f"iso_b_{unique}")
    async with ObjectStore(creds_a) as store_a, ObjectStore(creds_b) as store_b:
        await store_b.put("secret.txt", b"b only")
        await store_a.put("secret.txt", b"a only")
        assert await store_b.get("secret.txt") == b"b only"
        for attempt in (
            store_a.client.get_object(Bucket=creds_b.bucket, Key="secret.txt"),
            store_a.client.put_object(Bucket=creds_b.bucket, Key="planted", Body=b"x"),
            store_a.client.list_objects_v2(Bucket=creds_b.bucket),
        ):
            with pytest.raises(botocore_exceptions.ClientError) as caught:
                await attempt
            assert caught.value.response["Error"]["Code"] == "AccessDenied"
        assert [o.key async for o in store_b.list()] == ["secret.txt"]


@pytest.mark.s3
async def test_s3_stream_multipart_list_presign(seaweed: SeaweedFSServer, unique: str) -> None:
    from adapters.storage import MIN_PART_SIZE, ObjectStore, SeaweedFSProvisioner

    creds = await SeaweedFSProvisioner(seaweed).provision(f"obj_{unique}")
    chunk = os.urandom(256 * 1024)
    total_chunks = 50  # 12.5 MiB: three parts of 5 MiB (the last one smaller)

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(total_chunks):
            yield chunk

    async with ObjectStore(creds) as store:
        etag = await store.put_stream("big.bin", produce(), part_size=MIN_PART_SIZE)
        assert etag.endswith('-3"')  # a multipart ETag names its part count
        size = 0
        async with store.stream("big.bin", chunk_size=64 * 1024) as chunks:
            async for piece in chunks:
                assert len(piece) <= 64 * 1024
                size += len(piece)
        assert size == len(chunk) * total_chunks

        small = await store.put_stream("small.bin", produce_small(), part_size=MIN_PART_SIZE)
        assert "-" not in small  # fits in one part: a plain PUT
        assert [o.key for o in [o async for o in store.list()]] == ["big.bin", "small.bin"]
        assert [o.key async for o in store.list("sm")] == ["small.bin"]

        url = await store.presigned_url("small.bin")
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
            assert response.status_code == 200
            assert response.content == b"tiny"
            upload = await store.presigned_url("uploaded.txt", method="put", expires_s=60)
            assert (await http.put(upload, content=b"via url")).status_code == 200
        assert await store.get("uploaded.txt") == b"via url"

        await store.delete("small.bin")
        assert not await store.exists("small.bin")
        with pytest.raises(botocore_exceptions.ClientError) as caught:
            await store.get("small.bin")
        assert caught.value.response["Error"]["Code"] == "NoSuchKey"
        for key in ("big.bin", "uploaded.txt"):
            await store.delete(key)


async def produce_small() -> AsyncIterator[bytes]:
    yield b"ti"
    yield b"ny"
