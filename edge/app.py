"""The Litestar application: routes as data, turned into handlers that speak request/reply.

Each request to a declared :class:`~edge.routes.Route` goes through one pipeline
(:class:`Gateway`): rate limit per client IP -> bearer token (if the route wants one) -> roles ->
rate limit per token subject -> build and validate the request contract -> ``Idempotency-Key``
(POST) -> request/reply over the bus -> the reply contract as JSON. Every failure on the way is an
exception that :func:`edge.errors.handle_exception` turns into the status DESIGN.md fixes.

``/health`` says the process is alive; ``/ready`` that the bus and Redis answer; ``/metrics`` is the
Prometheus text of :mod:`runtime.metrics`; ``/schema`` is the OpenAPI document.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, route
from litestar.datastructures import Headers
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from actors.auth.contracts import GetSigningKeys, SigningKeys
from edge.auth import KeyFetcher, Principal, SigningKeyCache, TokenVerifier
from edge.config import EdgeConfig
from edge.errors import EdgeError, domain_error_response, handle_exception
from edge.files import file_content_handlers
from edge.front import BusRouteFront
from edge.http_request import HttpRequest
from edge.idempotency import IdempotencyStore
from edge.openapi import ContractSchemaPlugin
from edge.ratelimit import RateLimiter
from edge.routes import Route
from runtime.bus.base import Broker
from runtime.config import Settings
from runtime.errors import DeadlineExceededError, DomainError, UnavailableError
from runtime.logging import get_logger
from runtime.messages import new_id
from runtime.metrics import registry
from runtime.request import Requester
from runtime.resilience.deadline import deadline_after, deadline_scope

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Gateway", "create_app"]

# Connections the edge keeps to Redis (rate limits, idempotency keys) per process. A request
# holds one only for a round trip, so a modest pool serves hundreds of concurrent requests;
# opening hundreds of connections at once is what fails under load.
REDIS_POOL_SIZE = 64
# How long a request waits for a free pooled connection, and for a new one to connect.
REDIS_POOL_WAIT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0


# Lazy (runtime.logging.get_logger): it takes the configuration in force when it first logs,
# and is then cached, so the per-request access line costs no logger lookup.
_ACCESS_LOG = get_logger("edge.access")


def _log() -> Any:
    return _ACCESS_LOG


_CORRELATION_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as in the IETF draft
_KEY_FETCH_TIMEOUT_S: Final = 2.0
# How long storing (or releasing) an idempotency record may hold an answer that already exists.
_RECORD_TIMEOUT_S: Final = 1.0
_READY_TIMEOUT_S: Final = 2.0
_TRACE_HEADERS: Final = ("traceparent", "tracestate")

_json: Final = msgspec.json.Encoder()
_body_decoder: Final = msgspec.json.Decoder(dict[str, Any])

_http_requests = registry.counter("greenroom_edge_requests_total", "HTTP requests by status")
_http_seconds = registry.histogram("greenroom_edge_request_seconds", "HTTP request duration")


def _field_path(message: str) -> str:
    """The JSON path a msgspec validation message points at (``$.items[0].sku``)."""
    where = "$"
    if " - at `" in message:
        message, _, at = message.rpartition(" - at `")
        where = at.rstrip("`")
    missing = re.match(r"Object missing required field `([^`]+)`", message)
    if missing:
        return f"{where}.{missing.group(1)}"
    return where


def _integral_floats_as_ints(value: Any) -> Any:
    """``2.0`` as ``2``, however deep: JSON Schema's ``integer`` (what OpenAPI promises for an
    int field) includes ``2.0``, while strict decoding would refuse it. Non-integral numbers stay
    floats, so ``2.5`` is still refused for an int field; a float field accepts the int."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


