"""An actor's bucket (aiobotocore), every request through its ``s3`` resilience policy.

Reads stream: :meth:`ObjectStore.stream` yields the body in chunks, so a large object never has to
fit in memory (the policy covers the request and its response headers; a connection lost while
reading the body surfaces to the reader). Writes of unknown or large size go through
:meth:`ObjectStore.put_stream`: a multipart upload holding at most one part (default 8 MiB, plus
one incoming chunk) in memory, each part retried on its own, the upload aborted on failure.

botocore's own retries are off: the policy retries (within the deadline) and its breaker sees
every failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, final

import anyio

from adapters.errors import s3_transient
from adapters.storage.provision import StorageCredentials
from runtime.resilience import PolicyConfig, ResiliencePolicy

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["MIN_PART_SIZE", "ObjectInfo", "ObjectStore", "s3_policy"]

MIN_PART_SIZE: Final = 5 * 1024 * 1024
"""S3's smallest part (all but the last); smaller part sizes are refused."""
DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024


def s3_policy(actor: str, config: PolicyConfig | None = None) -> ResiliencePolicy:
    """The ``<actor>.s3`` policy with botocore's errors classified (see adapters.errors)."""
    return ResiliencePolicy(f"{actor}.s3", config, transient=s3_transient, is_failure=s3_transient)


@final
@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One entry of a listing."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@final
class ObjectStore:
    """One actor's bucket. Use as ``async with ObjectStore(credentials) as store:``.

    Every method raises, besides what it names: CircuitOpenError, BulkheadFullError,
    CallTimeoutError, DeadlineExceededError (from the policy), and botocore's ClientError (e.g.
    ``NoSuchKey``, ``AccessDenied``) or BotoCoreError (the server could not be reached).
    """

    def __init__(
        self,
        credentials: StorageCredentials,
        *,
        policy: ResiliencePolicy | None = None,
        endpoint: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_connections: int = 20,
    ) -> None:
        """``endpoint`` overrides the credentials' (e.g. to go through a fault proxy)."""
        self.credentials = credentials
        self.bucket = credentials.bucket
        self.policy = policy or s3_policy(credentials.bucket)
        self._endpoint = endpoint or credentials.endpoint
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self._max_connections = max_connections
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def __aenter__(self) -> Self:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        connect_timeout, read_timeout = self._timeouts
        config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._max_connections,
            # Path-style: bucket names need no DNS, as with SeaweedFS and MinIO.
            s3={"addressing_style": "path"},
        )
        creds = self.credentials
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self._endpoint,
                region_name=creds.region,
                aws_access_key_id=creds.access_key,
                aws_secret_access_key=creds.secret_key,
                config=config,
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        """The raw client (no policy, no bucket confinement). Raises RuntimeError if closed."""
        if self._client is None:
            raise RuntimeError("ObjectStore is not open; use `async with ObjectStore(...)`")
        return self._client

    # -- single requests ---------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> str:
        """Store ``data`` under ``key`` in one request; return its ETag."""
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        response = await self.policy.call(
            self.client.put_object, Bucket=self.bucket, Key=key, Body=data, **extra
        )
        return response["ETag"]

    async def get(self, key: str) -> bytes:
        """The whole object ``key`` (prefer :meth:`stream` for large ones)."""

        async def read() -> bytes:
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return await body.read()

        return await self.policy.call(read)

    @contextlib.asynccontextmanager
    async def stream(
        self, key: str, *, chunk_size: int = 256 * 1024
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """``async with store.stream(key) as chunks: async for chunk in chunks: ...``.

        The request goes through the policy; the body is read as the caller iterates, at most
        ``chunk_size`` bytes at a time, and the connection is released when the block ends.
        """
        response = await self.policy.call(self.client.get_object, Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            yield body.iter_chunks(chunk_size)
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        """Delete ``key`` (deleting a missing key is not an error, as in S3)."""
        await self.policy.call(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def exists(self, key: str) -> bool:
        """True if ``key`` exists."""
        from botocore.exceptions import ClientError

        try:
            await self.policy.call(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order; one request per page."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self.policy.call(self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    size=item["Size"],
                    etag=item.get("ETag", ""),
                    last_modified=item["LastModified"],
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def presigned_url(
        self, key: str, *, method: Literal["get", "put"] = "get", expires_s: int = 900
    ) -> str:
        """A URL that lets its holder GET (or PUT) ``key`` for ``expires_s`` seconds, signed with
        the actor's keys. Computed locally: no request, so no policy."""
        operation = "get_object" if method == "get" else "put_object"
        return await self.client.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    # -- multipart -------------------------------------------------------------------------------

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        part_size: int = DEFAULT_PART_SIZE,
        content_type: str | None = None,
    ) -> str:
        """Store what ``chunks`` yields under ``key``, holding at most about one part in memory.

        Up to ``part_size`` bytes in all: one plain PUT. Beyond: a multipart upload of
        ``part_size`` parts (the last may be smaller); if anything fails the upload is aborted so
        no orphaned parts are left, and the error is raised. Returns the object's ETag.

        Raises:
            ValueError: ``part_size`` is below S3's 5 MiB minimum.
        """
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        buffer = bytearray()
        iterator = aiter(chunks)
        async for chunk in iterator:
            buffer += chunk
            if len(buffer) > part_size:
                break
        else:
            return await self.put(key, bytes(buffer), content_type=content_type)

        created = await self.policy.call(
            self.client.create_multipart_upload, Bucket=self.bucket, Key=key, **extra
        )
        upload_id = created["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        try:
            while True:
                while len(buffer) >= part_size:
                    part = bytes(buffer[:part_size])
                    del buffer[:part_size]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
                more: bytes | None = await anext(iterator, None)
                if more is None:
                    break
                buffer += more
            if buffer or not parts:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            done = await self.policy.call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                # Best effort, bounded: a dead server must not hold the caller's error hostage;
                # a lifecycle rule on the bucket reaps what this cannot.
                with anyio.move_on_after(self._timeouts[0] * 2):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise
        return done.get("ETag", "")

    async def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        response = await self.policy.call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return {"ETag": response["ETag"], "PartNumber": number}
