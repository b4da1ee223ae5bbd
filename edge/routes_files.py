"""The files service's JSON routes (the byte-streaming ones are in :mod:`edge.files`).

Upload, in three steps: ``POST /files`` declares name, content type and size and answers an
:class:`~actors.files.contracts.UploadTicket`; the bytes go to ``PUT /files/{file_id}/content``
(or straight to the ticket's presigned URL, followed by ``POST /files/{file_id}/complete``); the
file is then ``ready``. Every route acts for the token's subject only: another user's file is 404.
"""

from __future__ import annotations

from actors.files.contracts import (
    SERVICE,
    CompleteUpload,
    CreateUpload,
    DeleteFile,
    FileDeleted,
    FileInfo,
    FileLink,
    GetDownload,
    GetFile,
    UploadTicket,
)
from edge.routes import Route

__all__ = ["FILES_ROUTES"]

FILES_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/files",
        service=SERVICE,
        request_type=CreateUpload,
        reply_type=UploadTicket,
        subject_field="owner",
        status_code=201,
        summary="Declare a file to upload; answers where to send its bytes",
    ),
    Route(
        "GET",
        "/files/{file_id:str}",
        service=SERVICE,
        request_type=GetFile,
        reply_type=FileInfo,
        subject_field="owner",
        summary="One of my files' metadata",
    ),
    Route(
        "POST",
        "/files/{file_id:str}/complete",
        service=SERVICE,
        request_type=CompleteUpload,
        reply_type=FileInfo,
        subject_field="owner",
        summary="Confirm bytes uploaded straight to the presigned URL; the file becomes ready",
    ),
    Route(
        "GET",
        "/files/{file_id:str}/link",
        service=SERVICE,
        request_type=GetDownload,
        reply_type=FileLink,
        subject_field="owner",
        summary="A short-lived presigned download URL of one of my files",
    ),
    Route(
        "DELETE",
        "/files/{file_id:str}",
        service=SERVICE,
        request_type=DeleteFile,
        reply_type=FileDeleted,
        subject_field="owner",
        summary="Delete one of my files (again: same answer)",
    ),
)
