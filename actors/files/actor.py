"""The files service: metadata in its Postgres schema, bytes in its own bucket.

The actor never sees a file's bytes on the bus. It hands out presigned URLs scoped to one object
key, and checks what arrived (size, content type, leading bytes) before a file becomes ``ready``.

Object keys are ``files/<file_id>`` and a file's id is derived from the id of the message that
declared it, so a redelivered or retried :class:`CreateUpload` names the same object and never
makes a second one (DESIGN.md, delivery contract 5). Deleted files stay as ``deleted`` rows
without bytes, so the owner's repeated DELETE is answered the same way and other callers always
get ``not_found``.

Storage credentials: ``on_start`` provisions the bucket ``gr-<data_name>`` and a key pair that
reaches only it, with the provisioner in ``ctx.resources["storage_provisioner"]`` if a test or an
embedding put one there, else :class:`adapters.storage.IamProvisioner` from the settings' S3
endpoint and admin keys (all a node started by ``greenroom run files`` has).
"""

from __future__ import annotations

import hashlib
import re
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

from actors.files.contracts import (
    ALLOWED_CONTENT_TYPES,
    MAX_FILE_SIZE,
    SNIFF_BYTES,
    CompleteUpload,
    CreateUpload,
    DeleteFile,
    FileDeleted,
    FileInfo,
    FileLink,
    FilesRequest,
    GetDownload,
    GetFile,
    GetUploadTarget,
    UploadTarget,
    UploadTicket,
    content_matches,
    normalize_content_type,
)
from adapters.postgres import PostgresActor, transaction
from adapters.storage import (
    IamProvisioner,
    ObjectStore,
    StorageCredentials,
    StorageProvisioner,
    s3_policy,
)
from runtime.errors import ConflictError, InvalidError, NotFoundError
from runtime.resilience import PolicyConfig

if TYPE_CHECKING:
    from adapters.postgres import Connection
    from runtime.actor import Context, NodeContext

__all__ = ["Files"]

_HEX_ID: Final = re.compile(r"^[0-9a-f]{32}$")
# Whole statements as constants: no SQL is ever assembled from values.
_INSERT: Final = (
    "INSERT INTO files (id, owner, name, content_type, size, state, object_key)"
    " VALUES ($1, $2, $3, $4, $5, 'pending', $6)"
    # A handler retried after a rolled-back attempt inserts the same row again: keep it.
    " ON CONFLICT (id) DO UPDATE SET updated_at = files.updated_at"
    " RETURNING id, owner, name, content_type, size, state, object_key, created_at"
)
_MARK_READY: Final = (
    "UPDATE files SET state = 'ready', updated_at = now() WHERE id = $1"
    " RETURNING id, owner, name, content_type, size, state, object_key, created_at"
)
_MARK_DELETED: Final = "UPDATE files SET state = 'deleted', updated_at = now() WHERE id = $1"
_SELECT_OWNED: Final = (
    "SELECT id, owner, name, content_type, size, state, object_key, created_at"
    " FROM files WHERE id = $1 AND owner = $2"
)
_SELECT_OWNED_FOR_UPDATE: Final = _SELECT_OWNED + " FOR UPDATE"


def _file_id(message_id: str) -> str:
    # Message ids from the runtime are 32 sortable hex digits: use them as they are, so file ids
    # sort by creation. Anything else (another producer) is hashed into the same shape.
    if _HEX_ID.fullmatch(message_id):
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()[:32]


def _info(row: Any) -> FileInfo:
    created: datetime = row["created_at"]
    return FileInfo(
        file_id=row["id"],
        owner=row["owner"],
        name=row["name"],
        content_type=row["content_type"],
        size=row["size"],
        state=row["state"],
        created_at=created.astimezone(UTC).isoformat(),
    )


