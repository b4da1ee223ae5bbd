"""Identity end to end: HTTP -> the real edge (uvicorn) -> Kafka (Tansu) -> auth and users nodes
-> Postgres and Redis, and back.

The edge verifies the access tokens auth mints with the keys it fetches from auth over the bus,
with its default issuer and audience, so this also proves the two agree. Nodes and the edge run
in this process (their own Kafka clients each), with unique schemas, Redis user, key prefix and
topic prefix, all dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from actors.auth.actor import Auth
from actors.users.actor import Users
from adapters.postgres import add_outbox_relay, drop_actor
from adapters.redis import drop_redis_user
from edge.api import ROUTES
from edge.app import create_app
from edge.config import EdgeConfig
from runtime.infra.tansu import TansuServer
from runtime.node import Node
from tests.support.edge_helpers import serve, stack_settings
from tests.support.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

PASSWORD = "plum-Harbour-41-quietly"


@asynccontextmanager
async def deployment(
    tansu: TansuServer, postgres_url: str, redis_url: str, unique: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = stack_settings(
        tansu.bootstrap,
        redis_url,
        f"{unique}.",
        postgres_url=postgres_url,
        request_timeout_s=15.0,
    )
    auth_data, users_data = f"auth_{unique}", f"users_{unique}"
    auth_type = type(
        "E2EAuth", (Auth,), {"data_name": auth_data, "hash_time_cost": 1, "hash_memory_kib": 8_192}
    )
    users_type = type("E2EUsers", (Users,), {"data_name": users_data})
    redis_prefix = f"test:{unique}:"
    try:
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            nodes = [Node(auth_type, settings), Node(users_type, settings)]
            for node in nodes:
                add_outbox_relay(node, poll_interval_s=0.05)
                await tg.start(node.run)
            app = create_app(settings, routes=ROUTES, config=EdgeConfig(redis_prefix=redis_prefix))
            url = await stack.enter_async_context(serve(app))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            try:
                yield client
            finally:
                await stack.aclose()
                for node in nodes:
                    node.drain()
                for node in nodes:
                    await eventually(lambda n=node: n.state == "stopped", within=30)  # type: ignore[misc]
    finally:
        await drop_actor(postgres_url, auth_data)
        await drop_actor(postgres_url, users_data)
        await drop_redis_user(redis_url, users_data)
        from redis.asyncio import Redis

        admin = Redis.from_url(redis_url)
        try:
            keys = [k async for k in admin.scan_iter(match=f"{redis_prefix}*")]
            if keys:
                await admin.delete(*keys)
        finally:
            await admin.aclose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until_ok(send: Any) -> httpx.Response:
    """``await send()`` until it is not a 404 (the profile follows registration by an event)."""
    with anyio.fail_after(30):
        while True:
            response: httpx.Response = await send()
            if response.status_code != 404:
                return response
            await anyio.sleep(0.1)


async def test_register_login_and_my_profile_through_the_edge(
    tansu: TansuServer, postgres_url: str, redis_url: str, unique: str
) -> None:
    email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    async with deployment(tansu, postgres_url, redis_url, unique) as http:
        weak = await http.post("/auth/register", json={"email": email, "password": "short"})
        assert weak.status_code == 422, weak.text
        assert weak.json()["field"] == "password"

        registered = await http.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        user_id = registered.json()["user_id"]
        again = await http.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert again.status_code == 409, again.text

        wrong = await http.post("/auth/login", json={"email": email, "password": "not-it-at-all"})
        assert wrong.status_code == 401, wrong.text
        login = await http.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        pair = login.json()
        assert pair["user_id"] == user_id
        assert "refresh_token" in pair

        missing = await http.get("/users/me")
        assert missing.status_code == 401, missing.text
        forged = await http.get("/users/me", headers=bearer(pair["access_token"][:-4] + "AAAA"))
        assert forged.status_code == 401, forged.text

        me = await until_ok(lambda: http.get("/users/me", headers=bearer(pair["access_token"])))
        assert me.status_code == 200, me.text
        assert me.json()["user_id"] == user_id
        assert me.json()["email"] == email

        # A body naming another user changes nothing: the edge puts the token's subject there.
        patched = await http.patch(
            "/users/me",
            json={"display_name": "Ada L.", "user_id": str(uuid.uuid4())},
            headers=bearer(pair["access_token"]),
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["user_id"] == user_id
        reread = await http.get("/users/me", headers=bearer(pair["access_token"]))
        assert reread.json()["display_name"] == "Ada L."

        refreshed = await http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        reused = await http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert reused.status_code == 401, reused.text

        login2 = (
            await http.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        out = await http.post(
            "/auth/logout",
            json={"refresh_token": login2["refresh_token"]},
            headers=bearer(login2["access_token"]),
        )
        assert out.status_code == 200, out.text
        assert out.json()["revoked"] == 1
        after = await http.post("/auth/refresh", json={"refresh_token": login2["refresh_token"]})
        assert after.status_code == 401, after.text

        keys = msgspec.json.decode((await http.get("/auth/keys")).content)
        assert [k["alg"] for k in keys["keys"]] == ["EdDSA"]
        assert all("d" not in k for k in keys["keys"])
