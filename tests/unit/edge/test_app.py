"""The edge over real HTTP: pipeline, error mapping, tokens, rate limits, idempotency, OpenAPI."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
import jwt
import msgspec
import pytest
from redis.asyncio import Redis

from edge.config import EdgeConfig
from edge.routes import Route
from runtime.errors import ConflictError, InternalError, NotFoundError, UnavailableError
from runtime.messages import Envelope
from runtime.testing.fault_proxy import FaultProxy

from .conftest import AUDIENCE, ISSUER, EdgeFactory, SigningKey

pytestmark = pytest.mark.redis


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True, tag="shop.PlaceOrder"):
    user_id: str
    sku: str
    quantity: Annotated[int, msgspec.Meta(gt=0)]


class GetOrder(msgspec.Struct, frozen=True, kw_only=True, tag="shop.GetOrder"):
    order_id: str
    user_id: str
    verbose: bool = False


class Order(msgspec.Struct, frozen=True, kw_only=True, tag="shop.Order"):
    order_id: str
    user_id: str
    sku: str = ""
    quantity: int = 0
    serial: int = 0


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="shop.Ping"):
    n: int


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag="shop.Pong"):
    n: int


ROUTES = (
    Route(
        "POST",
        "/orders",
        service="shop",
        request_type=PlaceOrder,
        reply_type=Order,
        subject_field="user_id",
        status_code=201,
    ),
    Route(
        "GET",
        "/orders/{order_id:str}",
        service="shop",
        request_type=GetOrder,
        reply_type=Order,
        subject_field="user_id",
    ),
    Route(
        "DELETE",
        "/orders/{order_id:str}",
        service="shop",
        request_type=GetOrder,
        reply_type=Order,
        subject_field="user_id",
        roles=("admin",),
    ),
    Route(
        "GET",
        "/ping/{n:int}",
        service="shop",
        request_type=Ping,
        reply_type=Pong,
        auth=False,
    ),
)


class Shop:
    """The in-test responder: behaviour chosen by the SKU or order id it is sent."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, message: Any, envelope: Envelope) -> msgspec.Struct:
        self.calls += 1
        if isinstance(message, Ping):
            return Pong(n=message.n)
        target = message.sku if isinstance(message, PlaceOrder) else message.order_id
        match target:
            case "missing":
                raise NotFoundError("no such thing")
            case "taken":
                raise ConflictError("out of stock", field="$.sku")
            case "down":
                raise UnavailableError("payments circuit open", retry_after_s=7)
            case "boom":
                raise InternalError("Traceback (most recent call last): secret details")
            case "slow":
                await anyio.sleep(3)
        if isinstance(message, PlaceOrder):
            return Order(
                order_id=f"o-{self.calls}",
                user_id=message.user_id,
                sku=message.sku,
                quantity=message.quantity,
                serial=self.calls,
            )
        return Order(order_id=message.order_id, user_id=message.user_id, serial=self.calls)


def services(shop: Shop | None = None) -> dict[str, tuple[Any, Any]]:
    return {"shop": (PlaceOrder | GetOrder | Ping, shop or Shop())}


# --- success and input errors


