"""Object storage for actors (aiobotocore): a bucket and credentials per actor, streamed reads,
bounded-memory multipart writes, presigned URLs, all behind the ``s3`` policy.
Importing this package does not import aiobotocore; opening an :class:`ObjectStore` does."""

from adapters.storage.client import MIN_PART_SIZE, ObjectInfo, ObjectStore, s3_policy
from adapters.storage.iam import IamProvisioner
from adapters.storage.provision import (
    SeaweedFSProvisioner,
    StaticKeysProvisioner,
    StorageCredentials,
    StorageProvisioner,
    create_bucket,
)

__all__ = [
    "MIN_PART_SIZE",
    "IamProvisioner",
    "ObjectInfo",
    "ObjectStore",
    "SeaweedFSProvisioner",
    "StaticKeysProvisioner",
    "StorageCredentials",
    "StorageProvisioner",
    "create_bucket",
    "s3_policy",
]
