"""The commerce services end to end over in-process nodes: inventory, payments and orders on a
MemoryBroker, with real Postgres and Redis and the payment-provider stand-in on 127.0.0.1.

Shown here: an order confirmed end to end; not enough stock is a 409 with no charge; a failing
provider cancels the order and releases its stock; a redelivered charge charges once; and 200
concurrent orders for 50 units confirm exactly 50, charge exactly 50 and never oversell.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from actors.inventory import Inventory
from actors.inventory.contracts import CreateProduct, GetProduct, ListProducts, Product, ProductPage
from actors.inventory.contracts import Restock as RestockCmd
from actors.orders import Orders
from actors.orders.contracts import GetOrder, ListOrders, Order, OrderLine, OrderPage, PlaceOrder
from actors.payments import Payments
from actors.payments.contracts import Charge, Payment, charge_key
from actors.payments.provider import ProviderConfig, create_provider_app
from adapters.postgres import Database, drop_actor
from adapters.redis import drop_redis_user
from runtime.bus.memory import MemoryBroker
from runtime.config import Settings
from runtime.errors import ConflictError
from runtime.node import Node
from runtime.request import Requester
from tests.support.wait import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@asynccontextmanager
async def serve_provider(config: ProviderConfig) -> AsyncIterator[str]:
    """The provider stand-in under uvicorn on a free 127.0.0.1 port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_provider_app(config),
            lifespan="off",
            log_level="warning",
            ws="none",
            http="h11",
            access_log=False,
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes start-up as a flag
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


@dataclass
class Shop:
    requester: Requester
    settings: Settings
    provider: httpx.AsyncClient
    dbs: dict[str, Database]

    async def ask(self, service: str, message: Any, reply_type: Any, key: str = "k") -> Any:
        return await self.requester.request(
            service, message, key=key, reply_type=reply_type, timeout_s=15
        )

    async def product(self, stock: int, price_cents: int = 1250) -> Product:
        return await self.ask(
            "inventory",
            CreateProduct(name="Widget", price_cents=price_cents, stock=stock),
            Product,
        )

    async def place(self, user: str, product_id: str, quantity: int = 1) -> Order:
        return await self.ask(
            "orders",
            PlaceOrder(user_id=user, lines=(OrderLine(product_id=product_id, quantity=quantity),)),
            Order,
            key=user,
        )

    async def settled(self, order_id: str, user: str, within: float = 20) -> Order:
        with anyio.fail_after(within):
            while True:
                order: Order = await self.ask(
                    "orders", GetOrder(order_id=order_id, user_id=user), Order, order_id
                )
                if order.state in ("CONFIRMED", "CANCELLED"):
                    return order
                await anyio.sleep(0.05)

    async def charges(self) -> int:
        return int(
            await self.dbs["payments"].fetchval("SELECT count(*) FROM ledger WHERE kind='charge'")
        )


@asynccontextmanager
async def shop(
    postgres_url: str,
    redis_url: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    provider: ProviderConfig | None = None,
) -> AsyncIterator[Shop]:
    settings = Settings(
        broker="memory",
        topic_prefix=f"{unique}.",
        partitions=4,
        postgres_url=postgres_url,
        redis_url=redis_url,
        shutdown_timeout_s=5.0,
        request_timeout_s=10.0,
    )
    names = {
        "inventory": f"inventory_{unique}",
        "payments": f"payments_{unique}",
        "orders": f"orders_{unique}",
    }
    actors = [
        type("TestInventory", (Inventory,), {"data_name": names["inventory"]})(),
        type("TestPayments", (Payments,), {"data_name": names["payments"]})(),
        type("TestOrders", (Orders,), {"data_name": names["orders"]})(),
    ]
    try:
        async with AsyncExitStack() as stack:
            url = await stack.enter_async_context(serve_provider(provider or ProviderConfig()))
            monkeypatch.setenv("PAYMENT_PROVIDER_URL", url)
            broker = await stack.enter_async_context(MemoryBroker(commit_interval_s=0.02))
            tg = await stack.enter_async_context(anyio.create_task_group())
            nodes = []
            for actor in actors:
                node = Node(actor, settings, broker=broker)
                await tg.start(node.run)
                nodes.append(node)
            requester = await stack.enter_async_context(Requester(broker, settings))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
            dbs = {a.name: a.database for a in actors}  # type: ignore[attr-defined]
            try:
                yield Shop(requester, settings, client, dbs)
            finally:
                for node in nodes:
                    node.drain()
                for node in nodes:
                    await eventually(lambda n=node: n.state == "stopped", within=15)  # type: ignore[misc]
    finally:
        for data_name in names.values():
            await drop_actor(postgres_url, data_name)
        await drop_redis_user(redis_url, names["inventory"])


