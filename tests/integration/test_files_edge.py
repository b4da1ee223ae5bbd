"""The files service through a real edge (uvicorn on 127.0.0.1) over a MemoryBroker, with a real
files node (Postgres, SeaweedFS with IAM-provisioned keys): streamed upload with bounded memory,
the upload checks (413, 415, 422), owner-only access, links, idempotent delete, direct uploads to
the presigned URL, and exactly one file for a redelivered CreateUpload.

:func:`files_system` is shared with the end-to-end test over Tansu.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import msgspec
import psutil
import pytest
from redis.asyncio import Redis

from actors.auth.contracts import GetSigningKeys, SigningKeys
from actors.files.actor import Files
from actors.files.contracts import CreateUpload, UploadTicket
from adapters.postgres import drop_actor
from edge.api import ROUTES
from edge.app import create_app
from edge.config import EdgeConfig
from runtime.bus.base import Broker
from runtime.bus.memory import MemoryBroker
from runtime.codec import encode
from runtime.config import Settings
from runtime.infra.seaweedfs import SeaweedFSServer
from runtime.messages import Envelope
from runtime.node import Node
from tests.unit.edge.conftest import AUDIENCE, ISSUER, SigningKey, serve

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.redis]

MIB = 1024 * 1024
PDF_HEAD = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"


@dataclass
class FilesSystem:
    url: str
    client: httpx.AsyncClient
    key: SigningKey
    actor: Files
    settings: Settings

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.token(sub=user)}"}

    async def declare(
        self, user: str, *, size: int, content_type: str = "application/pdf", name: str = "a.pdf"
    ) -> httpx.Response:
        return await self.client.post(
            "/files",
            json={"name": name, "content_type": content_type, "size": size},
            headers=self.auth(user),
        )

    async def upload(
        self, user: str, file_id: str, content: Any, *, content_type: str = "application/pdf"
    ) -> httpx.Response:
        return await self.client.put(
            f"/files/{file_id}/content",
            content=content,
            headers={**self.auth(user), "Content-Type": content_type},
        )


def settings_for(unique: str, postgres_url: str, seaweed: SeaweedFSServer, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "broker": "memory",
        "topic_prefix": f"t{unique}.",
        "postgres_url": postgres_url,
        "s3_endpoint": seaweed.endpoint,
        "s3_access_key": seaweed.access_key,
        "s3_secret_key": seaweed.secret_key,
        "s3_region": seaweed.region,
        "request_timeout_s": 15.0,
        "shutdown_timeout_s": 5.0,
        "partitions": 2,
    }
    values.update(over)
    return Settings(**values)


@asynccontextmanager
async def files_system(
    settings: Settings, unique: str, redis_url: str, broker: Broker | None = None
) -> AsyncIterator[FilesSystem]:
    """A files node and an edge serving ``edge.api.ROUTES``; both on ``broker`` (else each builds
    its own from ``settings``). Drops the actor's schema afterwards."""
    data_name = f"files_{unique}"
    actor_type = type("TestFiles", (Files,), {"data_name": data_name, "max_size": 24 * MIB})
    actor = actor_type()
    key = SigningKey(kid="k1")

    async def keys(_request: GetSigningKeys) -> SigningKeys:
        return SigningKeys(keys=(key.public(),), issuer=ISSUER)

    prefix = f"test:{unique}:{uuid.uuid4().hex[:6]}:"
    redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    config = EdgeConfig(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, redis_prefix=prefix)
    try:
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            node = Node(actor, settings, broker=broker)
            await tg.start(node.run)
            try:
                app = create_app(
                    settings, broker, routes=ROUTES, config=config, redis=redis, key_fetcher=keys
                )
                url = await stack.enter_async_context(serve(app))
                client = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=60)
                )
                yield FilesSystem(url, client, key, actor, settings)
                await stack.aclose()
            finally:
                node.drain()
    finally:
        stale = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if stale:
            await redis.delete(*stale)
        await redis.aclose()
        await drop_actor(settings.postgres_url, data_name)


@pytest.fixture
def files_env(unique: str, postgres_url: str, seaweed: SeaweedFSServer, redis_url: str) -> Any:
    """``async with files_env() as system:`` a files node and edge over a MemoryBroker.

    A context manager used in the test, not a yielding fixture: the node's task group must be
    entered and left by the same task.
    """

    @asynccontextmanager
    async def start() -> AsyncIterator[FilesSystem]:
        settings = settings_for(unique, postgres_url, seaweed)
        async with (
            MemoryBroker() as broker,
            files_system(settings, unique, redis_url, broker) as running,
        ):
            yield running

    return start


