"""S3, Redis leg: the shop's cache Redis slowed, then cut, through the fault proxy; then healed.

``greenroom up`` runs auth, inventory and users (tests/chaos/shop_actors.py, with their product
policies: inventory's product listing and users' profiles are cached in Redis under
:data:`adapters.redis.CACHE_POLICY`); the edge runs the shop's routes. The nodes reach Redis only
through a :class:`~runtime.testing.fault_proxy.FaultProxy` (their ``GREENROOM_REDIS_URL`` points
at it); the edge keeps its own direct Redis (rate limits, idempotency keys: not under test here).

Redis is a cache for both services, so losing it must not fail a request: the load alternates
``GET /products`` (public) and ``GET /users/me`` (three customers) through the edge, in phases
normal, slowed (1 s per chunk each way), cut (blackhole; the cached keys are also deleted behind
the services' backs, so that their return proves the cache is written again), healed.

Checks (behaviour): while Redis is slow or cut, every request is answered 2xx, before the
deadline, with the right data (from Postgres); each service's Redis breaker opens (its state
change is in the node's log), so requests stop waiting on Redis at all (latencies recorded in
the summary); after healing both breakers close, the cached keys are written again within a
bounded wait, and a profile changed in Postgres behind the cache's back is still answered from
the cache (so the cache is read again, not only written).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from runtime.infra._process import free_port
from runtime.infra.tansu import TansuServer
from runtime.testing.fault_proxy import FaultProxy
from tests.chaos._chaosrun import ChaosRun, RequestResult
from tests.chaos._harness import base_env, write_summary
from tests.chaos._phases import (
    Phases,
    account,
    breaker_changes,
    latency_ms,
    settle,
    statuses,
)
from tests.support.up import UpProcess

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
]

RATE_PER_S = 10.0
DEADLINE_S = 5.0
CUSTOMERS = 3
PRODUCTS = 3
PASSWORD = "correct horse battery staple 42"
SERVICES = ("inventory", "users")


async def test_s3_redis_slowed_then_cut_is_served_from_postgres_and_recovers(  # noqa: PLR0917
    tansu: TansuServer,
    postgres_url: str,
    redis_url: str,
    unique: str,
    tmp_path: Path,
    ups: list[UpProcess],
) -> None:
    from redis.asyncio import Redis

    from adapters.postgres import drop_actor
    from adapters.redis import drop_redis_user
    from edge.client import ShopClient

    prefix = f"chaos_{unique}"
    upstream = urlsplit(redis_url)
    admin_redis = Redis.from_url(redis_url)
    cache_keys: dict[str, list[str]] = {}
    try:
        async with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 6379) as proxy:
            via_proxy = redis_url.replace(
                f"{upstream.hostname}:{upstream.port or 6379}", f"{proxy.host}:{proxy.port}"
            )
            env = base_env(
                tansu.bootstrap,
                unique,
                tmp_path / "run",
                GREENROOM_PARTITIONS="2",
                GREENROOM_POSTGRES_URL=postgres_url,
                GREENROOM_REDIS_URL=via_proxy,
                GREENROOM_EDGE_PORT=str(free_port()),
                GREENROOM_REQUEST_TIMEOUT_S=str(DEADLINE_S),
                CHAOS_DATA_PREFIX=prefix,
                AUTH_ADMIN_EMAILS=f"admin-{unique}@example.com",
            )
            run = ChaosRun(
                env=env,
                tmp=tmp_path,
                ups=ups,
                actors=[
                    "tests.chaos.shop_actors:ChaosAuth",
                    "tests.chaos.shop_actors:ChaosInventory",
                    "tests.chaos.shop_actors:ChaosUsers",
                ],
                edge_routes="edge.api:ROUTES",
                edge_env={"GREENROOM_REDIS_URL": redis_url},
                # One client IP sends the whole load: per-IP limits would turn it into 429s.
                edge_args=["--rate-limit-ip", "0", "--rate-limit-subject", "0"],
                up_args=["--max-restarts", "50", "--period", "60", "--backoff-base", "0.2"],
            )
            try:
                await run.start(within=120)
                _, admin_token = await account(
                    run.base_url, f"admin-{unique}@example.com", PASSWORD
                )
                products = []
                async with ShopClient(run.base_url, timeout_s=30, access_token=admin_token) as c:
                    for n in range(PRODUCTS):
                        made = await settle(
                            partial(c.create_product, f"Cached widget {n}", 100 + n, stock=5)
                        )
                        assert made is not None
                        products.append(made)
                expected_listing = sorted(
                    (p.product_id, p.name, p.price_cents, p.available) for p in products
                )
                customers = [
                    (*await account(run.base_url, f"c{n}-{unique}@example.com", PASSWORD), n)
                    for n in range(CUSTOMERS)
                ]
                emails = {uid: f"c{n}-{unique}@example.com" for uid, _, n in customers}
                tokens = [{"Authorization": f"Bearer {token}"} for _, token, _ in customers]
                async with httpx.AsyncClient(base_url=run.base_url, timeout=10) as http:
                    # Profiles are made from auth's UserRegistered events: wait until they are.
                    for headers in tokens:
                        await _until(
                            partial(_answers, http, "/users/me", headers),
                            60,
                            "a profile for every customer",
                        )

                wrong: list[tuple[int, Any]] = []

                async def read(client: httpx.AsyncClient, i: int) -> httpx.Response:
                    if i % 2 == 0:
                        response = await client.get("/products", params={"limit": 20})
                        if response.is_success and _listing(response.json()) != expected_listing:
                            wrong.append((i, response.json()))
                        return response
                    headers = tokens[(i // 2) % CUSTOMERS]
                    response = await client.get("/users/me", headers=headers)
                    if response.is_success:
                        body = response.json()
                        if emails.get(body.get("user_id")) != body.get("email"):
                            wrong.append((i, body))
                    return response

                async def keys() -> dict[str, list[str]]:
                    found: dict[str, list[str]] = {}
                    for service, pattern in (
                        ("inventory", f"{prefix}_inventory:products:*"),
                        ("users", f"{prefix}_users:profile:*"),
                    ):
                        found[service] = sorted(
                            [k.decode() async for k in admin_redis.scan_iter(match=pattern)]
                        )
                    return found

                async def cached() -> bool:
                    found = await keys()
                    return bool(found["inventory"]) and len(found["users"]) == CUSTOMERS

                phases = Phases(run, read, RATE_PER_S, DEADLINE_S)
                baseline = await phases.until_healthy("normal", also=cached)
                assert baseline is not None, "never healthy (and cached) before the faults"
                cache_keys["before"] = [k for ks in (await keys()).values() for k in ks]
                proxy.latency(1.0)
                await phases.phase("slowed", 20)
                proxy.blackhole()
                # Behind the services' backs (not through the proxy): their return after
                # healing shows the services write the cache again.
                await admin_redis.delete(*cache_keys["before"])
                await phases.phase("cut", 40)
                cache_keys["during_cut"] = [k for ks in (await keys()).values() for k in ks]
                proxy.heal()
                recovered_after = await phases.until_healthy("healed", also=cached)
                cache_keys["after_heal"] = [k for ks in (await keys()).values() for k in ks]
                served_from_cache = await _read_through_cache(
                    run.base_url, postgres_url, prefix, customers[0][0], tokens[0]
                )
                changes = {s: breaker_changes(run, f"{prefix}_{s}.redis") for s in SERVICES}
            finally:
                proxy.heal()
                await run.close()
    finally:
        await admin_redis.aclose()
        for name in ("auth", "inventory", "users"):
            await drop_actor(postgres_url, f"{prefix}_{name}")
        for name in SERVICES:
            try:
                await drop_redis_user(redis_url, f"{prefix}_{name}")
            except Exception as exc:
                print(f"redis user {prefix}_{name}: {exc!r}")

    degraded = phases.named("slowed") + phases.named("cut")
    after = phases.named("healed")
    not_2xx = [r for r in degraded + after if not _ok_in_time(r)]
    write_summary(
        "s3_redis_faults",
        {
            "dependency": "redis (inventory and users caches)",
            "phases": phases.figures(),
            "slowed_latency_ms": latency_ms(phases.named("slowed")),
            "cut_latency_ms": latency_ms(phases.named("cut")),
            "deadline_s": DEADLINE_S,
            "not_2xx_in_time_while_degraded_or_after": len(not_2xx),
            "wrong_bodies": len(wrong),
            "breaker_changes": changes,
            # Batch-grained: keys are looked for after each batch of 10 (1 s).
            "cache_written_again_after_heal_s": (
                round(recovered_after, 3) if recovered_after else None
            ),
            "healed_batches": len([n for n in phases.reports if n.startswith("healed-")]),
            "cache_keys": {when: len(ks) for when, ks in cache_keys.items()},
            "served_from_cache_after_heal": served_from_cache,
        },
    )
    assert not not_2xx, f"not 2xx before the deadline: {statuses(not_2xx)}"
    assert not wrong, f"wrong data answered: {wrong[:3]}"
    for service, seen in changes.items():
        assert "open" in seen, f"{service}'s Redis breaker never opened: {seen}"
        assert seen[-1] == "closed", f"{service}'s Redis breaker did not close again: {seen}"
    assert not cache_keys["during_cut"], "cache keys written while Redis was cut?"
    assert recovered_after is not None, "the cache was not written again after healing"
    assert served_from_cache, "a read after healing was not answered from the cache"


def _ok_in_time(r: RequestResult) -> bool:
    return r.status is not None and 200 <= r.status < 300 and r.latency_s < DEADLINE_S


def _listing(body: Any) -> list[tuple[str, str, int, int]]:
    return sorted(
        (p["product_id"], p["name"], p["price_cents"], p["available"]) for p in body["items"]
    )


async def _answers(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> bool:
    try:
        return (await http.get(path, headers=headers)).status_code == 200
    except httpx.HTTPError:
        return False


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    with anyio.move_on_after(within):
        while not await check():  # noqa: ASYNC110 - the state lives in other processes
            await anyio.sleep(0.5)
        return
    raise AssertionError(f"not {what} within {within}s")


async def _read_through_cache(
    base_url: str, postgres_url: str, prefix: str, user_id: str, headers: dict[str, str]
) -> bool:
    """Change the profile's display name in Postgres behind the cache's back (no event, no
    invalidation); True if ``GET /users/me`` still answers the cached one."""
    import asyncpg

    marker = "changed behind the cache"
    db = await asyncpg.connect(postgres_url)
    try:
        await db.execute(
            f'UPDATE "{prefix}_users".profiles SET display_name = $2 WHERE user_id = $1::uuid',
            user_id,
            marker,
        )
    finally:
        await db.close()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get("/users/me", headers=headers)
    assert response.status_code == 200, response.text
    return bool(response.json()["display_name"] != marker)
