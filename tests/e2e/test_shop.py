"""The shop end to end: ``greenroom up`` as a real subprocess over the session's Tansu, with real
node processes for auth, users, inventory, orders and payments, the payment-provider stand-in (a
companion process of payments) and the edge (uvicorn on 127.0.0.1) -- driven over HTTP by
:mod:`edge.client` and :mod:`edge.walk`.

Shown: a customer and an admin register and log in, the admin creates and restocks a product, the
customer orders it and sees it confirmed; not enough stock is a 409 and charges nothing; a failing
provider cancels the order and releases its stock.

The services use their real schema names (``inventory``, ``orders``, ...), as ``greenroom up`` runs
them; each test works on products and accounts of its own, so runs do not disturb each other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from actors.orders.contracts import OrderLine
from edge.client import ApiError, ShopClient
from edge.walk import DEFAULT_PASSWORD, walk_shop
from runtime.infra.tansu import TansuServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
ACTORS = "auth,users,inventory,orders,payments"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shop:
    """A running ``greenroom up``; ``url`` is the edge, ``provider`` the provider stand-in."""

    def __init__(self, url: str, provider: str, admin_email: str, log: Path) -> None:
        self.url = url
        self.provider = provider
        self.admin_email = admin_email
        self.log = log


@pytest.fixture(scope="module")
def shop(
    tansu: TansuServer, postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    unique = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("shop")
    edge_port, provider_port = _free_port(), _free_port()
    admin_email = f"admin-{unique}@example.com"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
        "PYTHONPATH": str(ROOT),
        "GREENROOM_KAFKA_BOOTSTRAP": tansu.bootstrap,
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": "5",
        "GREENROOM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "GREENROOM_TOPIC_PREFIX": f"shop{unique}.",
        "GREENROOM_PARTITIONS": "4",
        "GREENROOM_POSTGRES_URL": postgres_url,
        "GREENROOM_REDIS_URL": redis_url,
        "GREENROOM_RUN_DIR": str(tmp / "run"),
        "GREENROOM_EDGE_PORT": str(edge_port),
        "GREENROOM_REQUEST_TIMEOUT_S": "10",
        "GREENROOM_SHUTDOWN_TIMEOUT_S": "5",
        "GREENROOM_LOG_FORMAT": "json",
        "AUTH_ADMIN_EMAILS": admin_email,
        "PAYMENT_PROVIDER_URL": f"http://127.0.0.1:{provider_port}",
    }
    log = tmp / "up.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from runtime.cli import main; sys.exit(main())",
                "up",
                "--actors",
                ACTORS,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{edge_port}"
        _wait_ready(url, process, log)
        yield Shop(url, f"http://127.0.0.1:{provider_port}", admin_email, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the edge is ready and the auth service answers (a real round trip over the bus)."""

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            with anyio.fail_after(120):
                while True:
                    if process.poll() is not None:
                        raise AssertionError(f"greenroom up exited:\n{_tail(log)}")
                    try:
                        keys = await http.get("/auth/keys")
                        listing = await http.get("/products")
                        if keys.status_code == 200 and listing.status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.5)

    anyio.run(probe)


async def _logged_in(shop: Shop, email: str | None = None) -> ShopClient:
    client = ShopClient(shop.url, timeout_s=20)
    email = email or f"c-{uuid.uuid4().hex[:10]}@example.com"
    try:
        await client.register(email, DEFAULT_PASSWORD)
    except ApiError as exc:
        if exc.status != 409:
            raise
    await client.login(email, DEFAULT_PASSWORD)
    return client


async def test_a_customer_orders_and_sees_the_order_confirmed(shop: Shop) -> None:
    result = await walk_shop(shop.url, admin_email=shop.admin_email, settle_timeout_s=60)
    assert result.order.state == "CONFIRMED"
    assert result.order.total_cents == result.product.price_cents
    assert result.order_ids[0] == result.order.order_id
    async with await _logged_in(shop, shop.admin_email) as admin:
        product = await admin.get_product(result.product.product_id)
        assert (product.available, product.reserved, product.sold) == (9, 0, 1)
        seen_by_admin = await admin.get_any_order(result.order.order_id)
        assert seen_by_admin.state == "CONFIRMED"
    async with await _logged_in(shop) as stranger:
        with pytest.raises(ApiError) as raised:
            await stranger.get_order(result.order.order_id)
        assert raised.value.status == 404
        with pytest.raises(ApiError) as forbidden:
            await stranger.create_product("nope", 1)
        assert forbidden.value.status == 403
    print("\nshop walk:", {k: f"{v * 1000:.0f} ms" for k, v in result.timings.items()})


