"""A real edge on 127.0.0.1 (uvicorn in-process) over a MemoryBroker, with in-test responders.

Each test gets its own server, topic prefix and Redis key prefix, so nothing leaks between tests.
Tokens are signed with an Ed25519 key whose public half the in-test auth responder hands out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from actors.auth.contracts import GetSigningKeys, SigningKeys
from edge.app import create_app
from edge.config import EdgeConfig
from edge.routes import Route
from runtime.bus.memory import MemoryBroker
from runtime.config import Settings
from runtime.messages import Envelope
from tests.support.edge_helpers import AUDIENCE, ISSUER, SigningKey, serve
from tests.support.responder import Handler, responder

# One place for the test key and the in-process server: tests/support/edge_helpers.py (the e2e
# suite uses the same ones).
__all__ = ["AUDIENCE", "ISSUER", "Edge", "EdgeFactory", "SigningKey", "serve"]


@dataclass
class Edge:
    """A running edge and the handles a test needs."""

    url: str
    client: httpx.AsyncClient
    broker: MemoryBroker
    settings: Settings
    key: SigningKey
    auth_calls: list[str]
    published: list[SigningKey]
    """The keys the in-test auth service hands out; append to rotate in a new one."""
    redis: Redis

    def bearer(self, token: str | None = None, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.key.token(**claims)}"}


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=6379, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except OSError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no Redis on 127.0.0.1:6379: {exc}")
    yield client
    await client.aclose()


EdgeFactory = Callable[..., Any]


@pytest.fixture
def edge_factory(unique: str, redis_client: Redis) -> EdgeFactory:
    """``async with edge_factory(routes, services, config=...) as edge:`` a running edge.

    ``services`` maps a service name to ``(contract union, handler)``; an auth responder serving
    the test signing key is always added.
    """

    @asynccontextmanager
    async def start(
        routes: Sequence[Route],
        services: dict[str, tuple[Any, Handler]],
        *,
        config: EdgeConfig | None = None,
        request_timeout_s: float = 1.0,
        redis: Redis | None = None,
    ) -> AsyncIterator[Edge]:
        prefix = f"test:{unique}:{uuid.uuid4().hex[:6]}:"
        config = msgspec.structs.replace(
            config or EdgeConfig(),
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
            redis_prefix=prefix,
        )
        settings = Settings(
            broker="memory", topic_prefix=f"t{unique}.", request_timeout_s=request_timeout_s
        )
        key = SigningKey(kid="k1")
        auth_calls: list[str] = []

        published = [key]

        async def auth(request: GetSigningKeys, envelope: Envelope) -> SigningKeys:
            auth_calls.append(request.kid)
            return SigningKeys(keys=tuple(k.public() for k in published), issuer=ISSUER)

        try:
            async with AsyncExitStack() as stack:
                broker = await stack.enter_async_context(MemoryBroker())
                await stack.enter_async_context(
                    responder(broker, settings, "auth", GetSigningKeys, auth)
                )
                for name, (union, handler) in services.items():
                    await stack.enter_async_context(
                        responder(broker, settings, name, union, handler)
                    )
                app = create_app(
                    settings, broker, routes=routes, config=config, redis=redis or redis_client
                )
                url = await stack.enter_async_context(serve(app))
                client = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=10)
                )
                yield Edge(url, client, broker, settings, key, auth_calls, published, redis_client)
        finally:
            keys = [k async for k in redis_client.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis_client.delete(*keys)

    return start