async def test_an_order_is_confirmed_end_to_end(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(postgres_url, redis_url, unique, monkeypatch) as s:
        product = await s.product(stock=5, price_cents=1250)
        placed = await s.place("alice", product.product_id, 2)
        assert placed.state == "PENDING"
        assert placed.total_cents == 2500
        done = await s.settled(placed.order_id, "alice")
        assert done.state == "CONFIRMED", done.reason
        after: Product = await s.ask(
            "inventory", GetProduct(product_id=product.product_id), Product
        )
        assert (after.available, after.reserved, after.sold) == (3, 0, 2)
        assert await s.charges() == 1
        stats = (await s.provider.get("/v1/stats")).json()
        assert stats["captured"] == 1
        page: OrderPage = await s.ask("orders", ListOrders(user_id="alice"), OrderPage, "alice")
        assert [o.order_id for o in page.items] == [placed.order_id]
        bob_view = s.ask("orders", GetOrder(order_id=placed.order_id, user_id="bob"), Order)
        with pytest.raises(Exception, match="no order"):
            await bob_view
        transitions = await s.dbs["orders"].fetch(
            "SELECT to_state FROM order_transitions WHERE order_id = $1 ORDER BY at",
            placed.order_id,
        )
        assert [r["to_state"] for r in transitions] == [
            "PENDING",
            "RESERVED",
            "CHARGED",
            "CONFIRMED",
        ]


async def test_not_enough_stock_is_a_conflict_and_charges_nothing(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(postgres_url, redis_url, unique, monkeypatch) as s:
        product = await s.product(stock=1)
        with pytest.raises(ConflictError, match="not enough stock"):
            await s.place("alice", product.product_id, 2)
        assert await s.charges() == 0
        assert await s.dbs["orders"].fetchval("SELECT count(*) FROM orders") == 0
        assert (await s.provider.get("/v1/stats")).json()["captured"] == 0


async def test_failing_provider_cancels_the_order_and_releases_its_stock(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(
        postgres_url, redis_url, unique, monkeypatch, ProviderConfig(failure_rate=1.0)
    ) as s:
        product = await s.product(stock=3)
        placed = await s.place("alice", product.product_id, 2)
        done = await s.settled(placed.order_id, "alice")
        assert (done.state, done.reason) == ("CANCELLED", "payments unavailable")
        after: Product = await s.ask(
            "inventory", GetProduct(product_id=product.product_id), Product
        )
        assert (after.available, after.reserved, after.sold) == (3, 0, 0)
        assert await s.charges() == 0


async def test_a_repeated_charge_charges_once(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(postgres_url, redis_url, unique, monkeypatch) as s:
        charge = Charge(
            order_id="o-1", user_id="alice", amount_cents=700, idempotency_key=charge_key("o-1")
        )
        first, second = [await s.ask("payments", charge, Payment, "o-1") for _ in range(2)]
        assert first.status == second.status == "captured"
        assert first.provider_ref == second.provider_ref
        assert await s.charges() == 1
        assert (await s.provider.get("/v1/stats")).json()["captured"] == 1


async def test_listing_is_cached_and_invalidated_by_stock_changes(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(postgres_url, redis_url, unique, monkeypatch) as s:
        product = await s.product(stock=1)
        first: ProductPage = await s.ask("inventory", ListProducts(limit=10), ProductPage)
        assert [p.available for p in first.items] == [1]
        await s.ask("inventory", RestockCmd(product_id=product.product_id, quantity=4), Product)
        second: ProductPage = await s.ask("inventory", ListProducts(limit=10), ProductPage)
        assert [p.available for p in second.items] == [5]


@pytest.mark.slow
async def test_200_concurrent_orders_for_50_units_never_oversell(
    postgres_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with shop(postgres_url, redis_url, unique, monkeypatch) as s:
        product = await s.product(stock=50, price_cents=999)
        accepted: list[tuple[str, str]] = []
        rejected = 0
        started = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal rejected
            user = f"user-{i}"
            try:
                order = await s.place(user, product.product_id, 1)
            except ConflictError:
                rejected += 1
                return
            accepted.append((order.order_id, user))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        outcomes = [await s.settled(o, u, within=60) for o, u in accepted]
        elapsed = time.perf_counter() - started
        confirmed = [o for o in outcomes if o.state == "CONFIRMED"]
        cancelled = [o for o in outcomes if o.state == "CANCELLED"]
        after: Product = await s.ask(
            "inventory", GetProduct(product_id=product.product_id), Product
        )
        charges = await s.charges()
        print(
            f"\n200 orders for 50 units: {len(accepted)} accepted (202), {rejected} rejected (409),"
            f" {len(confirmed)} confirmed, {len(cancelled)} cancelled, {charges} charges,"
            f" stock available={after.available} reserved={after.reserved} sold={after.sold}"
            f" in {elapsed:.1f}s"
        )
        assert len(accepted) + rejected == 200
        assert len(confirmed) == 50
        assert len(cancelled) == len(accepted) - 50
        assert (after.available, after.reserved, after.sold) == (0, 0, 50)
        assert charges == 50
        assert await s.dbs["inventory"].fetchval("SELECT min(available) FROM products") >= 0
        assert (await s.provider.get("/v1/stats")).json()["captured"] == 50
