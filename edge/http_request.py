"""What the gateway's pipeline reads of an HTTP request, whichever server layer parsed it.

The bus routes are served straight from the ASGI scope (:mod:`edge.front`), file transfers and
the probes by Litestar; :class:`HttpRequest` is the one shape :class:`~edge.app.Gateway` sees, so
both paths run exactly the same checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Request

__all__ = ["HttpRequest"]


@dataclass(slots=True)
class HttpRequest:
    """One request: header names lower-case (first value wins), text query values.

    ``state`` is per request and shared with the layer that answers: the correlation id and the
    ``edge_headers`` (RateLimit headers) the pipeline adds to the response.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    path_params: Mapping[str, Any]
    client_host: str
    state: dict[str, Any]
    read_body: Callable[[], Awaitable[bytes]]

    async def body(self) -> bytes:
        """The whole body (the server layer enforces the size limit)."""
        return await self.read_body()

    @classmethod
    def from_litestar(cls, request: Request[Any, Any, Any]) -> HttpRequest:
        """The view of a request Litestar routed (its body limit applies)."""
        return cls(
            method=request.method,
            path=request.url.path,
            headers=request.headers,
            query=dict(request.query_params.items()),
            path_params=request.path_params,
            client_host=request.client.host if request.client else "unknown",
            state=request.scope["state"],
            read_body=request.body,
        )