async def test_not_enough_stock_is_409_and_charges_nothing(shop: Shop) -> None:
    async with await _logged_in(shop, shop.admin_email) as admin, await _logged_in(shop) as buyer:
        product = await admin.create_product("Scarce", 500, stock=1)
        async with httpx.AsyncClient(base_url=shop.provider) as provider:
            before = (await provider.get("/v1/stats")).json()
            with pytest.raises(ApiError) as raised:
                await buyer.place_order([OrderLine(product_id=product.product_id, quantity=2)])
            assert (raised.value.status, raised.value.kind) == (409, "conflict")
            assert (await buyer.list_orders()).items == ()
            after = (await provider.get("/v1/stats")).json()
        assert after["captured"] == before["captured"]
        assert (await admin.get_product(product.product_id)).available == 1


async def test_a_failing_provider_cancels_the_order_and_releases_stock(shop: Shop) -> None:
    async with (
        await _logged_in(shop, shop.admin_email) as admin,
        await _logged_in(shop) as buyer,
        httpx.AsyncClient(base_url=shop.provider) as provider,
    ):
        product = await admin.create_product("Unlucky", 700, stock=3)
        await provider.put("/v1/config", json={"failure_rate": 1.0, "latency_ms": 0})
        try:
            placed = await buyer.place_order([OrderLine(product_id=product.product_id, quantity=2)])
            order = await buyer.wait_for_order(placed.order_id, timeout_s=60)
        finally:
            await provider.put("/v1/config", json={"failure_rate": 0.0, "latency_ms": 0})
        assert (order.state, order.reason) == ("CANCELLED", "payments unavailable")
        after = await admin.get_product(product.product_id)
        assert (after.available, after.reserved, after.sold) == (3, 0, 0)


@pytest.mark.slow
async def test_200_concurrent_orders_for_50_units_over_kafka(shop: Shop) -> None:
    """The oversell check through the edge, on Tansu, with real node processes: 10 customers
    place 20 orders each, all at once, for one product with 50 units."""
    customers = 10
    async with await _logged_in(shop, shop.admin_email) as admin:
        buyers = [await _logged_in(shop) for _ in range(customers)]
        product = await admin.create_product("Hot item", 999, stock=50)
        async with httpx.AsyncClient(base_url=shop.provider) as provider:
            captured_before = (await provider.get("/v1/stats")).json()["captured"]
            accepted: list[tuple[ShopClient, str]] = []
            refused: dict[int, int] = {}

            async def order(buyer: ShopClient) -> None:
                try:
                    placed = await buyer.place_order(
                        [OrderLine(product_id=product.product_id, quantity=1)],
                        idempotency_key=uuid.uuid4().hex,
                    )
                except ApiError as exc:
                    refused[exc.status] = refused.get(exc.status, 0) + 1
                    return
                accepted.append((buyer, placed.order_id))

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(order, buyers[i % customers])
            states: dict[str, str] = {}
            with anyio.fail_after(120):
                while len(states) < len(accepted):
                    for buyer in buyers:
                        async for o in buyer.all_orders(page_size=100):
                            if o.state in ("CONFIRMED", "CANCELLED"):
                                states[o.order_id] = o.state
                    await anyio.sleep(1.0)
            captured = (await provider.get("/v1/stats")).json()["captured"] - captured_before
        for buyer in buyers:
            await buyer.aclose()
        after = await admin.get_product(product.product_id)
    confirmed = sum(1 for s in states.values() if s == "CONFIRMED")
    print(
        f"\nover Kafka: 200 orders for 50 units: {len(accepted)} accepted, refused {refused},"
        f" {confirmed} confirmed, {len(states) - confirmed} cancelled, {captured} captured;"
        f" stock available={after.available} reserved={after.reserved} sold={after.sold}"
    )
    assert len(accepted) + sum(refused.values()) == 200
    # 409: lost the race at the quote; 503/504: the edge could not take the order in time (its
    # idempotency store or the deadline) -- refusals a client retries, never half-made orders.
    assert set(refused) <= {409, 503, 504}
    assert confirmed == 50
    assert captured == 50
    assert (after.available, after.reserved, after.sold) == (0, 0, 50)
