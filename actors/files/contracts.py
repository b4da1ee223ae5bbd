"""The files service's contracts: what callers send on ``files.commands`` and get back.

Bytes never travel over the bus. A client declares a file (:class:`CreateUpload`), the service
records it ``pending`` and answers with a presigned PUT URL for exactly one object key; the bytes go
to object storage (streamed through the edge, or straight to the URL); :class:`CompleteUpload`
makes the service check the stored object and mark the file ``ready``. Reads work the same way
round: :class:`GetDownload` answers with a short-lived presigned GET URL.

Every request carries ``owner`` (the edge fills it from the token's subject, never the body); a
file that is not the caller's is reported as not found, so nobody learns that it exists.

The allowed content types and their leading bytes (:func:`content_matches`) are part of the
contract: the service refuses other types, and whoever streams the bytes checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "ALLOWED_CONTENT_TYPES",
    "MAX_FILE_SIZE",
    "SERVICE",
    "SNIFF_BYTES",
    "CompleteUpload",
    "CreateUpload",
    "DeleteFile",
    "FileDeleted",
    "FileInfo",
    "FileLink",
    "FileState",
    "FilesRequest",
    "GetDownload",
    "GetFile",
    "GetUploadTarget",
    "UploadTarget",
    "UploadTicket",
    "content_matches",
    "normalize_content_type",
]

SERVICE: Final = "files"

MAX_FILE_SIZE: Final = 64 * 1024 * 1024
"""The largest file the service accepts, in bytes."""

ALLOWED_CONTENT_TYPES: Final = frozenset(
    {
        "application/pdf",
        "image/gif",
        "image/jpeg",
        "image/png",
        "image/webp",
        "text/plain",
    }
)
"""Declared content types the service accepts; each can be recognised by its first bytes."""

FileState = Literal["pending", "ready", "deleted"]

FileId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Owner = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")]
ContentType = Annotated[str, msgspec.Meta(min_length=3, max_length=127)]
Size = Annotated[int, msgspec.Meta(ge=1, le=MAX_FILE_SIZE)]


# --- requests -----------------------------------------------------------------------------------


class CreateUpload(msgspec.Struct, frozen=True, kw_only=True, tag="files.CreateUpload"):
    """Declare a file to upload. Replies :class:`UploadTicket`; ``invalid`` for a content type
    outside :data:`ALLOWED_CONTENT_TYPES` (field ``$.content_type``) or a size over the limit."""

    owner: Owner
    name: FileName
    content_type: ContentType
    size: Size


class GetUploadTarget(msgspec.Struct, frozen=True, kw_only=True, tag="files.GetUploadTarget"):
    """Where the bytes of a pending file go. Replies :class:`UploadTarget` (a fresh URL);
    ``not_found`` if no such file of ``owner``; ``conflict`` if it is no longer pending."""

    file_id: FileId
    owner: Owner


class CompleteUpload(msgspec.Struct, frozen=True, kw_only=True, tag="files.CompleteUpload"):
    """The bytes are stored: check them and mark the file ready. Replies :class:`FileInfo`;
    ``invalid`` if the stored object is missing or its size, type or first bytes differ from
    the declaration (the object is then removed, the file stays pending); ``not_found``."""

    file_id: FileId
    owner: Owner


class GetFile(msgspec.Struct, frozen=True, kw_only=True, tag="files.GetFile"):
    """One file's metadata. Replies :class:`FileInfo`; ``not_found`` unless ``owner``'s."""

    file_id: FileId
    owner: Owner


class GetDownload(msgspec.Struct, frozen=True, kw_only=True, tag="files.GetDownload"):
    """A short-lived link to a ready file's bytes. Replies :class:`FileLink`; ``not_found``
    unless it is ``owner``'s; ``conflict`` while it is still pending."""

    file_id: FileId
    owner: Owner


class DeleteFile(msgspec.Struct, frozen=True, kw_only=True, tag="files.DeleteFile"):
    """Remove a file's bytes and metadata. Idempotent for the owner: deleting it again replies
    :class:`FileDeleted` again. ``not_found`` unless it is (or was) ``owner``'s."""

    file_id: FileId
    owner: Owner


FilesRequest = CreateUpload | GetUploadTarget | CompleteUpload | GetFile | GetDownload | DeleteFile
"""The files service's inbox."""


# --- replies ------------------------------------------------------------------------------------


class FileInfo(msgspec.Struct, frozen=True, kw_only=True, tag="files.FileInfo"):
    """A file's metadata. ``created_at`` is ISO 8601 UTC."""

    file_id: str
    owner: str
    name: str
    content_type: str
    size: int
    state: FileState
    created_at: str


class UploadTicket(msgspec.Struct, frozen=True, kw_only=True, tag="files.UploadTicket"):
    """A declared, pending file and the two ways to send its bytes.

    ``upload_path``: the edge path to ``PUT`` the bytes to (the edge checks and streams them,
    then completes the upload). ``upload_url``: a presigned PUT URL for the one object, valid
    ``expires_in_s`` seconds, for clients that reach object storage directly; they send
    ``Content-Type: <content_type>`` and then call ``POST /files/{file_id}/complete``.
    """

    file: FileInfo
    upload_path: str
    upload_url: str
    expires_in_s: int


class UploadTarget(msgspec.Struct, frozen=True, kw_only=True, tag="files.UploadTarget"):
    """Where and what to upload for a pending file (for whoever streams the bytes)."""

    file_id: str
    url: str
    content_type: str
    size: int
    expires_in_s: int


class FileLink(msgspec.Struct, frozen=True, kw_only=True, tag="files.FileLink"):
    """A presigned GET URL of a ready file, valid ``expires_in_s`` seconds."""

    file_id: str
    name: str
    content_type: str
    size: int
    url: str
    expires_in_s: int


class FileDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="files.FileDeleted"):
    """The file's bytes and metadata are gone."""

    file_id: str


# --- content sniffing ---------------------------------------------------------------------------

SNIFF_BYTES: Final = 512
"""How many leading bytes :func:`content_matches` looks at (fewer if the file is shorter)."""


def normalize_content_type(value: str) -> str:
    """``value`` without parameters, lower case: ``Text/Plain; charset=utf-8`` -> ``text/plain``."""
    return value.split(";", 1)[0].strip().lower()


def content_matches(content_type: str, head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file, up to :data:`SNIFF_BYTES`) looks like
    ``content_type``: the format's signature for binary types; for ``text/plain``, UTF-8 with no
    NUL or other control bytes besides tab, newline, carriage return and form feed."""
    if content_type == "text/plain":
        return _looks_like_text(head)
    check = _SIGNATURES.get(content_type)
    return check is not None and check(head)


_SIGNATURES: Final[dict[str, Callable[[bytes], bool]]] = {
    "image/png": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda head: head.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda head: head.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    "application/pdf": lambda head: head.startswith(b"%PDF-"),
}


def _looks_like_text(head: bytes) -> bool:
    if any(byte < 0x20 and byte not in b"\t\n\r\f" for byte in head):
        return False
    # The sample may end inside a multi-byte character: drop up to three trailing bytes.
    for cut in range(4):
        try:
            head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False
