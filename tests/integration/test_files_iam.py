"""IamProvisioner on a real SeaweedFS: a node holding only settings (endpoint + admin keys) gets a
bucket and a key pair that reaches that bucket and nothing else."""

from __future__ import annotations

import anyio
import pytest

from adapters.storage import IamProvisioner, ObjectStore
from runtime.config import Settings
from runtime.infra.seaweedfs import SeaweedFSServer

botocore_exceptions = pytest.importorskip("botocore.exceptions")

pytestmark = pytest.mark.s3


def _settings(seaweed: SeaweedFSServer) -> Settings:
    return Settings(
        s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.access_key,
        s3_secret_key=seaweed.secret_key,
        s3_region=seaweed.region,
    )


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


async def test_iam_keys_reach_their_bucket_only(seaweed: SeaweedFSServer, unique: str) -> None:
    provisioner = IamProvisioner.from_settings(_settings(seaweed))
    mine, theirs = f"iam_a_{unique}", f"iam_b_{unique}"
    creds_a = await provisioner.provision(mine)
    creds_b = await provisioner.provision(theirs)
    assert creds_a.bucket == f"gr-iam-a-{unique}"
    assert creds_a.access_key != seaweed.access_key
    try:
        async with ObjectStore(creds_a) as a, ObjectStore(creds_b) as b:
            await b.put("secret", b"b only")
            await a.put("own", b"a's")
            assert await a.get("own") == b"a's"
            # A's keys against B's bucket: every kind of call is refused.
            attempts = {
                "get": a.client.get_object(Bucket=creds_b.bucket, Key="secret"),
                "put": a.client.put_object(Bucket=creds_b.bucket, Key="planted", Body=b"x"),
                "list": a.client.list_objects_v2(Bucket=creds_b.bucket),
                "delete": a.client.delete_object(Bucket=creds_b.bucket, Key="secret"),
                "create bucket": a.client.create_bucket(Bucket=f"gr-iam-c-{unique}"),
            }
            for what, call in attempts.items():
                with pytest.raises(botocore_exceptions.ClientError) as caught:
                    await call
                assert _code(caught.value) == "AccessDenied", what
            assert await b.get("secret") == b"b only"
    finally:
        await provisioner.release(mine, creds_a)
        await provisioner.release(theirs, creds_b)


async def test_provision_is_repeatable_and_release_revokes(
    seaweed: SeaweedFSServer, unique: str
) -> None:
    provisioner = IamProvisioner.from_settings(_settings(seaweed))
    actor = f"iam_r_{unique}"
    # Two replicas starting together: both get working keys for the same bucket.
    results = []

    async def start() -> None:
        results.append(await provisioner.provision(actor))

    async with anyio.create_task_group() as tg:
        tg.start_soon(start)
        tg.start_soon(start)
    first, second = results
    assert first.bucket == second.bucket
    assert first.access_key != second.access_key
    async with ObjectStore(first) as one, ObjectStore(second) as two:
        await one.put("k", b"v")
        assert await two.get("k") == b"v"
        await provisioner.release(actor, first)
        await provisioner.release(actor, first)  # idempotent
        with anyio.fail_after(15):
            while True:
                try:
                    await one.client.get_object(Bucket=first.bucket, Key="k")
                except botocore_exceptions.ClientError:
                    break
                await anyio.sleep(0.1)
        assert await two.get("k") == b"v"  # the other replica's keys still work
    await provisioner.release(actor, second)


def test_from_settings_names_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="GREENROOM_S3_ENDPOINT"):
        IamProvisioner.from_settings(Settings())
