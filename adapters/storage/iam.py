"""Provisioning a bucket and its own credentials from settings alone, through the IAM API.

A node started by ``greenroom up`` or ``greenroom run`` holds only settings: the S3 endpoint and
the admin key pair (``GREENROOM_S3_ENDPOINT``, ``GREENROOM_S3_ACCESS_KEY``,
``GREENROOM_S3_SECRET_KEY``). It has no handle on the storage server's process, so it cannot use
:class:`~adapters.storage.SeaweedFSProvisioner`. :class:`IamProvisioner` speaks the AWS IAM API
instead, which SeaweedFS serves on its S3 port (``-s3.iam.readOnly=false``, admin-signed calls)
and AWS serves at ``iam.amazonaws.com``:

1. ``CreateBucket`` ``gr-<actor>`` with the admin keys (an existing one is fine);
2. ``CreateUser`` ``gr_<actor>`` (an existing one is fine);
3. ``PutUserPolicy``: ``s3:*`` on that bucket and its objects, nothing else (idempotent);
4. ``CreateAccessKey``: a fresh key pair, then wait until the S3 gateway accepts it.

Why a fresh key per call rather than a derived one: IAM servers generate keys themselves (neither
SeaweedFS nor AWS accept caller-chosen ones), and they return the secret only once, so replicas
cannot share a pair without sharing state. Each node process therefore holds its own key pair for
its lifetime and deletes it on a clean stop (:meth:`IamProvisioner.release`). Consequences,
accepted on purpose: a presigned URL dies with the process that signed it (URLs are short-lived
anyway), and a process killed with ``kill -9`` leaves its key behind; that key reaches only the
actor's own bucket, and an operator can list and delete stale keys with ``ListAccessKeys``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from adapters._names import ActorNames
from adapters.storage.provision import StorageCredentials, create_bucket

if TYPE_CHECKING:
    from runtime.config import Settings

__all__ = ["IamProvisioner", "bucket_policy"]

_POLICY_NAME: Final = "greenroom-own-bucket"
_ALREADY_EXISTS: Final = frozenset({"EntityAlreadyExists", "EntityAlreadyExistsException"})
_NO_SUCH_ENTITY: Final = frozenset({"NoSuchEntity", "NoSuchEntityException"})


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The IAM policy document that confines a user to ``bucket`` and its objects."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:*"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def _error_code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", {}) or {}
    return str(response.get("Error", {}).get("Code", ""))


@final
class IamProvisioner:
    """Bucket ``gr-<actor>`` and IAM user ``gr_<actor>`` limited to it, from the admin keys.

    ``iam_endpoint`` defaults to ``endpoint`` (SeaweedFS serves IAM on its S3 port); give AWS's
    IAM endpoint when provisioning against AWS.
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        admin_access_key: str,
        admin_secret_key: str,
        *,
        iam_endpoint: str | None = None,
        ready_timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.iam_endpoint = iam_endpoint or endpoint
        self._admin = (admin_access_key, admin_secret_key)
        self._ready_timeout_s = ready_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> IamProvisioner:
        """The provisioner for ``settings``' S3 endpoint and admin keys.

        Raises:
            RuntimeError: ``GREENROOM_S3_ENDPOINT`` or the admin key pair is not set.
        """
        if not (settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key):
            raise RuntimeError(
                "object storage needs GREENROOM_S3_ENDPOINT, GREENROOM_S3_ACCESS_KEY and "
                "GREENROOM_S3_SECRET_KEY (admin keys, used to provision the actor's own)"
            )
        return cls(
            settings.s3_endpoint, settings.s3_region, settings.s3_access_key, settings.s3_secret_key
        )

    def _iam(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        return get_session().create_client(
            "iam",
            endpoint_url=self.iam_endpoint,
            region_name=self.region,
            aws_access_key_id=self._admin[0],
            aws_secret_access_key=self._admin[1],
            config=AioConfig(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
        )

    async def provision(self, actor: str) -> StorageCredentials:
        """Create the bucket, user and policy (idempotent) and a new key pair for this caller.

        Returns once the S3 endpoint accepts the new keys.

        Raises:
            InvalidNameError: ``actor`` is not a valid actor name.
            botocore.exceptions.ClientError: the server refused a call (e.g. IAM is read-only).
            botocore.exceptions.BotoCoreError: the server could not be reached.
            TimeoutError: the new keys were not accepted within ``ready_timeout_s``.
        """
        from botocore.exceptions import ClientError

        names = ActorNames(actor)
        await create_bucket(self.endpoint, self.region, *self._admin, names.bucket)
        async with self._iam() as iam:
            try:
                await iam.create_user(UserName=names.role)
            except ClientError as exc:
                if _error_code(exc) not in _ALREADY_EXISTS:
                    raise
            await iam.put_user_policy(
                UserName=names.role,
                PolicyName=_POLICY_NAME,
                PolicyDocument=json.dumps(bucket_policy(names.bucket)),
            )
            created = await iam.create_access_key(UserName=names.role)
        key = created["AccessKey"]
        credentials = StorageCredentials(
            endpoint=self.endpoint,
            region=self.region,
            bucket=names.bucket,
            access_key=key["AccessKeyId"],
            secret_key=key["SecretAccessKey"],
        )
        await self._wait_accepted(credentials)
        return credentials

    async def release(self, actor: str, credentials: StorageCredentials) -> None:
        """Delete the key pair :meth:`provision` handed out (a missing one is fine).

        Raises:
            botocore.exceptions.ClientError: the server refused the deletion.
            botocore.exceptions.BotoCoreError: the server could not be reached.
        """
        from botocore.exceptions import ClientError

        async with self._iam() as iam:
            try:
                await iam.delete_access_key(
                    UserName=ActorNames(actor).role, AccessKeyId=credentials.access_key
                )
            except ClientError as exc:
                if _error_code(exc) not in _NO_SUCH_ENTITY:
                    raise

    async def _wait_accepted(self, credentials: StorageCredentials) -> None:
        # The gateway learns of new identities asynchronously (SeaweedFS: the filer's metadata
        # stream; AWS: eventual consistency), so poll with the new keys until they work.
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError, ClientError

        async with get_session().create_client(
            "s3",
            endpoint_url=credentials.endpoint,
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            config=AioConfig(
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        ) as s3:
            with anyio.fail_after(self._ready_timeout_s):
                while True:
                    try:
                        await s3.head_bucket(Bucket=credentials.bucket)
                        return
                    except (ClientError, BotoCoreError):
                        await anyio.sleep(0.1)
