"""The bus routes' front door (edge.front): its matching, and that it answers as Litestar would."""

from __future__ import annotations

import msgspec
import pytest

from edge.config import EdgeConfig
from edge.front import BusRouteFront, compile_path
from edge.routes import Route

from .conftest import EdgeFactory
from .test_app import ROUTES, GetOrder, Order, Pong, services

pytestmark = pytest.mark.redis  # the served tests use the edge's real Redis


class Search(msgspec.Struct, frozen=True, kw_only=True, tag="shop.Search"):
    order_id: str = ""
    user_id: str = ""


async def _never(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not reached")


def front(routes: tuple[Route, ...]) -> BusRouteFront:
    return BusRouteFront(_never, gateway=None, routes=routes, max_body_bytes=1)  # type: ignore[arg-type]


def test_compile_path_types_the_parameters() -> None:
    compiled = compile_path("/orders/{order_id:str}/lines/{n:int}")
    assert compiled is not None
    pattern, types = compiled
    assert types == {"order_id": "str", "n": "int"}
    found = pattern.fullmatch("/orders/o-1/lines/3")
    assert found is not None
    assert found.groupdict() == {"order_id": "o-1", "n": "3"}
    assert pattern.fullmatch("/orders/o-1/lines/x") is None
    assert pattern.fullmatch("/orders/a/b/lines/3") is None, "a str parameter is one segment"
    assert compile_path("/files/{file_id:uuid}") is None, "other types are left to Litestar"


def test_match_prefers_static_paths_and_converts_ints() -> None:
    routes = (
        *ROUTES,
        Route("GET", "/orders/search", service="shop", request_type=Search, reply_type=Order),
    )
    doors = front(routes)
    static = doors.match("GET", "/orders/search")
    assert static is not None
    assert static[0].request_type is Search
    templated = doors.match("GET", "/orders/o-7")
    assert templated is not None
    assert (templated[0].request_type, templated[1]) == (GetOrder, {"order_id": "o-7"})
    ping = doors.match("GET", "/ping/42")
    assert ping is not None
    assert ping[1] == {"n": 42}
    assert doors.match("PUT", "/orders/o-7") is None, "undeclared method: Litestar answers"
    assert doors.match("GET", "/ping/forty-two") is None
    assert doors.match("GET", "/nowhere") is None


async def test_front_and_litestar_answer_alike(edge_factory: EdgeFactory) -> None:
    """A bus route (front) and an undeclared method on it (Litestar) share the error shape."""
    async with edge_factory(ROUTES, services()) as edge:
        ok = await edge.client.get("/ping/7", headers={"X-Correlation-Id": "corr-front"})
        assert ok.status_code == 200
        assert msgspec.json.decode(ok.content, type=Pong) == Pong(n=7)
        assert ok.headers["x-correlation-id"] == "corr-front"
        assert ok.headers["content-type"] == "application/json"
        assert int(ok.headers["content-length"]) == len(ok.content)

        wrong_method = await edge.client.put("/ping/7")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"] == "method_not_allowed"
        assert wrong_method.json()["correlation_id"]

        not_an_int = await edge.client.get("/ping/seven")
        assert not_an_int.status_code in (400, 404)  # Litestar's answer, as before the front
        assert not_an_int.json()["correlation_id"]


async def test_streamed_body_over_the_limit_is_413(edge_factory: EdgeFactory) -> None:
    """Without Content-Length the front counts the bytes as they arrive."""

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b'{"sku": "' + b"x" * 100 + b'",'

    async with edge_factory(ROUTES, services(), config=EdgeConfig(max_body_bytes=512)) as edge:
        response = await edge.client.post("/orders", content=chunks(), headers=edge.bearer())
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"


async def test_query_and_ping_through_the_front(edge_factory: EdgeFactory) -> None:
    async with edge_factory(ROUTES, services()) as edge:
        response = await edge.client.get(
            "/orders/o-9", params={"verbose": "true", "ignored": "x"}, headers=edge.bearer()
        )
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == "o-9"
