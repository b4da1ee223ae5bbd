"""How every failure becomes an HTTP response (DESIGN.md, request/reply and the edge).

Every error body is JSON ``{"error": kind, "message": ..., "field": ..., "correlation_id": ...}``;
a 500 carries only ``{"error": "internal", "correlation_id": ...}``, so no stack trace or internal
detail ever reaches a client; the full error is logged under the same correlation id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from runtime.errors import DomainError
from runtime.logging import get_logger
from runtime.messages import new_id

__all__ = [
    "STATUS_BY_KIND",
    "EdgeError",
    "correlation_id_of",
    "domain_error_response",
    "error_response",
    "exception_response",
    "handle_exception",
]

STATUS_BY_KIND: Final[Mapping[str, int]] = {
    "malformed": 400,
    "invalid": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    "deadline": 504,
    "internal": 500,
}

# Litestar's own HTTP errors (unknown route, wrong method, body too large) by status.
_KIND_BY_STATUS: Final[Mapping[int, str]] = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _log() -> Any:
    # Looked up per use, not bound at import: a logger bound before configure_logging() keeps
    # structlog's default configuration (stdout, console format) for good.
    return get_logger("edge.errors")


_encoder = msgspec.json.Encoder()


class EdgeError(Exception):
    """A failure the edge itself detects (bad JSON, bad token, rate limit, ...).

    ``headers`` go on the response (``WWW-Authenticate``, ``Retry-After``, RateLimit headers).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        field: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = STATUS_BY_KIND[kind]
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def correlation_id_of(request: Request[Any, Any, Any]) -> str:
    """The request's correlation id (set by the correlation middleware), else a new one.

    Requests Litestar rejects before routing (unknown path) never reach the middleware.
    """
    state = request.scope.get("state") or {}
    value = state.get("correlation_id")
    return str(value) if value else new_id()


def error_response(
    status: int,
    kind: str,
    message: str,
    correlation_id: str,
    *,
    field: str = "",
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """The JSON error response; ``message`` and ``field`` are left out of a 500."""
    body: dict[str, str] = {"error": kind}
    if status != 500:
        body["message"] = message
        if field:
            body["field"] = field
    body["correlation_id"] = correlation_id
    return Response(
        content=_encoder.encode(body),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def domain_error_response(exc: DomainError, correlation_id: str) -> Response[bytes]:
    """The response for an error a service (or the requester) raised: status by its kind."""
    status = STATUS_BY_KIND.get(exc.kind, 500)
    headers = {"Retry-After": _retry_after(exc.retry_after_s)} if status == 503 else {}
    if status == 500:
        _log().error("internal error reply", correlation_id=correlation_id, error=str(exc))
    return error_response(
        status, exc.kind, exc.message, correlation_id, field=exc.field, headers=headers
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception: map it, never leak internals."""
    return exception_response(exc, correlation_id_of(request), request.url.path)


def exception_response(exc: Exception, correlation_id: str, path: str) -> Response[bytes]:
    """The response for any exception raised while answering ``path``; internals never leak."""
    if isinstance(exc, EdgeError):
        return error_response(
            exc.status, exc.kind, exc.message, correlation_id, field=exc.field, headers=exc.headers
        )
    if isinstance(exc, DomainError):
        return domain_error_response(exc, correlation_id)
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        kind = _KIND_BY_STATUS.get(exc.status_code, "invalid")
        return error_response(
            exc.status_code, kind, exc.detail, correlation_id, headers=exc.headers or {}
        )
    # Anything else is a bug or an outage we did not classify: log it all, tell the client nothing.
    _log().error(
        "unhandled error",
        correlation_id=correlation_id,
        path=path,
        exc_info=exc,
    )
    return error_response(500, "internal", "", correlation_id)