class CorrelationMiddleware(ASGIMiddleware):
    """Gives every request a correlation id, echoes it, adds edge headers and logs one line.

    The id is the client's ``X-Correlation-Id`` when it is a short token of safe characters (it
    travels on as a Kafka header), otherwise a new one.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        correlation_id = correlation_id_for(Headers.from_scope(scope).get("x-correlation-id", ""))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["correlation_id"] = correlation_id
        edge_headers: dict[str, str] = state.setdefault("edge_headers", {})
        status = 500
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-correlation-id", correlation_id.encode()))
                headers.extend((k.lower().encode(), v.encode()) for k, v in edge_headers.items())
                message = {**message, "headers": headers}
            await send(message)

        try:
            await next_app(scope, receive, send_with_headers)
        finally:
            record_request(scope, status, started, correlation_id)


def record_request(scope: Scope, status: int, started: float, correlation_id: str) -> None:
    """The request's metrics and its one access-log line."""
    elapsed = time.perf_counter() - started
    _http_requests.inc(status=str(status))
    _http_seconds.observe(elapsed)
    _log().info(
        "request",
        method=scope.get("method", ""),
        path=scope["path"],
        status=status,
        duration_ms=round(elapsed * 1000, 2),
        correlation_id=correlation_id,
    )


def correlation_id_for(given: str) -> str:
    """The client's ``X-Correlation-Id`` if it is a short token of safe characters, else new."""
    return given if _CORRELATION_ID.fullmatch(given) else new_id()


