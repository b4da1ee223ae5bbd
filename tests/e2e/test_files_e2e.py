"""End to end over the real servers: the edge (uvicorn on 127.0.0.1) and a files node talk over
Tansu; Postgres holds the metadata, SeaweedFS the bytes with keys the node provisioned itself
through IAM from its settings. A file is uploaded streamed, read back by its owner, refused to
another user, linked and deleted."""

from __future__ import annotations

import httpx
import pytest

from runtime.infra.seaweedfs import SeaweedFSServer
from runtime.infra.tansu import TansuServer
from tests.integration.test_files_edge import files_system, roundtrip_20mb, settings_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.redis,
    pytest.mark.slow,
]


async def test_file_uploaded_read_back_by_owner_refused_to_others(
    tansu: TansuServer,
    unique: str,
    postgres_url: str,
    seaweed: SeaweedFSServer,
    redis_url: str,
) -> None:
    settings = settings_for(
        unique,
        postgres_url,
        seaweed,
        broker="kafka",
        kafka_bootstrap=tansu.bootstrap,
        kafka_idempotence=False,  # Tansu has no InitProducerId
        kafka_fetch_max_wait_ms=5,  # Tansu does not wake a waiting fetch
        kafka_session_timeout_ms=6_000,
        kafka_heartbeat_interval_ms=500,
        commit_interval_s=0.2,
        request_timeout_s=20.0,
    )
    async with files_system(settings, unique, redis_url) as system:
        file_id = await roundtrip_20mb(system)
        alice, bob = system.auth("alice"), system.auth("bob")
        assert (
            await system.client.get(f"/files/{file_id}/content", headers=bob)
        ).status_code == 404
        assert (await system.client.get(f"/files/{file_id}", headers=bob)).status_code == 404
        link = await system.client.get(f"/files/{file_id}/link", headers=alice)
        async with httpx.AsyncClient(timeout=30) as outside:
            ranged = await outside.get(link.json()["url"], headers={"Range": "bytes=0-4"})
        assert ranged.content == b"%PDF-"
        assert (await system.client.delete(f"/files/{file_id}", headers=alice)).status_code == 200
        assert (await system.client.delete(f"/files/{file_id}", headers=alice)).status_code == 200
        assert (await system.client.get(f"/files/{file_id}", headers=alice)).status_code == 404
