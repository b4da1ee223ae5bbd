"""The bus routes' front door: plain ASGI in front of Litestar.

A bus route needs nothing of Litestar's per-request machinery (router, middleware stack,
signature model, response objects): its whole pipeline is :class:`~edge.app.Gateway`'s. That
machinery cost more edge CPU than the bus round trip itself (``tests/bench/edge_roundtrip.py
--profile``: ~45% of the edge's samples against ~20% for the gateway), and on a small machine the
edge's CPU per request bounds its throughput. So :class:`BusRouteFront` matches the declared
routes itself and hands the gateway an :class:`~edge.http_request.HttpRequest` built from the
scope; every other request (OpenAPI, probes, metrics, file transfers, and any path or method the
routes do not declare, which Litestar answers 404/405) goes to Litestar unchanged.

Both paths answer alike: the same pipeline, the same error mapping (:mod:`edge.errors`), the same
``X-Correlation-Id``, RateLimit headers, metrics and access-log line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import parse_qsl

from litestar.enums import ScopeType

from edge.errors import EdgeError, exception_response
from edge.http_request import HttpRequest
from edge.routes import Route

if TYPE_CHECKING:
    from litestar.types import (
        ASGIApp,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        Receive,
        Scope,
        Send,
    )

    from edge.app import Gateway

__all__ = ["BusRouteFront", "compile_path"]

_PARAM: Final = re.compile(r"{(\w+)(?::(\w+))?}")
# Path parameter types served here, as Litestar would parse them; a route with any other type
# is left to Litestar.
_PATTERN_BY_TYPE: Final = {"str": "[^/]+", "int": "[0-9]+"}


def compile_path(path: str) -> tuple[re.Pattern[str], dict[str, str]] | None:
    """A regex for a Litestar path template and each parameter's type; None if unsupported."""
    types: dict[str, str] = {}
    parts: list[str] = []
    end = 0
    for match in _PARAM.finditer(path):
        name, kind = match.group(1), match.group(2) or "str"
        if kind not in _PATTERN_BY_TYPE:
            return None
        parts.append(re.escape(path[end : match.start()]))
        parts.append(f"(?P<{name}>{_PATTERN_BY_TYPE[kind]})")
        types[name] = kind
        end = match.end()
    parts.append(re.escape(path[end:]))
    return re.compile("".join(parts)), types


@final
class BusRouteFront:
    """ASGI app: serves ``routes`` through ``gateway``, passes everything else to ``app``."""

    def __init__(
        self, app: ASGIApp, gateway: Gateway, routes: Sequence[Route], max_body_bytes: int
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes
        self._static: dict[tuple[str, str], Route] = {}
        self._templated: dict[str, list[tuple[re.Pattern[str], dict[str, str], Route]]] = {}
        for route in routes:
            compiled = compile_path(route.path)
            if compiled is None:
                continue
            pattern, types = compiled
            if types:
                self._templated.setdefault(route.method, []).append((pattern, types, route))
            else:
                self._static[(route.method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, Any]] | None:
        """The route for ``method path`` and its typed path parameters; static paths first."""
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        for pattern, types, candidate in self._templated.get(method, ()):
            found = pattern.fullmatch(path)
            if found is not None:
                params: dict[str, Any] = found.groupdict()
                for name, kind in types.items():
                    if kind == "int":
                        params[name] = int(params[name])
                return candidate, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            found = self.match(scope["method"], scope["path"])
            if found is not None:
                await self._serve(found[0], found[1], scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: Route, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        from edge.app import correlation_id_for, record_request

        started = time.perf_counter()
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            headers.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
        correlation_id = correlation_id_for(headers.get("x-correlation-id", ""))
        edge_headers: dict[str, str] = {}
        client = scope.get("client")
        query = scope.get("query_string", b"")

        async def read_body() -> bytes:
            return await _read_body(receive, headers, self.max_body_bytes)

        request = HttpRequest(
            method=route.method,
            path=scope["path"],
            headers=headers,
            query=dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {},
            path_params=params,
            client_host=client[0] if client else "unknown",
            state={"correlation_id": correlation_id, "edge_headers": edge_headers},
            read_body=read_body,
        )
        status = 500
        try:
            try:
                response = await self.gateway.handle(route, request)
            except Exception as exc:  # mapped exactly as Litestar's exception handler maps it
                response = exception_response(exc, correlation_id, scope["path"])
            status = response.status_code or route.status_code
            content = response.content
            assert isinstance(content, bytes)
            out = [
                (b"content-type", (response.media_type or "application/json").encode()),
                (b"content-length", str(len(content)).encode()),
                (b"x-correlation-id", correlation_id.encode()),
            ]
            out.extend((k.lower().encode(), v.encode()) for k, v in response.headers.items())
            out.extend((k.lower().encode(), v.encode()) for k, v in edge_headers.items())
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": status,
                "headers": out,
            }
            await send(start)
            body: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": content,
                "more_body": False,
            }
            await send(body)
        finally:
            record_request(scope, status, started, correlation_id)


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The request body, refused with 413 once it is (or declares to be) over ``limit`` bytes."""
    too_large = EdgeError("too_large", f"request body is larger than {limit} bytes")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise EdgeError("malformed", "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        assert isinstance(chunk, bytes)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