async def test_post_builds_the_contract_from_body_and_token(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.post(
            "/orders",
            json={"sku": "apple", "quantity": 2, "user_id": "someone-else"},
            headers={**edge.bearer(sub="alice"), "X-Correlation-Id": "corr-123"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        # The token's subject wins over a user_id the client slipped into the body.
        assert body["user_id"] == "alice"
        assert (body["sku"], body["quantity"], body["type"]) == ("apple", 2, "shop.Order")
        assert response.headers["x-correlation-id"] == "corr-123"
        assert int(response.headers["ratelimit-remaining"]) >= 0


async def test_get_uses_path_and_query_parameters(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get("/orders/o-9?verbose=true", headers=edge.bearer())
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == "o-9"
        public = await edge.client.get("/ping/41")
        assert public.status_code == 200, public.text
        assert public.json()["n"] == 41
        # A fresh correlation id when the client sent none (or an unusable one).
        assert len(public.headers["x-correlation-id"]) == 32
        odd = await edge.client.get("/ping/1", headers={"X-Correlation-Id": "bad id\x7f"})
        assert odd.headers["x-correlation-id"] != "bad id\x7f"


async def test_malformed_json_is_400(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.post(
            "/orders", content=b'{"sku": "apple", "quantity": ', headers=edge.bearer()
        )
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "malformed"
        assert body["correlation_id"] == response.headers["x-correlation-id"]


async def test_an_integral_float_is_an_integer(edge_factory: EdgeFactory) -> None:
    """OpenAPI's ``integer`` admits ``2.0`` (JSON Schema counts it an integer): so does the edge."""
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.post(
            "/orders", json={"sku": "apple", "quantity": 2.0}, headers=edge.bearer()
        )
        assert response.status_code == 201, response.text
        assert response.json()["quantity"] == 2


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"sku": "apple", "quantity": "two"}, "$.quantity"),
        ({"sku": "apple", "quantity": 0}, "$.quantity"),
        ({"sku": "apple", "quantity": 2.5}, "$.quantity"),
        ({"sku": "apple"}, "$.quantity"),
        ([1, 2], "$"),
    ],
)
async def test_invalid_field_is_422_naming_it(
    edge_factory: EdgeFactory, payload: Any, field: str
) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.post("/orders", json=payload, headers=edge.bearer())
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "invalid"
        assert body["field"] == field
        assert body["message"]
        assert body["correlation_id"]


async def test_body_over_the_limit_is_413(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services(), config=EdgeConfig(max_body_bytes=512)) as edge:
        big = {"sku": "x" * 2000, "quantity": 1}
        response = await edge.client.post("/orders", json=big, headers=edge.bearer())
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"


# --- tokens


async def test_missing_token_is_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get("/orders/o-1")
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_expired_token_is_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        token = edge.key.token(exp_in=-120)  # beyond the 30 s leeway
        response = await edge.client.get("/orders/o-1", headers=edge.bearer(token))
        assert response.status_code == 401
        assert "expired" in response.json()["message"]


async def test_alg_none_is_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        now = int(time.time())
        claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
        token = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
        response = await edge.client.get("/orders/o-1", headers=edge.bearer(token))
        assert response.status_code == 401
        assert "algorithm" in response.json()["message"]


async def test_hs256_with_the_public_key_as_secret_is_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        now = int(time.time())
        claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
        secret = edge.key.public().x.encode() * 2
        token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "k1"})
        response = await edge.client.get("/orders/o-1", headers=edge.bearer(token))
        assert response.status_code == 401


async def test_wrong_audience_and_issuer_are_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        wrong_aud = await edge.client.get(
            "/orders/o-1", headers=edge.bearer(edge.key.token(aud="another-api"))
        )
        assert wrong_aud.status_code == 401
        assert "audience" in wrong_aud.json()["message"]
        wrong_iss = await edge.client.get(
            "/orders/o-1", headers=edge.bearer(edge.key.token(iss="evil"))
        )
        assert wrong_iss.status_code == 401


async def test_unknown_kid_refreshes_once_then_401(edge_factory: EdgeFactory) -> None:
    config = EdgeConfig(key_refresh_min_interval_s=0.3)
    async with edge_factory(ROUTES, services(), config=config) as edge:
        ok = await edge.client.get("/orders/o-1", headers=edge.bearer())
        assert ok.status_code == 200
        assert len(edge.auth_calls) == 1
        await anyio.sleep(0.35)
        stranger = SigningKey(kid="k-unknown")
        for _ in range(5):
            response = await edge.client.get("/orders/o-1", headers=edge.bearer(stranger.token()))
            assert response.status_code == 401
            assert "unknown key" in response.json()["message"]
        # One refresh for the unknown kid; the flood after it waits out the refresh interval.
        assert len(edge.auth_calls) == 2


async def test_rotated_key_is_picked_up_on_first_use(edge_factory: EdgeFactory) -> None:
    config = EdgeConfig(key_refresh_min_interval_s=0.1)
    async with edge_factory(ROUTES, services(), config=config) as edge:
        assert (await edge.client.get("/orders/o-1", headers=edge.bearer())).status_code == 200
        await anyio.sleep(0.15)
        rotated = SigningKey(kid="k2")
        edge.published.append(rotated)
        response = await edge.client.get("/orders/o-1", headers=edge.bearer(rotated.token()))
        assert response.status_code == 200, response.text
        assert len(edge.auth_calls) == 2


