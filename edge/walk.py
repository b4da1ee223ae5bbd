"""A scripted walk through the whole shop over HTTP, used by tests and benchmarks.

:func:`walk_shop` does what a first customer and a shop admin would: both register and log in, the
admin creates a product and restocks it, the customer browses, orders, polls until the order is
settled, and reads their order list. It returns what it saw and how long each step took, and
raises :class:`WalkError` naming the step that went wrong.

The admin must be able to become one: register them with an email the auth service makes an admin
(``AUTH_ADMIN_EMAILS``), or pass ``admin_token`` (a test may mint one). Registering an email that
already exists is not an error (the walk can be run again against the same deployment)::

    python -m edge.walk --url http://127.0.0.1:8000 --admin-email admin@example.com
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import httpx

from actors.inventory.contracts import Product
from actors.orders.contracts import Order, OrderLine
from edge.client import ApiError, ShopClient

__all__ = ["WalkError", "WalkResult", "main", "walk_shop"]

T = TypeVar("T")

DEFAULT_PASSWORD = "correct horse battery staple 42"  # noqa: S105 - a demo account's password


class WalkError(RuntimeError):
    """A step of the walk failed; ``step`` names it, the cause is chained."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"shop walk failed at {step!r}: {cause}")
        self.step = step


@dataclass
class WalkResult:
    """What the walk did: the product, the settled order, the customer's order ids, and seconds
    per step (in order)."""

    customer_email: str
    product: Product
    order: Order
    order_ids: list[str]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Steps:
    timings: dict[str, float] = field(default_factory=dict)

    async def run(self, step: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except Exception as exc:
            raise WalkError(step, exc) from exc
        finally:
            self.timings[step] = time.perf_counter() - started


async def _register(client: ShopClient, email: str, password: str) -> None:
    try:
        await client.register(email, password)
    except ApiError as exc:
        if exc.status != 409:  # already registered: this walk ran before
            raise


@asynccontextmanager
async def _clients(
    base_url: str, http: httpx.AsyncClient | None
) -> AsyncIterator[tuple[ShopClient, ShopClient]]:
    async with (
        ShopClient(base_url, http=http) as customer,
        ShopClient(base_url, http=http) as admin,
    ):
        yield customer, admin


async def walk_shop(
    base_url: str = "http://127.0.0.1:8000",
    *,
    admin_email: str = "admin@example.com",
    admin_password: str = DEFAULT_PASSWORD,
    admin_token: str | None = None,
    customer_email: str | None = None,
    customer_token: str | None = None,
    quantity: int = 1,
    stock: int = 5,
    restock: int = 5,
    price_cents: int = 1999,
    settle_timeout_s: float = 30.0,
    http: httpx.AsyncClient | None = None,
) -> WalkResult:
    """Walk through the shop once (module docstring); the order is expected to be CONFIRMED.

    ``http`` lets a caller share one connection pool (its base URL must be ``base_url``).
    ``admin_token``/``customer_token`` skip registering and logging in that party.

    Raises:
        WalkError: a step failed, or the order did not end CONFIRMED.
    """
    customer_email = customer_email or f"walker-{uuid.uuid4().hex[:10]}@example.com"
    steps = _Steps()
    async with _clients(base_url, http) as (customer, admin):
        if customer_token:
            customer.access_token = customer_token
        else:
            await steps.run(
                "register customer", _register(customer, customer_email, DEFAULT_PASSWORD)
            )
            await steps.run("login customer", customer.login(customer_email, DEFAULT_PASSWORD))
        if admin_token:
            admin.access_token = admin_token
        else:
            await steps.run("register admin", _register(admin, admin_email, admin_password))
            await steps.run("login admin", admin.login(admin_email, admin_password))
        product = await steps.run(
            "create product",
            admin.create_product(f"Walk widget {uuid.uuid4().hex[:6]}", price_cents, stock=stock),
        )
        if restock:
            product = await steps.run("restock", admin.restock(product.product_id, restock))
        await steps.run("browse products", customer.list_products(limit=20))
        await steps.run("read product", customer.get_product(product.product_id))
        placed = await steps.run(
            "place order",
            customer.place_order(
                [OrderLine(product_id=product.product_id, quantity=quantity)],
                idempotency_key=uuid.uuid4().hex,
            ),
        )
        order = await steps.run(
            "wait for order", customer.wait_for_order(placed.order_id, timeout_s=settle_timeout_s)
        )
        if order.state != "CONFIRMED":
            raise WalkError("wait for order", RuntimeError(f"order {order.state}: {order.reason}"))
        page = await steps.run("list my orders", customer.list_orders(limit=20))
        return WalkResult(
            customer_email=customer_email,
            product=product,
            order=order,
            order_ids=[o.order_id for o in page.items],
            timings=steps.timings,
        )


def main(argv: list[str] | None = None) -> int:
    """Walk once against ``--url`` and print each step's time; exit 1 if the walk failed."""
    parser = argparse.ArgumentParser(prog="python -m edge.walk", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the edge's base URL")
    parser.add_argument(
        "--admin-email",
        default="admin@example.com",
        help="an email listed in the auth service's AUTH_ADMIN_EMAILS",
    )
    parser.add_argument("--admin-password", default=DEFAULT_PASSWORD)
    args = parser.parse_args(argv)
    try:
        result = anyio.run(
            lambda: walk_shop(
                args.url, admin_email=args.admin_email, admin_password=args.admin_password
            )
        )
    except WalkError as exc:
        print(exc)
        if "forbidden" in str(exc):
            # The common first-run miss: the admin account is only made an admin by auth when
            # its email is listed for it.
            print(
                f"hint: start the system with AUTH_ADMIN_EMAILS={args.admin_email} so that"
                " this account is registered as an admin"
            )
        return 1
    for step, seconds in result.timings.items():
        print(f"{step:<20} {seconds * 1000:8.1f} ms")
    print(f"order {result.order.order_id} {result.order.state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