class Files(PostgresActor):
    """Uploads, downloads, links and deletion of users' files (module docstring).

    ``max_size`` (bytes, at most :data:`MAX_FILE_SIZE`) and the lifetimes of upload and download
    URLs can be lowered by a subclass.
    """

    name = "files"
    inbox = FilesRequest
    # Named, not found beside the module: test subclasses live in other modules.
    migrations_package = "actors.files.migrations"

    max_size: ClassVar[int] = MAX_FILE_SIZE
    upload_expires_s: ClassVar[int] = 300
    link_expires_s: ClassVar[int] = 300
    # The bucket's resilience policy (timeout, retry, breaker); None: the adapter's default.
    s3_policy_config: ClassVar[PolicyConfig | None] = None

    store: ObjectStore

    # --- lifecycle

    async def on_start(self, ctx: NodeContext) -> None:
        """Postgres first (schema, migrations), then the bucket and this process's keys; puts the
        :class:`ObjectStore` in ``ctx.resources["storage"]``.

        Raises:
            RuntimeError: Postgres or S3 settings are missing.
            botocore.exceptions.ClientError, BotoCoreError: storage refused or is unreachable.
            Whatever :meth:`PostgresActor.on_start` raises.
        """
        await super().on_start(ctx)
        self._stack = AsyncExitStack()
        provisioner: StorageProvisioner = ctx.resources.get(
            "storage_provisioner"
        ) or IamProvisioner.from_settings(ctx.settings)
        actor = self.data_name or self.name
        credentials = await provisioner.provision(actor)
        release = getattr(provisioner, "release", None)
        if release is not None:
            # Registered first, so it runs after the store is closed.
            self._stack.push_async_callback(_release, release, actor, credentials, ctx)
        policy = s3_policy(credentials.bucket, self.s3_policy_config)
        self.store = await self._stack.enter_async_context(ObjectStore(credentials, policy=policy))
        ctx.resources["storage"] = self.store

    async def on_stop(self, ctx: NodeContext) -> None:
        """Close the store, give back this process's keys, then close Postgres."""
        stack: AsyncExitStack | None = getattr(self, "_stack", None)
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            await super().on_stop(ctx)

    # --- handlers

    async def create_upload(self, msg: CreateUpload, ctx: Context) -> UploadTicket:
        """Record a pending file and presign the PUT of its one object.

        Raises:
            InvalidError: the content type is not allowed (``$.content_type``) or the size is over
                :attr:`max_size` (``$.size``).
        """
        content_type = normalize_content_type(msg.content_type)
        if content_type not in ALLOWED_CONTENT_TYPES:
            raise InvalidError(
                f"content type {content_type!r} is not accepted; allowed: "
                + ", ".join(sorted(ALLOWED_CONTENT_TYPES)),
                field="$.content_type",
            )
        if msg.size > self.max_size:
            raise InvalidError(
                f"a file may have at most {self.max_size} bytes, not {msg.size}", field="$.size"
            )
        file_id = _file_id(ctx.envelope.id)
        conn = transaction(ctx).conn
        row = await conn.fetchrow(
            _INSERT,
            file_id,
            msg.owner,
            msg.name,
            content_type,
            msg.size,
            f"files/{file_id}",
        )
        return UploadTicket(
            file=_info(row),
            upload_path=f"/files/{file_id}/content",
            upload_url=await self._presign_put(row),
            expires_in_s=self.upload_expires_s,
        )

    async def get_upload_target(self, msg: GetUploadTarget, ctx: Context) -> UploadTarget:
        """A fresh presigned PUT URL for the owner's pending file.

        Raises:
            NotFoundError: no such file of ``owner``.
            ConflictError: the file is already ready.
        """
        row = await self._owned(transaction(ctx).conn, msg.file_id, msg.owner)
        if row["state"] != "pending":
            raise ConflictError("the file's bytes were already uploaded", field="$.file_id")
        return UploadTarget(
            file_id=row["id"],
            url=await self._presign_put(row),
            content_type=row["content_type"],
            size=row["size"],
            expires_in_s=self.upload_expires_s,
        )

    async def complete_upload(self, msg: CompleteUpload, ctx: Context) -> FileInfo:
        """Check the stored object against the declaration and mark the file ready (a ready file
        is returned as it is).

        Raises:
            NotFoundError: no such file of ``owner``.
            InvalidError: nothing was uploaded, or size, content type or leading bytes differ
                from the declaration; a mismatching object is deleted so it can be sent again.
        """
        conn = transaction(ctx).conn
        row = await self._owned(conn, msg.file_id, msg.owner, lock=True)
        if row["state"] == "ready":
            return _info(row)
        await self._verify(row)
        ready = await conn.fetchrow(_MARK_READY, row["id"])
        ctx.log.info("files.ready", file_id=row["id"], size=row["size"])
        return _info(ready)

    async def get_file(self, msg: GetFile, ctx: Context) -> FileInfo:
        """The owner's file's metadata.

        Raises:
            NotFoundError: no such file of ``owner``.
        """
        return _info(await self._owned(transaction(ctx).conn, msg.file_id, msg.owner))

    async def get_download(self, msg: GetDownload, ctx: Context) -> FileLink:
        """A presigned GET URL of the owner's ready file, valid :attr:`link_expires_s`.

        Raises:
            NotFoundError: no such file of ``owner``.
            ConflictError: the file is still pending.
        """
        row = await self._owned(transaction(ctx).conn, msg.file_id, msg.owner)
        if row["state"] != "ready":
            raise ConflictError("the file's upload is not complete", field="$.file_id")
        url = await self.store.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.store.bucket, "Key": row["object_key"]},
            ExpiresIn=self.link_expires_s,
        )
        return FileLink(
            file_id=row["id"],
            name=row["name"],
            content_type=row["content_type"],
            size=row["size"],
            url=url,
            expires_in_s=self.link_expires_s,
        )

    async def delete_file(self, msg: DeleteFile, ctx: Context) -> FileDeleted:
        """Delete the owner's file's object and mark it deleted; again for a deleted file.

        Raises:
            NotFoundError: no such file (live or deleted) of ``owner``.
        """
        conn = transaction(ctx).conn
        row = await self._owned(conn, msg.file_id, msg.owner, lock=True, deleted_too=True)
        if row["state"] != "deleted":
            # Object first: if the commit then fails, the redelivery deletes it again (a no-op
            # in S3) and commits; the other order could leave bytes no row points at.
            await self.store.delete(row["object_key"])
            await conn.execute(_MARK_DELETED, row["id"])
            ctx.log.info("files.deleted", file_id=row["id"])
        return FileDeleted(file_id=row["id"])

    # --- helpers

    async def _owned(
        self,
        conn: Connection,
        file_id: str,
        owner: str,
        *,
        lock: bool = False,
        deleted_too: bool = False,
    ) -> Any:
        row = await conn.fetchrow(
            _SELECT_OWNED_FOR_UPDATE if lock else _SELECT_OWNED, file_id, owner
        )
        # Another owner's file and a missing one look the same: nobody learns an id exists.
        if row is None or (row["state"] == "deleted" and not deleted_too):
            raise NotFoundError(f"no file {file_id!r}", field="$.file_id")
        return row

    async def _presign_put(self, row: Any) -> str:
        # Content-Type is signed too, so a direct upload cannot store another type.
        return await self.store.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.store.bucket,
                "Key": row["object_key"],
                "ContentType": row["content_type"],
            },
            ExpiresIn=self.upload_expires_s,
        )

    async def _verify(self, row: Any) -> None:
        from botocore.exceptions import ClientError

        store, key = self.store, row["object_key"]
        try:
            head = await store.policy.call(store.client.head_object, Bucket=store.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise InvalidError(
                    "no bytes were uploaded for this file", field="$.file_id"
                ) from exc
            raise
        problem = ""
        if head["ContentLength"] != row["size"]:
            problem = f"{head['ContentLength']} bytes were stored, {row['size']} were declared"
        elif normalize_content_type(head.get("ContentType", "")) != row["content_type"]:
            problem = f"the stored content type is not the declared {row['content_type']!r}"
        else:
            start = await self._head_bytes(key)
            if not content_matches(row["content_type"], start):
                problem = f"the bytes are not {row['content_type']!r}"
        if problem:
            await store.delete(key)
            raise InvalidError(problem, field="$.file_id")

    async def _head_bytes(self, key: str) -> bytes:
        store = self.store

        async def read() -> bytes:
            response = await store.client.get_object(
                Bucket=store.bucket, Key=key, Range=f"bytes=0-{SNIFF_BYTES - 1}"
            )
            async with response["Body"] as body:
                return await body.read()

        return await store.policy.call(read)


async def _release(
    release: Any, actor: str, credentials: StorageCredentials, ctx: NodeContext
) -> None:
    # A failed release leaves a key that reaches only this actor's bucket: log, do not fail stop.
    try:
        await release(actor, credentials)
    except Exception as exc:  # any storage failure here is only worth a warning
        ctx.log.warning("files.release_keys_failed", error=str(exc))
