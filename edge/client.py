"""A small Python client of the shop's HTTP API, thin over :class:`httpx.AsyncClient`.

Each method is one HTTP call; replies decode into the services' own contracts (the types the
edge serialises), errors raise :class:`ApiError` carrying the status and the edge's error body::

    async with ShopClient("http://127.0.0.1:8000") as shop:
        await shop.register("ann@example.com", "a long passphrase")
        await shop.login("ann@example.com", "a long passphrase")  # keeps the access token
        page = await shop.list_products()
        order = await shop.place_order([OrderLine(product_id=page.items[0].product_id,
                                                  quantity=1)])
        order = await shop.wait_for_order(order.order_id)

The client keeps the last token pair from :meth:`login`/:meth:`refresh` and sends its access token
on every call. POSTs that create something take an ``idempotency_key``, sent as the
``Idempotency-Key`` header, so a retry after a lost answer cannot create twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar, final

import anyio
import httpx
import msgspec

from actors.auth.contracts import LoggedOut, Registered, RoleGranted, TokenPair
from actors.files.contracts import FileDeleted, FileInfo, FileLink, UploadTicket
from actors.inventory.contracts import Product, ProductPage
from actors.orders.contracts import Order, OrderLine, OrderPage
from actors.users.contracts import Profile

__all__ = ["ApiError", "ShopClient"]

T = TypeVar("T")

FINAL_ORDER_STATES: Final = frozenset({"CONFIRMED", "CANCELLED"})
_json: Final = msgspec.json.Encoder()


class ApiError(Exception):
    """A non-2xx answer: ``status``, the edge's ``kind`` (``conflict``, ``not_found``, ...),
    ``message``, ``field`` and ``correlation_id`` (quote it when reporting a 500)."""

    def __init__(self, status: int, body: dict[str, Any], headers: httpx.Headers) -> None:
        self.status = status
        self.kind = str(body.get("error", ""))
        self.message = str(body.get("message", ""))
        self.field = str(body.get("field", ""))
        self.correlation_id = str(body.get("correlation_id", ""))
        self.retry_after = headers.get("retry-after")
        super().__init__(f"{status} {self.kind}: {self.message or self.correlation_id}")


@final
class ShopClient:
    """The shop API over HTTP (module docstring). Use as an async context manager, or pass an
    ``httpx.AsyncClient`` you own as ``http``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        access_token: str | None = None,
    ) -> None:
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self.access_token = access_token
        self.tokens: TokenPair | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own:
            await self.http.aclose()

    # --- plumbing -------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        reply_type: type[T],
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        """One request; the 2xx body decoded as ``reply_type``.

        Raises:
            ApiError: the edge answered with a non-2xx status.
            httpx.HTTPError: the edge could not be reached.
        """
        headers = {}
        if self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        content = None if json is None else _json.encode(json)
        if content is not None:
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method, path, content=content, params=params, headers=headers
        )
        if not response.is_success:
            raise ApiError(response.status_code, _safe_json(response), response.headers)
        return msgspec.json.decode(response.content, type=reply_type)

    # --- auth and users -------------------------------------------------------------------------

    async def register(self, email: str, password: str) -> Registered:
        """``POST /auth/register``: create an account (not logged in yet)."""
        return await self.call(
            "POST", "/auth/register", Registered, json={"email": email, "password": password}
        )

    async def login(self, email: str, password: str) -> TokenPair:
        """``POST /auth/login``: get a token pair and use its access token from now on."""
        pair = await self.call(
            "POST", "/auth/login", TokenPair, json={"email": email, "password": password}
        )
        return self._use(pair)

    async def refresh(self) -> TokenPair:
        """``POST /auth/refresh``: rotate the kept refresh token into a new pair.

        Raises:
            RuntimeError: not logged in.
        """
        if self.tokens is None:
            raise RuntimeError("log in first")
        pair = await self.call(
            "POST", "/auth/refresh", TokenPair, json={"refresh_token": self.tokens.refresh_token}
        )
        return self._use(pair)

    async def logout(self, *, all_sessions: bool = False) -> LoggedOut:
        """``POST /auth/logout``: revoke this session (or all of them) and forget the tokens."""
        refresh = self.tokens.refresh_token if self.tokens else ""
        out = await self.call(
            "POST",
            "/auth/logout",
            LoggedOut,
            json={"refresh_token": refresh, "all_sessions": all_sessions},
        )
        self.tokens, self.access_token = None, None
        return out

    async def grant_role(self, email: str, role: str) -> RoleGranted:
        """``POST /auth/roles`` (admin): give ``email`` a role, effective at its next login."""
        return await self.call(
            "POST", "/auth/roles", RoleGranted, json={"email": email, "role": role}
        )

    async def me(self) -> Profile:
        """``GET /users/me``: the caller's profile."""
        return await self.call("GET", "/users/me", Profile)

    async def update_me(self, **changes: Any) -> Profile:
        """``PATCH /users/me``: change profile fields (``display_name=...``, ...)."""
        return await self.call("PATCH", "/users/me", Profile, json=changes)

    def _use(self, pair: TokenPair) -> TokenPair:
        self.tokens, self.access_token = pair, pair.access_token
        return pair

    # --- products -------------------------------------------------------------------------------

    async def create_product(
        self,
        name: str,
        price_cents: int,
        *,
        stock: int = 0,
        description: str = "",
        idempotency_key: str | None = None,
    ) -> Product:
        """``POST /products`` (admin)."""
        body = {"name": name, "price_cents": price_cents, "stock": stock}
        if description:
            body["description"] = description
        return await self.call(
            "POST", "/products", Product, json=body, idempotency_key=idempotency_key
        )

    async def restock(
        self, product_id: str, quantity: int, *, idempotency_key: str | None = None
    ) -> Product:
        """``POST /products/{id}/restock`` (admin)."""
        return await self.call(
            "POST",
            f"/products/{product_id}/restock",
            Product,
            json={"quantity": quantity},
            idempotency_key=idempotency_key,
        )

    async def get_product(self, product_id: str) -> Product:
        """``GET /products/{id}``."""
        return await self.call("GET", f"/products/{product_id}", Product)

    async def list_products(self, *, limit: int = 20, cursor: str = "") -> ProductPage:
        """``GET /products``: one page; pass the page's ``next_cursor`` for the next."""
        return await self.call("GET", "/products", ProductPage, params=_page(limit, cursor))

    # --- orders ---------------------------------------------------------------------------------

    async def place_order(
        self, lines: Sequence[OrderLine], *, idempotency_key: str | None = None
    ) -> Order:
        """``POST /orders``: the order as accepted (``PENDING``; 202). 409 if stock is short now."""
        return await self.call(
            "POST",
            "/orders",
            Order,
            json={"lines": [msgspec.structs.asdict(line) for line in lines]},
            idempotency_key=idempotency_key,
        )

    async def get_order(self, order_id: str) -> Order:
        """``GET /orders/{id}``: one of the caller's orders."""
        return await self.call("GET", f"/orders/{order_id}", Order)

    async def get_any_order(self, order_id: str) -> Order:
        """``GET /admin/orders/{id}`` (admin): any order."""
        return await self.call("GET", f"/admin/orders/{order_id}", Order)

    async def list_orders(self, *, limit: int = 20, cursor: str = "") -> OrderPage:
        """``GET /orders``: the caller's orders, newest first."""
        return await self.call("GET", "/orders", OrderPage, params=_page(limit, cursor))

    async def all_orders(self, *, page_size: int = 50) -> AsyncIterator[Order]:
        """Every order of the caller, page after page."""
        cursor = ""
        while True:
            page = await self.list_orders(limit=page_size, cursor=cursor)
            for order in page.items:
                yield order
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def wait_for_order(
        self, order_id: str, *, timeout_s: float = 30.0, interval_s: float = 0.1
    ) -> Order:
        """Poll ``GET /orders/{id}`` until the order is CONFIRMED or CANCELLED.

        Raises:
            TimeoutError: still in flight after ``timeout_s``.
        """
        with anyio.fail_after(timeout_s):
            while True:
                order = await self.get_order(order_id)
                if order.state in FINAL_ORDER_STATES:
                    return order
                await anyio.sleep(interval_s)

    # --- files ----------------------------------------------------------------------------------

    async def create_upload(self, name: str, content_type: str, size: int) -> UploadTicket:
        """``POST /files``: declare a file; the ticket says where its bytes go."""
        return await self.call(
            "POST",
            "/files",
            UploadTicket,
            json={"name": name, "content_type": content_type, "size": size},
        )

    async def upload(self, name: str, content_type: str, data: bytes) -> FileInfo:
        """Declare a file and ``PUT`` its bytes through the edge; the ready file's metadata."""
        ticket = await self.create_upload(name, content_type, len(data))
        headers = {"Content-Type": content_type}
        if self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        response = await self.http.put(ticket.upload_path, content=data, headers=headers)
        if not response.is_success:
            raise ApiError(response.status_code, _safe_json(response), response.headers)
        return msgspec.json.decode(response.content, type=FileInfo)

    async def get_file(self, file_id: str) -> FileInfo:
        """``GET /files/{id}``: one of the caller's files' metadata."""
        return await self.call("GET", f"/files/{file_id}", FileInfo)

    async def download(self, file_id: str) -> bytes:
        """``GET /files/{id}/content``: the file's bytes, through the edge."""
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        response = await self.http.get(f"/files/{file_id}/content", headers=headers)
        if not response.is_success:
            raise ApiError(response.status_code, _safe_json(response), response.headers)
        return response.content

    async def file_link(self, file_id: str) -> FileLink:
        """``GET /files/{id}/link``: a short-lived presigned download URL."""
        return await self.call("GET", f"/files/{file_id}/link", FileLink)

    async def delete_file(self, file_id: str) -> FileDeleted:
        """``DELETE /files/{id}``."""
        return await self.call("DELETE", f"/files/{file_id}", FileDeleted)


def _page(limit: int, cursor: str) -> dict[str, Any]:
    return {"limit": limit, **({"cursor": cursor} if cursor else {})}


def _safe_json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": "http", "message": response.text[:200]}
    return body if isinstance(body, dict) else {}