def pdf_stream(size: int, digest: Any, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    """``size`` bytes starting like a PDF, produced a chunk at a time (never all in memory)."""
    block = os.urandom(chunk)

    async def produce() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            piece = (PDF_HEAD + block)[:chunk] if sent == 0 else block
            piece = piece[: size - sent]
            digest.update(piece)
            sent += len(piece)
            yield piece

    return produce()


class PeakRss:
    """Samples this process's resident memory every 10 ms while running."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline

    async def sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await anyio.sleep(0.01)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / MIB


async def roundtrip_20mb(system: FilesSystem) -> str:
    """Upload 20 MiB streamed, read it back streamed; assert both bounded and identical."""
    size = 20 * MIB
    declared = await system.declare("alice", size=size, name="big report.pdf")
    assert declared.status_code == 201, declared.text
    ticket = msgspec.json.decode(declared.content, type=UploadTicket)
    assert ticket.file.state == "pending"
    assert ticket.upload_path == f"/files/{ticket.file.file_id}/content"
    sent = hashlib.sha256()
    rss = PeakRss()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rss.sample)
        uploaded = await system.upload("alice", ticket.file.file_id, pdf_stream(size, sent))
        tg.cancel_scope.cancel()
    print(f"\n20 MiB upload: process RSS grew by {rss.growth_mib:.1f} MiB at peak")
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["state"] == "ready"
    assert uploaded.json()["size"] == size
    # Bounded: the edge (and node, same process) never held the file.
    assert rss.growth_mib < 16

    got = hashlib.sha256()
    rss = PeakRss()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rss.sample)
        async with system.client.stream(
            "GET", f"/files/{ticket.file.file_id}/content", headers=system.auth("alice")
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/pdf")
            assert response.headers["content-length"] == str(size)
            assert "big%20report.pdf" in response.headers["content-disposition"]
            async for chunk in response.aiter_bytes():
                got.update(chunk)
        tg.cancel_scope.cancel()
    print(f"20 MiB download: process RSS grew by {rss.growth_mib:.1f} MiB at peak")
    assert got.hexdigest() == sent.hexdigest()
    assert rss.growth_mib < 16
    return ticket.file.file_id


async def test_streamed_roundtrip_owner_only_link_and_delete(files_env: Any) -> None:
    async with files_env() as system:
        file_id = await roundtrip_20mb(system)
        client, alice, bob = system.client, system.auth("alice"), system.auth("bob")

        meta = await client.get(f"/files/{file_id}", headers=alice)
        assert meta.status_code == 200
        assert meta.json()["owner"] == "alice"

        # Another user cannot tell the file exists.
        for method, path in [
            ("GET", f"/files/{file_id}"),
            ("GET", f"/files/{file_id}/content"),
            ("GET", f"/files/{file_id}/link"),
            ("DELETE", f"/files/{file_id}"),
            ("POST", f"/files/{file_id}/complete"),
        ]:
            response = await client.request(method, path, headers=bob)
            assert response.status_code == 404, (method, path, response.text)
        assert (await client.get(f"/files/{file_id}/content")).status_code == 401

        # The owner's presigned link works by itself, no token needed.
        link = await client.get(f"/files/{file_id}/link", headers=alice)
        assert link.status_code == 200
        assert link.json()["expires_in_s"] <= 300
        async with httpx.AsyncClient(timeout=60) as outside:
            head = await outside.get(link.json()["url"], headers={"Range": "bytes=0-4"})
        assert head.status_code == 206
        assert head.content == b"%PDF-"

        deleted = await client.delete(f"/files/{file_id}", headers=alice)
        assert deleted.status_code == 200
        assert deleted.json() == {"type": "files.FileDeleted", "file_id": file_id}
        again = await client.delete(f"/files/{file_id}", headers=alice)
        assert again.status_code == 200
        assert (await client.get(f"/files/{file_id}", headers=alice)).status_code == 404
        assert (await client.get(f"/files/{file_id}/content", headers=alice)).status_code == 404
        assert not await system.actor.store.exists(f"files/{file_id}")


async def test_upload_refusals_name_what_is_wrong(files_env: Any) -> None:
    async with files_env() as system:
        client = system.client

        too_big = await system.declare("alice", size=25 * MIB)
        assert too_big.status_code == 422
        assert too_big.json()["field"] == "$.size"
        beyond_contract = await system.declare("alice", size=10**12)
        assert beyond_contract.status_code == 422
        assert beyond_contract.json()["field"] == "$.size"
        exe = await system.declare("alice", size=10, content_type="application/x-msdownload")
        assert exe.status_code == 422
        assert exe.json()["field"] == "$.content_type"
        assert (await client.post("/files", json={"name": "x", "size": 1})).status_code == 401

        declared = await system.declare("alice", size=1000)
        file_id = declared.json()["file"]["file_id"]
        body = PDF_HEAD + b"x" * (1000 - len(PDF_HEAD))

        wrong_type = await system.upload("alice", file_id, body, content_type="image/png")
        assert wrong_type.status_code == 415
        assert wrong_type.json()["field"] == "Content-Type"
        not_pdf = await system.upload("alice", file_id, b"MZ" + b"\0" * 998)
        assert not_pdf.status_code == 415
        assert not_pdf.json()["field"] == "Content-Type"
        # More than declared: refused by Content-Length, and when streamed without one.
        assert (await system.upload("alice", file_id, body + b"more")).status_code == 413

        async def chunked(data: bytes) -> AsyncIterator[bytes]:
            for start in range(0, len(data), 300):
                yield data[start : start + 300]

        streamed_over = await system.upload("alice", file_id, chunked(body + b"y" * 5000))
        assert streamed_over.status_code == 413
        short = await system.upload("alice", file_id, body[:500])
        assert short.status_code == 422
        assert short.json()["field"] == "Content-Length"
        assert (await system.upload("bob", file_id, body)).status_code == 404
        # Nothing refused was kept; the file is still pending and the right bytes are accepted.
        meta = await client.get(f"/files/{file_id}", headers=system.auth("alice"))
        assert meta.json()["state"] == "pending"
        assert not await system.actor.store.exists(f"files/{file_id}")
        assert (
            await client.get(f"/files/{file_id}/content", headers=system.auth("alice"))
        ).status_code == 409
        ok = await system.upload("alice", file_id, chunked(body))
        assert ok.status_code == 200, ok.text
        assert ok.json()["state"] == "ready"
        # A ready file takes no second upload.
        assert (await system.upload("alice", file_id, body)).status_code == 409


async def test_direct_upload_to_the_presigned_url(files_env: Any) -> None:
    async with files_env() as system:
        client, alice = system.client, system.auth("alice")
        png = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
        declared = await system.declare(
            "alice", size=len(png), content_type="image/png", name="p.png"
        )
        ticket = declared.json()
        async with httpx.AsyncClient(timeout=30) as outside:
            put = await outside.put(
                ticket["upload_url"], content=png, headers={"Content-Type": "image/png"}
            )
            assert put.status_code == 200, put.text
        done = await client.post(f"/files/{ticket['file']['file_id']}/complete", headers=alice)
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "ready"
        got = await client.get(f"/files/{ticket['file']['file_id']}/content", headers=alice)
        assert got.content == png

        # Bytes that are not what was declared are caught at completion and removed.
        liar = await system.declare("alice", size=len(png), content_type="image/png", name="q.png")
        liar_id = liar.json()["file"]["file_id"]
        async with httpx.AsyncClient(timeout=30) as outside:
            await outside.put(
                liar.json()["upload_url"],
                content=b"GIF89a" + png[6:],
                headers={"Content-Type": "image/png"},
            )
        refused = await client.post(f"/files/{liar_id}/complete", headers=alice)
        assert refused.status_code == 422
        assert refused.json()["field"] == "$.file_id"
        assert not await system.actor.store.exists(f"files/{liar_id}")
        never = await system.declare("alice", size=10, content_type="text/plain", name="n.txt")
        missing = await client.post(
            f"/files/{never.json()['file']['file_id']}/complete", headers=alice
        )
        assert missing.status_code == 422


async def test_redelivered_create_upload_makes_one_file(
    unique: str, postgres_url: str, seaweed: SeaweedFSServer, redis_url: str
) -> None:
    settings = settings_for(unique, postgres_url, seaweed)
    async with MemoryBroker() as broker, files_system(settings, unique, redis_url, broker) as sys:
        replies = settings.topic("test-replies")
        await broker.ensure_topics({replies: 1})
        type_tag, body = encode(
            CreateUpload(owner="carol", name="c.txt", content_type="text/plain", size=5)
        )
        envelope = Envelope.new(type_tag, body, key="carol", reply_to=replies)
        for _ in range(2):
            await broker.publish(Files.commands_topic(settings), envelope)
        got: list[UploadTicket] = []
        async with broker.subscribe([replies], f"g{unique}") as sub:
            with anyio.fail_after(20):
                async for delivery in sub:
                    assert delivery.envelope is not None
                    got.append(msgspec.json.decode(delivery.envelope.body, type=UploadTicket))
                    delivery.ack()
                    if len(got) == 2:
                        break
        assert got[0].file.file_id == got[1].file.file_id
        count = await sys.actor.database.fetchval(
            "SELECT count(*) FROM files WHERE owner = 'carol'"
        )
        assert count == 1