@final
class Gateway:
    """The per-request pipeline of the edge; one per app, its clients bound at start-up."""

    def __init__(self, settings: Settings, config: EdgeConfig) -> None:
        self.settings = settings
        self.config = config
        self.broker: Broker | None = None
        self.requester: Requester | None = None
        self.redis: Redis | None = None
        self.limiter: RateLimiter | None = None
        self.idempotency: IdempotencyStore | None = None
        self.verifier: TokenVerifier | None = None
        self.keys: SigningKeyCache | None = None

    def bind(
        self,
        broker: Broker,
        requester: Requester,
        redis: Redis,
        key_fetcher: KeyFetcher | None = None,
    ) -> None:
        """Attach the started clients (called by the app's lifespan)."""
        config = self.config
        self.broker = broker
        self.requester = requester
        self.redis = redis
        self.limiter = RateLimiter(redis, prefix=config.redis_prefix, window_s=config.rate_window_s)
        self.idempotency = IdempotencyStore(
            redis,
            prefix=config.redis_prefix,
            ttl_s=config.idempotency_ttl_s,
            in_flight_ttl_s=self.settings.request_timeout_s + 5.0,
        )

        async def fetch_from_auth(request: GetSigningKeys) -> SigningKeys:
            return await requester.request(
                config.auth_service,
                request,
                key="signing-keys",
                reply_type=SigningKeys,
                timeout_s=_KEY_FETCH_TIMEOUT_S,
            )

        self.keys = SigningKeyCache(
            key_fetcher or fetch_from_auth,
            ttl_s=config.key_cache_ttl_s,
            min_refresh_interval_s=config.key_refresh_min_interval_s,
        )
        self.verifier = TokenVerifier(config, self.keys)

    # --- pipeline

    async def handle(self, route: Route, request: HttpRequest) -> Response[bytes]:
        """Answer one HTTP request for ``route`` within its deadline.

        The deadline (``route.timeout_s``, else ``settings.request_timeout_s``) starts when the
        request reaches the gateway and bounds everything: rate limits, token checks, the
        idempotency claim and the bus round trip, which inherits only what is left. Past it the
        answer is 504, however slow a dependency is.

        Raises:
            EdgeError: the request is malformed, invalid, unauthorised, forbidden, rate limited
                or has a conflicting ``Idempotency-Key``.
            DomainError: the service answered with an error, or the deadline passed.
        """
        timeout_s = route.timeout_s or self.settings.request_timeout_s
        with deadline_scope(deadline_after(timeout_s)), anyio.move_on_after(timeout_s) as scope:
            return await self._handle(route, request)
        assert scope.cancelled_caught
        raise DeadlineExceededError("the request's deadline passed before it was answered")

    async def _handle(self, route: Route, request: HttpRequest) -> Response[bytes]:
        requester, verifier = self.requester, self.verifier
        if requester is None or verifier is None:
            raise UnavailableError("edge is starting", retry_after_s=1.0)
        state = request.state
        correlation_id: str = state["correlation_id"]
        client_ip = self.client_ip(request.headers, request.client_host)
        await self._limit("ip", client_ip, self.config.rate_limit_per_ip, state)
        principal: Principal | None = None
        if route.auth:
            principal = await verifier.verify(request.headers.get("authorization"))
            if route.roles and not principal.roles.intersection(route.roles):
                raise EdgeError("forbidden", "token lacks a role this route requires")
            await self._limit("sub", principal.subject, self.config.rate_limit_per_subject, state)
        body = await request.body() if route.has_body else b""
        message = self._build(route, request, body, principal)
        headers = {h: v for h in _TRACE_HEADERS if (v := request.headers.get(h))}
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is None or route.method != "POST":
            return await self._dispatch(route, message, correlation_id, headers)
        scope = f"sub:{principal.subject}" if principal else f"ip:{client_ip}"
        return await self._idempotent(
            route=route,
            message=message,
            correlation_id=correlation_id,
            headers=headers,
            scope=scope,
            key=idempotency_key,
            request=request,
            body=body,
        )

    async def _dispatch(
        self,
        route: Route,
        message: msgspec.Struct,
        correlation_id: str,
        headers: dict[str, str],
    ) -> Response[bytes]:
        assert self.requester is not None
        reply = await self.requester.request(
            route.service,
            message,
            key=route.partition_key(message),
            reply_type=route.reply_type,
            timeout_s=route.timeout_s,
            headers=headers,
            correlation_id=correlation_id,
        )
        return Response(
            content=_json.encode(reply),
            status_code=route.status_code,
            media_type="application/json",
        )

    async def _idempotent(
        self,
        *,
        route: Route,
        message: msgspec.Struct,
        correlation_id: str,
        headers: dict[str, str],
        scope: str,
        key: str,
        request: HttpRequest,
        body: bytes,
    ) -> Response[bytes]:
        store = self.idempotency
        assert store is not None
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise EdgeError("malformed", "Idempotency-Key must be 1-255 visible ASCII characters")
        request_hash = store.request_hash(route.method, request.path, body)
        try:
            claim = await store.claim(scope, key, request_hash)
        except _redis_errors() as exc:
            raise UnavailableError("idempotency store unavailable", retry_after_s=1.0) from exc
        existing = claim.existing
        if existing is not None:
            if existing.hash != request_hash:
                raise EdgeError(
                    "invalid",
                    "Idempotency-Key was already used for a different request",
                    field="Idempotency-Key",
                )
            if not existing.done:
                raise EdgeError("conflict", "a request with this Idempotency-Key is in flight")
            return Response(
                content=existing.body,
                status_code=existing.status,
                media_type=existing.media_type,
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            try:
                response = await self._dispatch(route, message, correlation_id, headers)
            except DomainError as exc:
                # A domain outcome (404, 409, ...) is as much an answer as a success: replay it.
                response = domain_error_response(exc, correlation_id)
            content = response.content
            assert isinstance(content, bytes)
            try:
                # Shielded (the answer exists: record it even if the deadline just passed) but
                # bounded: redis-py's own reconnect-and-retry on a silent Redis took ~10 s, and
                # the client's answer waited for it.
                with anyio.CancelScope(shield=True), anyio.fail_after(_RECORD_TIMEOUT_S):
                    await store.complete(
                        claim,
                        response.status_code or route.status_code,
                        content,
                        "application/json",
                    )
            except _record_errors() as exc:
                # The request itself succeeded (an order may now exist): answering 500 would
                # hide that. The claim stays "in flight" until its TTL, so a retry with the same
                # key meanwhile gets 409 rather than acting twice.
                _log().warning(
                    "idempotency record not stored", key=claim.key, error=str(exc) or repr(exc)
                )
            return response
        except BaseException:
            # Cancelled or crashed before an answer: free the key so the client's retry can run.
            with (
                anyio.CancelScope(shield=True),
                _suppress_redis_errors(),
                anyio.move_on_after(_RECORD_TIMEOUT_S),
            ):
                await store.release(claim)
            raise

    async def _limit(self, scope: str, client: str, limit: int, state: dict[str, Any]) -> None:
        """Count one hit; raise 429 over the limit. Headers report the tightest limit so far."""
        if limit <= 0 or self.limiter is None:
            return
        try:
            result = await self.limiter.hit(scope, client, limit)
        except _redis_errors() as exc:
            if self.config.rate_limit_fail_open:
                _log().warning("rate limit store unavailable; allowing request", error=str(exc))
                return
            raise UnavailableError("rate limit store unavailable", retry_after_s=1.0) from exc
        current: dict[str, str] = state.setdefault("edge_headers", {})
        tighter = int(current.get("RateLimit-Remaining", result.remaining + 1)) > result.remaining
        if tighter or not result.allowed:
            current.update(result.headers())
        if not result.allowed:
            raise EdgeError(
                "rate_limited",
                f"rate limit of {limit} requests per {self.config.rate_window_s}s exceeded",
                headers={"Retry-After": str(result.reset_s)},
            )

    def client_ip(self, headers: Mapping[str, str], peer: str) -> str:
        """The client's address: the first X-Forwarded-For hop if trusted, else the peer's."""
        if self.config.trust_forwarded_for:
            forwarded = headers.get("x-forwarded-for", "")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return peer

    @staticmethod
    def _build(
        route: Route,
        request: HttpRequest,
        body: bytes,
        principal: Principal | None,
    ) -> msgspec.Struct:
        """The request contract from body or query, path parameters and the token subject.

        Raises:
            EdgeError: ``malformed`` (400) for a body that is not JSON, ``invalid`` (422) naming
                the field for one that does not fit the contract.
        """
        fields = route.request_type.__struct_fields__
        data: dict[str, Any]
        if route.has_body:
            try:
                data = _integral_floats_as_ints(_body_decoder.decode(body)) if body.strip() else {}
            except msgspec.ValidationError as exc:
                raise EdgeError("invalid", "body must be a JSON object", field="$") from exc
            except msgspec.DecodeError as exc:
                raise EdgeError("malformed", f"body is not valid JSON: {exc}") from exc
        else:
            data = {k: v for k, v in request.query.items() if k in fields}
        for name in route.path_params:
            data[name] = request.path_params[name]
        if route.subject_field is not None and principal is not None:
            data[route.subject_field] = principal.subject
        data.pop("type", None)  # the route fixes the contract; a client cannot pick another
        try:
            if route.has_body:
                # Strict, as JSON bodies should be: "3" is not an int.
                return msgspec.json.decode(_json.encode(data), type=route.request_type)
            # Query strings are text; let "3" be an int there.
            return msgspec.convert(data, route.request_type, strict=False)
        except msgspec.ValidationError as exc:
            text = str(exc)
            raise EdgeError(
                "invalid", text.split(" - at `", maxsplit=1)[0], field=_field_path(text)
            ) from exc

    # --- probes

    async def ready(self) -> dict[str, bool]:
        """Whether the bus and Redis answer within a short timeout."""
        bus = redis_ok = False
        if self.broker is not None and self.requester is not None:
            with anyio.move_on_after(_READY_TIMEOUT_S):
                try:
                    await self.broker.partition_count(self.requester.reply_topic)
                    bus = True
                # Whatever the broker raises, the answer is the same: not ready.
                except Exception as exc:
                    _log().warning("bus not ready", error=str(exc))
        if self.redis is not None:
            with anyio.move_on_after(_READY_TIMEOUT_S):
                try:
                    redis_ok = bool(await self.redis.ping())
                except _redis_errors() as exc:
                    _log().warning("redis not ready", error=str(exc))
        return {"bus": bus, "redis": redis_ok}


def _redis_errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def _record_errors() -> tuple[type[Exception], ...]:
    return (*_redis_errors(), TimeoutError)


@contextmanager
def _suppress_redis_errors() -> Iterator[None]:
    try:
        yield
    except _redis_errors() as exc:
        _log().warning("idempotency key release failed", error=str(exc))


def _route_handler(route: Route, gateway: Gateway, config: EdgeConfig) -> HTTPRouteHandler:
    async def endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await gateway.handle(route, HttpRequest.from_litestar(request))

    endpoint.__name__ = f"{route.service}_{route.request_type.__name__}"
    return route_decorator(route, config)(endpoint)


def route_decorator(r: Route, config: EdgeConfig) -> HTTPRouteHandler:
    """The Litestar handler decorator for ``r`` (documented by :mod:`edge.openapi`)."""
    return route(
        r.path,
        http_method=[r.method],
        operation_id=r.operation_id,
        summary=r.summary or f"{r.service}: {r.request_type.__name__}",
        tags=[r.service],
        status_code=r.status_code,
        request_max_body_size=config.max_body_bytes,
    )


def create_app(
    settings: Settings,
    broker: Broker | None = None,
    *,
    routes: Sequence[Route] = (),
    config: EdgeConfig | None = None,
    redis: Redis | None = None,
    key_fetcher: KeyFetcher | None = None,
) -> Litestar:
    """The edge gateway as a Litestar app.

    ``broker``: a started broker to use (tests pass a ``MemoryBroker``); None builds one from
    ``settings`` and owns it. ``redis``: a client to use; None connects to ``settings.redis_url``
    (``redis://127.0.0.1:6379/0`` when empty) and owns the client. ``key_fetcher`` replaces asking
    the auth service for signing keys over the bus. Nothing connects until the app's lifespan
    starts (uvicorn does that), so building the app is cheap and side-effect free.
    """
    config = config or EdgeConfig()
    gateway = Gateway(settings, config)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            bus = broker
            if bus is None:
                from runtime.bus.factory import broker_from_settings

                bus = await stack.enter_async_context(broker_from_settings(settings))
            requester = await stack.enter_async_context(Requester(bus, settings))
            client = redis
            if client is None:
                from redis.asyncio import BlockingConnectionPool
                from redis.asyncio import Redis as RedisClient

                # A blocking pool: a burst of concurrent requests waits briefly for a connection
                # instead of failing at once (redis-py's default pool raises "Too many
                # connections" past 100, which turned a load spike into 503s).
                pool = BlockingConnectionPool.from_url(
                    settings.redis_url or "redis://127.0.0.1:6379/0",
                    max_connections=REDIS_POOL_SIZE,
                    timeout=REDIS_POOL_WAIT_S,
                    socket_timeout=REDIS_CONNECT_TIMEOUT_S,
                    socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                )
                client = RedisClient.from_pool(pool)  # closing the client closes the pool
                stack.push_async_callback(client.aclose)
            gateway.bind(bus, requester, client, key_fetcher)
            _log().info("edge started", reply_topic=requester.reply_topic, routes=len(routes))
            yield
            _log().info("edge stopping")

    @get("/health", include_in_schema=False, sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", include_in_schema=False)
    async def ready() -> Response[bytes]:
        checks = await gateway.ready()
        ok = all(checks.values())
        return Response(
            content=_json.encode({"status": "ready" if ok else "unavailable", **checks}),
            status_code=200 if ok else 503,
            media_type="application/json",
            headers={} if ok else {"Retry-After": "1"},
        )

    @get("/metrics", include_in_schema=False, sync_to_thread=False, media_type="text/plain")
    def metrics() -> str:
        return registry.render()

    handlers = [_route_handler(r, gateway, config) for r in routes]
    handlers += file_content_handlers(gateway, config, routes)  # bytes: streamed, not JSON
    app = Litestar(
        route_handlers=[health, ready, metrics, *handlers],
        lifespan=[lifespan],
        middleware=[CorrelationMiddleware()],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Greenroom edge",
            version="0.1.0",
            path="/schema",
            render_plugins=[ContractSchemaPlugin(routes)],
        ),
        logging_config=None,
        debug=False,
    )
    # The bus routes are answered in front of Litestar's machinery (edge.front says why); their
    # Litestar handlers above still document them in OpenAPI.
    app.asgi_handler = BusRouteFront(app.asgi_handler, gateway, routes, config.max_body_bytes)
    return app
