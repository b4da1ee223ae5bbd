"""Embedded infrastructure: each server starts, answers a real round trip, stops and frees its
port; SeaweedFS identities added at run time are confined to their buckets; configured servers
are used instead of started ones.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio.to_thread
import psutil
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from runtime.config import Settings
from runtime.infra._process import ServerStartError, free_port
from runtime.infra.postgres import PostgresServer, postgres_round_trip, start_embedded_postgres
from runtime.infra.redis import RedisServer, redis_round_trip, start_embedded_redis
from runtime.infra.seaweedfs import SeaweedFSServer, s3_round_trip
from runtime.infra.stack import InfraStack
from runtime.infra.tansu import TansuServer


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _listening_addresses(pid: int) -> set[str]:
    return {
        conn.laddr.ip
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


@pytest.mark.postgres
def test_embedded_postgres_answers_then_stops(run_dir: Path, unique: str) -> None:
    # Not tmp_path: under root Postgres runs as the `postgres` user, who cannot enter pytest's
    # private (0700) temporary folders; the session run folder is readable by it.
    server = start_embedded_postgres(run_dir / f"pg-{unique}")
    try:
        assert isinstance(server, PostgresServer), "the machine's binaries come first"
        postgres_round_trip(server.url)
        assert server.process.pid is not None
        assert _listening_addresses(server.process.pid) == {"127.0.0.1"}
    finally:
        server.stop()
    assert _port_closed(server.port)
    with pytest.raises(OSError):
        postgres_round_trip(server.url, timeout=2.0)


@pytest.mark.redis
def test_embedded_redis_answers_then_stops(tmp_path: Path) -> None:
    import redis

    server = start_embedded_redis(tmp_path / "redis")
    try:
        assert isinstance(server, RedisServer), "the machine's redis-server comes first"
        redis_round_trip(server.url)
        assert server.process.pid is not None
        assert _listening_addresses(server.process.pid) == {"127.0.0.1"}
    finally:
        server.stop()
    assert _port_closed(server.port)
    with pytest.raises(redis.ConnectionError):
        redis_round_trip(server.url, timeout=1.0)


@pytest.mark.s3
@pytest.mark.slow
def test_seaweedfs_answers_binds_loopback_only_then_stops(tmp_path: Path) -> None:
    server = SeaweedFSServer(tmp_path / "sw")
    server.start()
    try:
        s3_round_trip(server.endpoint, server.access_key, server.secret_key)
        assert server.process.pid is not None
        # master, volume, filer, s3 and admin, HTTP and gRPC: none on a public address.
        assert _listening_addresses(server.process.pid) == {"127.0.0.1"}
        with pytest.raises(ClientError):
            s3_round_trip(server.endpoint, server.access_key, "not-the-secret")
    finally:
        server.stop()
    assert _port_closed(server.port)


@pytest.mark.s3
async def test_identity_added_at_run_time_reaches_only_its_bucket(
    seaweed: SeaweedFSServer, unique: str
) -> None:
    bucket_a, bucket_b = f"a-{unique}", f"b-{unique}"
    session = get_session()
    region = seaweed.region

    def client(access: str, secret: str) -> Any:
        return session.create_client(
            "s3",
            endpoint_url=seaweed.endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name=region,
        )

    async with client(seaweed.access_key, seaweed.secret_key) as admin:
        await admin.create_bucket(Bucket=bucket_a)
        await admin.create_bucket(Bucket=bucket_b)
        await admin.put_object(Bucket=bucket_b, Key="secret", Body=b"b's data")

    # The server keeps running: identities are added through the filer, not by a restart.
    pid = seaweed.process.pid
    # add_identity blocks (it runs `weed shell`), so keep it off the event loop.
    await anyio.to_thread.run_sync(
        seaweed.add_identity, f"actor-a-{unique}", f"AKA{unique}", f"secret-a-{unique}", [bucket_a]
    )
    await anyio.to_thread.run_sync(
        seaweed.add_identity, f"actor-b-{unique}", f"AKB{unique}", f"secret-b-{unique}", [bucket_b]
    )
    assert seaweed.process.pid == pid

    async with client(f"AKA{unique}", f"secret-a-{unique}") as actor_a:
        await actor_a.put_object(Bucket=bucket_a, Key="k", Body=b"a's data")
        got = await actor_a.get_object(Bucket=bucket_a, Key="k")
        async with got["Body"] as body:
            assert await body.read() == b"a's data"
        denied = [
            lambda: actor_a.get_object(Bucket=bucket_b, Key="secret"),
            lambda: actor_a.put_object(Bucket=bucket_b, Key="intruder", Body=b"x"),
            lambda: actor_a.list_objects_v2(Bucket=bucket_b),
            lambda: actor_a.delete_object(Bucket=bucket_b, Key="secret"),
        ]
        for call in denied:
            with pytest.raises(ClientError) as info:
                await call()
            assert info.value.response["Error"]["Code"] == "AccessDenied"

    async with client(f"AKB{unique}", f"secret-b-{unique}") as actor_b:
        got = await actor_b.get_object(Bucket=bucket_b, Key="secret")
        async with got["Body"] as body:
            assert await body.read() == b"b's data"  # B's object survived A's attempts


@pytest.mark.s3
def test_add_identity_rejects_names_that_could_inject(seaweed: SeaweedFSServer) -> None:
    with pytest.raises(ValueError):
        seaweed.add_identity("a b", "key", "secret", ["bucket-x"])
    with pytest.raises(ValueError):
        seaweed.add_identity("a", "key", "secret -actions=Admin", ["bucket-x"])
    with pytest.raises(ValueError):
        seaweed.add_identity("a", "key", "secret", ["Bad_Bucket"])


@pytest.mark.kafka
@pytest.mark.s3
@pytest.mark.postgres
@pytest.mark.redis
def test_configured_servers_start_nothing(
    tmp_path: Path,
    tansu: TansuServer,
    seaweed: SeaweedFSServer,
    postgres_url: str,
    redis_url: str,
) -> None:
    given = Settings(
        kafka_bootstrap=tansu.bootstrap,
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.access_key,
        s3_secret_key=seaweed.secret_key,
        postgres_url=postgres_url,
        redis_url=redis_url,
    )
    lines: list[str] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with InfraStack(given, tmp_path / "infra", progress=lines.append) as infra:
        assert infra.started == []
        assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
        assert infra.settings() == given
        assert infra.env()["GREENROOM_POSTGRES_URL"] == postgres_url
    assert any(line.startswith("using configured postgres") for line in lines)
    assert any(line.startswith("using configured redis") for line in lines)


@pytest.mark.kafka
@pytest.mark.s3
@pytest.mark.redis
def test_configured_url_that_does_not_answer_fails_naming_the_setting(
    tmp_path: Path, tansu: TansuServer, seaweed: SeaweedFSServer, redis_url: str
) -> None:
    given = Settings(
        kafka_bootstrap=tansu.bootstrap,
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.access_key,
        s3_secret_key=seaweed.secret_key,
        postgres_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        redis_url=redis_url,
    )
    stack = InfraStack(given, tmp_path / "infra", progress=None)
    with pytest.raises(ServerStartError, match="GREENROOM_POSTGRES_URL"):
        stack.start()
    assert stack.started == []