async def test_right_kid_wrong_key_is_401(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        impostor = SigningKey(kid="k1")  # claims the real kid, signs with another key
        response = await edge.client.get("/orders/o-1", headers=edge.bearer(impostor.token()))
        assert response.status_code == 401


async def test_missing_role_is_403(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        denied = await edge.client.delete("/orders/o-1", headers=edge.bearer())
        assert denied.status_code == 403
        allowed = await edge.client.delete("/orders/o-1", headers=edge.bearer(roles=["admin"]))
        assert allowed.status_code == 200


# --- error replies and deadlines


async def test_domain_errors_map_to_http(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        auth = edge.bearer()
        missing = await edge.client.get("/orders/missing", headers=auth)
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        taken = await edge.client.post(
            "/orders", json={"sku": "taken", "quantity": 1}, headers=auth
        )
        assert taken.status_code == 409
        assert taken.json()["field"] == "$.sku"
        down = await edge.client.get("/orders/down", headers=auth)
        assert down.status_code == 503
        assert down.headers["retry-after"] == "7"


async def test_internal_error_carries_only_the_correlation_id(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get("/orders/boom", headers=edge.bearer())
        assert response.status_code == 500
        body = response.json()
        assert body == {"error": "internal", "correlation_id": response.headers["x-correlation-id"]}
        assert "Traceback" not in response.text


async def test_slow_service_is_504(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services(), request_timeout_s=0.5) as edge:
        started = time.monotonic()
        response = await edge.client.get("/orders/slow", headers=edge.bearer())
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.json()["error"] == "deadline"
    print(f"504 after {elapsed:.3f}s for a 0.5s deadline")


async def test_unknown_route_is_404_json(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get("/nowhere")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


# --- rate limits


async def test_rate_limit_per_ip_is_429_with_headers(edge_factory: EdgeFactory) -> None:
    config = EdgeConfig(rate_limit_per_ip=3, rate_window_s=30)
    async with edge_factory(ROUTES, services(), config=config) as edge:
        remaining = []
        for _ in range(3):
            response = await edge.client.get("/ping/1")
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "3"
            remaining.append(int(response.headers["ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        limited = await edge.client.get("/ping/1")
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert limited.headers["ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["ratelimit-reset"]) <= 30
        assert 1 <= int(limited.headers["retry-after"]) <= 30


async def test_rate_limit_per_subject(edge_factory: EdgeFactory) -> None:
    config = EdgeConfig(rate_limit_per_subject=2, rate_window_s=30)
    async with edge_factory(ROUTES, services(), config=config) as edge:
        for _ in range(2):
            assert (await edge.client.get("/orders/o", headers=edge.bearer(sub="a"))).is_success
        limited = await edge.client.get("/orders/o", headers=edge.bearer(sub="a"))
        assert limited.status_code == 429
        other = await edge.client.get("/orders/o", headers=edge.bearer(sub="b"))
        assert other.status_code == 200


# --- idempotency


async def test_idempotency_key_replays_the_first_response(edge_factory: EdgeFactory) -> None:
    shop = Shop()
    async with edge_factory(ROUTES, services(shop)) as edge:
        headers = {**edge.bearer(), "Idempotency-Key": "order-attempt-1"}
        payload = {"sku": "apple", "quantity": 1}
        first = await edge.client.post("/orders", json=payload, headers=headers)
        again = await edge.client.post("/orders", json=payload, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert shop.calls == 1
        different = await edge.client.post(
            "/orders", json={"sku": "pear", "quantity": 1}, headers=headers
        )
        assert different.status_code == 422
        assert different.json()["field"] == "Idempotency-Key"
        # Another user's key space is separate.
        other = await edge.client.post(
            "/orders",
            json=payload,
            headers={**edge.bearer(sub="bob"), "Idempotency-Key": "order-attempt-1"},
        )
        assert other.status_code == 201
        assert shop.calls == 2


async def test_a_success_is_answered_even_if_its_idempotency_record_is_lost(
    edge_factory: EdgeFactory,
) -> None:
    """Redis goes silent between the claim and storing the answer: the order was placed, so the
    client gets its 201 (a 500 would hide an effect that happened) and the edge logs the loss."""
    async with FaultProxy("127.0.0.1", 6379) as proxy:
        proxied = Redis(
            host=proxy.host, port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        placed: list[PlaceOrder] = []

        async def place(message: Any, envelope: Envelope) -> msgspec.Struct:
            placed.append(message)
            proxy.blackhole()  # after the claim, before the edge records the reply
            return Order(order_id="o-1", user_id=message.user_id, sku=message.sku)

        try:
            async with edge_factory(ROUTES, {"shop": (PlaceOrder, place)}, redis=proxied) as edge:
                response = await edge.client.post(
                    "/orders",
                    json={"sku": "apple", "quantity": 1},
                    headers={**edge.bearer(), "Idempotency-Key": "lost-record"},
                )
        finally:
            await proxied.aclose()
    assert response.status_code == 201, response.text
    assert response.json()["order_id"] == "o-1"
    assert len(placed) == 1


async def test_the_deadline_starts_when_the_request_arrives(edge_factory: EdgeFactory) -> None:
    """Time spent before the bus round trip (here: rate-limit checks against a Redis slowed by
    the fault proxy, at least 0.6 s per round trip) counts against the request's deadline, so
    the answer is 504 rather than a success delivered long after the deadline."""
    async with FaultProxy("127.0.0.1", 6379) as proxy:
        proxied = Redis(
            host=proxy.host, port=proxy.port, socket_timeout=5, socket_connect_timeout=5
        )
        proxy.latency(0.3)  # per chunk and direction: two limit checks take >= 1.2 s
        try:
            async with edge_factory(
                ROUTES, services(), request_timeout_s=1.0, redis=proxied
            ) as edge:
                response = await edge.client.get("/orders/o-1", headers=edge.bearer())
        finally:
            proxy.heal()
            await proxied.aclose()
    assert response.status_code == 504, response.text


async def test_concurrent_duplicate_is_409(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services(), request_timeout_s=1.0) as edge:
        headers = {**edge.bearer(), "Idempotency-Key": "dup"}
        payload = {"sku": "slow", "quantity": 1}
        statuses: list[int] = []

        async def post() -> None:
            response = await edge.client.post("/orders", json=payload, headers=headers)
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            await anyio.sleep(0.2)
            tg.start_soon(post)
        # The first times out (504, which releases the key); the duplicate saw it in flight.
        assert sorted(statuses) == [409, 504]


# --- probes and schema


async def test_health_ready_and_metrics(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        health = await edge.client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = await edge.client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "bus": True, "redis": True}
        metrics = await edge.client.get("/metrics")
        assert "greenroom_edge_requests_total" in metrics.text


async def test_ready_is_503_when_the_bus_is_down(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        await edge.broker.stop()
        ready = await edge.client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["bus"] is False
        assert ready.headers["retry-after"]
        await edge.broker.start()


async def test_schema_is_openapi_from_the_contracts(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get("/schema")
        assert response.status_code == 200
        doc = response.json()
        assert doc["openapi"].startswith("3.1")
        validator = pytest.importorskip("openapi_spec_validator")
        validator.validate(doc)
        post = doc["paths"]["/orders"]["post"]
        body_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
        # user_id comes from the token, the tag from the route: neither is asked of the client.
        assert set(body["properties"]) == {"sku", "quantity"}
        assert body["properties"]["quantity"]["exclusiveMinimum"] == 0
        created = post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
        assert created.endswith("/Order")
        assert {"401", "409", "422", "429", "503", "504"} <= set(post["responses"])
        assert post["security"] == [{"bearerAuth": []}]
        get_order = doc["paths"]["/orders/{order_id}"]["get"]
        names = {(p["name"], p["in"]) for p in get_order["parameters"]}
        assert {("order_id", "path"), ("verbose", "query")} <= names
        assert ("user_id", "query") not in names
        assert (await edge.client.get("/schema/openapi.json")).json() == doc
