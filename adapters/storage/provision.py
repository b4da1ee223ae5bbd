"""A bucket and credentials per actor, provisioned through a pluggable :class:`StorageProvisioner`.

- :class:`SeaweedFSProvisioner` (development and tests): creates the bucket with the admin keys and
  an identity limited to it with :meth:`runtime.infra.seaweedfs.SeaweedFSServer.add_identity`.
- :class:`StaticKeysProvisioner` (production S3 or MinIO): the operator (Terraform, the MinIO
  console) made the user and its bucket policy; the actor gets its keys from configuration, and the
  bucket is created with admin keys if it is missing (or not at all, without admin keys).

The access and secret keys :class:`SeaweedFSProvisioner` hands out are derived from the admin
secret (:func:`adapters.derive_secret`), so every replica of an actor computes the same pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, final

import anyio

from adapters._names import ActorNames, derive_secret

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "SeaweedFSProvisioner",
    "StaticKeysProvisioner",
    "StorageCredentials",
    "StorageProvisioner",
    "create_bucket",
]


@final
@dataclass(frozen=True, slots=True)
class StorageCredentials:
    """Where an actor's objects live and the keys that reach (only) them."""

    endpoint: str
    region: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)


class StorageProvisioner(Protocol):
    """Makes sure ``actor`` has its bucket and credentials, and returns them."""

    async def provision(self, actor: str) -> StorageCredentials: ...


class _IdentityServer(Protocol):
    # What SeaweedFSProvisioner needs of runtime.infra.seaweedfs.SeaweedFSServer.
    endpoint: str
    region: str
    access_key: str
    secret_key: str

    def add_identity(
        self, name: str, access_key: str, secret_key: str, buckets: Sequence[str]
    ) -> None: ...


async def create_bucket(
    endpoint: str, region: str, access_key: str, secret_key: str, bucket: str
) -> None:
    """Create ``bucket`` with the given (admin) keys; an existing bucket we own is fine.

    Raises:
        botocore.exceptions.ClientError: the server refused (other than "already yours").
        botocore.exceptions.BotoCoreError: it could not be reached.
    """
    from aiobotocore.session import get_session
    from botocore.exceptions import ClientError

    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    ) as admin:
        try:
            await admin.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise


@final
class SeaweedFSProvisioner:
    """Bucket ``gr-<actor>`` and identity ``gr_<actor>`` with access to that bucket only."""

    def __init__(self, server: _IdentityServer) -> None:
        self.server = server

    async def provision(self, actor: str) -> StorageCredentials:
        """Create the bucket and identity (idempotent) and return the actor's credentials.

        Raises:
            InvalidNameError: ``actor`` is not a valid actor name.
            botocore.exceptions.ClientError: bucket creation was refused.
            ServerStartError: SeaweedFS did not accept the identity.
        """
        names = ActorNames(actor)
        server = self.server
        access_key = "GR" + derive_secret(server.secret_key, f"s3-access:{actor}", length=18)
        secret_key = derive_secret(server.secret_key, f"s3-secret:{actor}", length=40)
        await create_bucket(
            server.endpoint, server.region, server.access_key, server.secret_key, names.bucket
        )
        # add_identity runs `weed shell` and waits for the gateway: blocking, so off the loop.
        await anyio.to_thread.run_sync(
            server.add_identity, names.role, access_key, secret_key, [names.bucket]
        )
        return StorageCredentials(
            endpoint=server.endpoint,
            region=server.region,
            bucket=names.bucket,
            access_key=access_key,
            secret_key=secret_key,
        )


@final
class StaticKeysProvisioner:
    """Production: the actor's keys come from configuration (a secret store), per actor.

    ``keys`` maps actor name to ``(access_key, secret_key)``. With ``admin_keys``, a missing bucket
    is created; without, the bucket must already exist.
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        keys: dict[str, tuple[str, str]],
        *,
        admin_keys: tuple[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self._keys = keys
        self._admin = admin_keys

    async def provision(self, actor: str) -> StorageCredentials:
        """The configured credentials for ``actor`` (its bucket created first with admin keys).

        Raises:
            InvalidNameError: ``actor`` is not a valid actor name.
            KeyError: no keys are configured for ``actor``.
            botocore.exceptions.ClientError: bucket creation was refused.
        """
        names = ActorNames(actor)
        access_key, secret_key = self._keys[actor]
        if self._admin is not None:
            await create_bucket(self.endpoint, self.region, *self._admin, names.bucket)
        return StorageCredentials(
            endpoint=self.endpoint,
            region=self.region,
            bucket=names.bucket,
            access_key=access_key,
            secret_key=secret_key,
        )
