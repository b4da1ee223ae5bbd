"""A real edge on 127.0.0.1 (uvicorn in-process) over a MemoryBroker, with in-test responders.

Each test gets its own server, topic prefix and Redis key prefix, so nothing leaks between tests.
Tokens are signed with an Ed25519 key whose public half the in-test auth responder hands out.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import jwt
import msgspec
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from redis.asyncio import Redis

from actors.auth.contracts import GetSigningKeys, PublicKey, SigningKeys
from edge.app import create_app
from edge.config import EdgeConfig
from edge.routes import Route
from runtime.bus.memory import MemoryBroker
from runtime.codec import Codec, encode
from runtime.config import Settings
from runtime.errors import DomainError
from runtime.messages import Envelope

ISSUER = "test-issuer"
AUDIENCE = "test-edge"

Handler = Callable[[Any, Envelope], Awaitable[msgspec.Struct]]


@asynccontextmanager
async def responder(
    broker: MemoryBroker, settings: Settings, service: str, union: Any, handler: Handler
) -> AsyncIterator[None]:
    """Answers ``<service>.commands``: each request handled concurrently, DomainErrors as
    error replies, as the actor runtime's responder does."""
    topic = settings.topic(f"{service}.commands")
    await broker.ensure_topics({topic: 3})
    codec: Codec[Any] = Codec(union)

    async def answer(envelope: Envelope) -> None:
        try:
            reply: msgspec.Struct = await handler(
                codec.decode(envelope.type, envelope.body), envelope
            )
        except DomainError as exc:
            reply = exc.to_reply()
        type_tag, body = encode(reply)
        await broker.publish(
            envelope.reply_to,
            Envelope.new(
                type_tag,
                body,
                key=envelope.key,
                correlation_id=envelope.correlation_id,
                causation_id=envelope.id,
            ),
        )

    async with anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def consume() -> None:
            sub = broker.subscribe([topic], f"{service}-responders")
            await sub.start()
            try:
                ready.set()
                async for delivery in sub:
                    delivery.ack()
                    assert delivery.envelope is not None
                    tg.start_soon(answer, delivery.envelope)
            finally:
                # Leave the group even though we are being cancelled, or connections leak.
                with anyio.move_on_after(10, shield=True):
                    await sub.close()

        tg.start_soon(consume)
        await ready.wait()
        yield
        tg.cancel_scope.cancel()


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", ws="none", http="h11", access_log=False
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            # uvicorn exposes start-up only as a flag.
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("edge failed to start")
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


@dataclass
class SigningKey:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def public(self) -> PublicKey:
        jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        return PublicKey(kid=self.kid, kty=jwk["kty"], crv=jwk["crv"], x=jwk["x"], alg="EdDSA")

    def token(
        self,
        sub: str = "user-1",
        *,
        roles: Sequence[str] = (),
        exp_in: float = 300,
        aud: str = AUDIENCE,
        iss: str = ISSUER,
        kid: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": now + int(exp_in)}
        if roles:
            claims["roles"] = list(roles)
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": kid or self.kid})


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
