"""The two endpoints where a file's bytes pass through the edge, streamed, never over the bus.

``PUT /files/{file_id}/content`` (upload): the edge asks the files service over the bus where the
bytes of this pending file go (:class:`~actors.files.contracts.GetUploadTarget`: a presigned PUT
URL for one object key, the declared content type and size), checks the request against that
declaration, streams the body to the URL, then has the service verify and complete the upload
(:class:`~actors.files.contracts.CompleteUpload`); it answers the ready file's metadata. Checks:

- ``Content-Type`` must be the declared type: else 415 naming the ``Content-Type`` header;
- the first bytes must look like that type (:func:`~actors.files.contracts.content_matches`),
  checked before anything reaches storage: else 415;
- more bytes than declared (by ``Content-Length`` or as counted) is 413; fewer is 422 naming
  ``Content-Length``. A refused stream is aborted, and storage keeps nothing of it (a PUT is
  all or nothing).

Memory stays bounded whatever the file size: the edge holds at most one received chunk plus the
first :data:`~actors.files.contracts.SNIFF_BYTES`.

``GET /files/{file_id}/content`` (download): the service checks the owner and answers a presigned
GET URL (:class:`~actors.files.contracts.GetDownload`); the edge streams the object back with its
type, length and an attachment disposition. Streaming, rather than redirecting to the URL, because
object storage is usually not reachable by clients (it listens on 127.0.0.1 or a private
network); a client that can reach it asks ``GET /files/{file_id}/link`` and fetches it directly.

The edge never holds storage credentials: it only ever uses URLs the files service signed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import msgspec
from litestar import Request, Response, route
from litestar.response import Stream

from actors.files.contracts import (
    SERVICE,
    SNIFF_BYTES,
    CompleteUpload,
    FileInfo,
    FileLink,
    GetDownload,
    GetUploadTarget,
    UploadTarget,
    content_matches,
    normalize_content_type,
)
from edge.errors import EdgeError, error_response
from runtime.errors import NotFoundError, UnavailableError
from runtime.logging import get_logger

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from edge.app import Gateway
    from edge.config import EdgeConfig
    from edge.routes import Route

__all__ = ["FileTransferRefusedError", "file_content_handlers"]

_TRACE_HEADERS: Final = ("traceparent", "tracestate")
_STORAGE_TIMEOUT_S: Final = 30.0
_DOWNLOAD_CHUNK: Final = 64 * 1024
_json: Final = msgspec.json.Encoder()


def _log() -> Any:
    return get_logger("edge.files")


class FileTransferRefusedError(Exception):
    """The request's bytes do not fit the declaration; becomes ``status`` with ``field``.

    Kept apart from :class:`~edge.errors.EdgeError` because 415 has no domain error kind.
    """

    def __init__(self, status: int, kind: str, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field


def _too_large(size: int) -> FileTransferRefusedError:
    return FileTransferRefusedError(
        413, "too_large", f"the body is larger than the declared {size} bytes"
    )


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError("file transfer through the edge needs httpx: pip install httpx") from exc
    return httpx


def file_content_handlers(
    gateway: Gateway, config: EdgeConfig, routes: Sequence[Route]
) -> list[HTTPRouteHandler]:
    """The upload and download handlers, if ``routes`` serve the files service; else none.

    Raises:
        Nothing at build time; each request raises what :mod:`edge.errors` maps.
    """
    if not any(r.service == SERVICE for r in routes):
        return []
    transfer = _FileTransfer(gateway)

    @route(
        "/files/{file_id:str}/content",
        http_method=["PUT"],
        operation_id="files.content.put",
        summary="Upload the bytes of a declared file (streamed, checked, size-limited)",
        tags=[SERVICE],
        # The declared size is the limit, enforced while streaming; the JSON limit does not apply.
        request_max_body_size=None,
    )
    async def upload(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await transfer.upload(request, request.path_params["file_id"])

    @route(
        "/files/{file_id:str}/content",
        http_method=["GET"],
        operation_id="files.content.get",
        summary="Download the bytes of one of my files (streamed)",
        tags=[SERVICE],
    )
    async def download(request: Request[Any, Any, Any]) -> Stream:
        return await transfer.download(request, request.path_params["file_id"])

    return [upload, download]


class _FileTransfer:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _ask(
        self, request: Request[Any, Any, Any], message: msgspec.Struct, reply_type: Any, key: str
    ) -> Any:
        gateway = self.gateway
        requester, verifier = gateway.requester, gateway.verifier
        if requester is None or verifier is None:
            raise UnavailableError("edge is starting", retry_after_s=1.0)
        return await requester.request(
            SERVICE,
            message,
            key=key,
            reply_type=reply_type,
            headers={h: v for h in _TRACE_HEADERS if (v := request.headers.get(h))},
            correlation_id=request.scope["state"]["correlation_id"],
        )

    async def _owner(self, request: Request[Any, Any, Any]) -> str:
        """The token's subject, after the same rate limits as every JSON route."""
        gateway = self.gateway
        verifier = gateway.verifier
        if verifier is None:
            raise UnavailableError("edge is starting", retry_after_s=1.0)
        state = request.scope["state"]
        # The gateway's own pipeline steps, so limits and token rules match the JSON routes.
        client_ip = gateway.client_ip(
            request.headers, request.client.host if request.client else "unknown"
        )
        await gateway._limit("ip", client_ip, gateway.config.rate_limit_per_ip, state)
        principal = await verifier.verify(request.headers.get("authorization"))
        await gateway._limit("sub", principal.subject, gateway.config.rate_limit_per_subject, state)
        return principal.subject

    @staticmethod
    def _contract(file_id: str, owner: str, contract: type[msgspec.Struct]) -> Any:
        try:
            return msgspec.convert({"file_id": file_id, "owner": owner}, contract)
        except msgspec.ValidationError as exc:
            raise EdgeError("invalid", "not a file id", field="$.file_id") from exc

    # --- upload

    async def upload(self, request: Request[Any, Any, Any], file_id: str) -> Response[bytes]:
        """Check and stream the body to the file's presigned URL, then complete the upload.

        Raises:
            EdgeError, DomainError: as JSON routes do (401, 404, 409, 422, 503, 504, ...).
        """
        owner = await self._owner(request)
        try:
            target: UploadTarget = await self._ask(
                request, self._contract(file_id, owner, GetUploadTarget), UploadTarget, file_id
            )
            await self._stream_up(request, target)
        except FileTransferRefusedError as exc:
            return error_response(
                exc.status,
                exc.kind,
                exc.message,
                request.scope["state"]["correlation_id"],
                field=exc.field,
            )
        info: FileInfo = await self._ask(
            request, self._contract(file_id, owner, CompleteUpload), FileInfo, file_id
        )
        return Response(content=_json.encode(info), status_code=200, media_type="application/json")

    @staticmethod
    def _check_headers(request: Request[Any, Any, Any], target: UploadTarget) -> None:
        declared = normalize_content_type(request.headers.get("content-type", ""))
        if declared != target.content_type:
            raise FileTransferRefusedError(
                415,
                "unsupported_media_type",
                f"Content-Type must be the declared {target.content_type!r}",
                field="Content-Type",
            )
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise EdgeError("malformed", "Content-Length is not a number")
            if int(length) > target.size:
                raise _too_large(target.size)
            if int(length) < target.size:
                raise FileTransferRefusedError(
                    422,
                    "invalid",
                    f"Content-Length must be the declared {target.size}",
                    field="Content-Length",
                )

    async def _stream_up(self, request: Request[Any, Any, Any], target: UploadTarget) -> None:
        self._check_headers(request, target)
        chunks = aiter(request.stream())
        # Look at the first bytes before anything reaches storage.
        head = bytearray()
        async for chunk in chunks:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
        if len(head) > target.size:
            raise _too_large(target.size)
        if not content_matches(target.content_type, bytes(head[:SNIFF_BYTES])):
            raise FileTransferRefusedError(
                415,
                "unsupported_media_type",
                f"the bytes are not {target.content_type!r}",
                field="Content-Type",
            )
        refused: list[FileTransferRefusedError] = []

        async def body() -> AsyncIterator[bytes]:
            sent = len(head)
            yield bytes(head)
            async for chunk in chunks:
                sent += len(chunk)
                if sent > target.size:
                    refused.append(_too_large(target.size))
                    raise refused[-1]
                yield chunk
            if sent < target.size:
                refused.append(
                    FileTransferRefusedError(
                        422,
                        "invalid",
                        f"the body has {sent} bytes, {target.size} were declared",
                        field="Content-Length",
                    )
                )
                raise refused[-1]

        httpx = _httpx()
        try:
            async with httpx.AsyncClient(timeout=_STORAGE_TIMEOUT_S) as client:
                # An explicit Content-Length: S3 refuses a chunked PUT without one, and storage
                # must end with exactly the declared size.
                response = await client.put(
                    target.url,
                    content=body(),
                    headers={
                        "Content-Type": target.content_type,
                        "Content-Length": str(target.size),
                    },
                )
        except Exception as exc:
            if refused:
                raise refused[-1] from None
            raise UnavailableError("object storage is unavailable", retry_after_s=1.0) from exc
        if refused:
            raise refused[-1]
        if response.status_code >= 300:
            _log().warning(
                "storage refused upload", status=response.status_code, file_id=target.file_id
            )
            raise UnavailableError("object storage refused the upload", retry_after_s=1.0)

    # --- download

    async def download(self, request: Request[Any, Any, Any], file_id: str) -> Stream:
        """Stream the owner's ready file back.

        Raises:
            EdgeError, DomainError: as JSON routes do (401, 404, 409, 503, 504, ...).
        """
        owner = await self._owner(request)
        link: FileLink = await self._ask(
            request, self._contract(file_id, owner, GetDownload), FileLink, file_id
        )
        httpx = _httpx()
        client = httpx.AsyncClient(timeout=_STORAGE_TIMEOUT_S)
        try:
            upstream = await client.send(client.build_request("GET", link.url), stream=True)
        except Exception as exc:
            await client.aclose()
            raise UnavailableError("object storage is unavailable", retry_after_s=1.0) from exc
        if upstream.status_code != 200:
            await upstream.aclose()
            await client.aclose()
            if upstream.status_code == 404:
                raise NotFoundError(f"no file {file_id!r}", field="$.file_id")
            raise UnavailableError("object storage refused the download", retry_after_s=1.0)

        async def chunks() -> AsyncIterator[bytes]:
            # Closed when the response is sent or the client goes away.
            try:
                async for chunk in upstream.aiter_raw(_DOWNLOAD_CHUNK):
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return Stream(
            chunks(),
            media_type=link.content_type,
            headers={
                "Content-Length": str(link.size),
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(link.name)}",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )
