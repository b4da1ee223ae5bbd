"""auth and users as real nodes over a MemoryBroker, on the real Postgres and Redis.

Each test runs its own auth and users nodes with unique schemas, Redis user and topic prefix, and
asks them through a Requester, as the edge does.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from actors.auth.actor import Auth
from actors.auth.contracts import (
    GetSigningKeys,
    GrantRole,
    LoggedOut,
    Login,
    Logout,
    Refresh,
    Register,
    Registered,
    RoleGranted,
    SigningKeys,
    TokenPair,
)
from actors.users.actor import Users
from actors.users.contracts import Address, GetProfile, Profile, ProfileUpdated, UpdateProfile
from adapters.postgres import add_outbox_relay, drop_actor
from adapters.redis import drop_redis_user
from edge.auth import SigningKeyCache, TokenVerifier
from edge.config import EdgeConfig
from runtime.actor import NodeContext
from runtime.bus.memory import MemoryBroker
from runtime.config import Settings
from runtime.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from runtime.logging import get_logger
from runtime.node import Node
from runtime.request import Requester
from tests.support.wait import eventually, eventually_async

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

R = TypeVar("R")
PASSWORD = "plum-Harbour-41-quietly"
ADMIN = "root@example.com"


@dataclass
class Identity:
    requester: Requester
    settings: Settings
    broker: MemoryBroker
    auth: Auth
    users: Users
    redis: Redis

    async def ask(self, service: str, message: msgspec.Struct, reply: type[R], key: str = "") -> R:
        return await self.requester.request(service, message, key=key, reply_type=reply)

    async def register(self, email: str) -> Registered:
        return await self.ask("auth", Register(email=email, password=PASSWORD), Registered)

    async def login(self, email: str, password: str = PASSWORD) -> TokenPair:
        return await self.ask("auth", Login(email=email, password=password), TokenPair, email)

    async def profile(self, user_id: str, key: str | None = None) -> Profile:
        return await self.ask(
            "users", GetProfile(user_id=user_id), Profile, user_id if key is None else key
        )

    async def profile_when_created(self, user_id: str) -> Profile:
        # The profile follows registration through auth's outbox and users' subscription.
        with anyio.fail_after(10):
            while True:
                try:
                    return await self.profile(user_id)
                except NotFoundError:
                    await anyio.sleep(0.02)


@asynccontextmanager
async def identity(postgres_url: str, redis_url: str, unique: str) -> AsyncIterator[Identity]:
    settings = Settings(
        broker="memory",
        topic_prefix=f"{unique}.",
        partitions=2,
        postgres_url=postgres_url,
        redis_url=redis_url,
        shutdown_timeout_s=5.0,
        request_timeout_s=10.0,
    )
    auth_data, users_data = f"auth_{unique}", f"users_{unique}"
    auth_type = type(
        "TestAuth",
        (Auth,),
        {
            "data_name": auth_data,
            "admin_emails": frozenset({ADMIN}),
            # Cheap hashes keep the test fast; the cost itself is checked in the unit tests.
            "hash_time_cost": 1,
            "hash_memory_kib": 8_192,
        },
    )
    users_type = type("TestUsers", (Users,), {"data_name": users_data})
    auth, users = auth_type(), users_type()
    redis = Redis.from_url(redis_url)
    try:
        async with MemoryBroker(commit_interval_s=0.02) as broker, AsyncExitStack() as stack:
            nodes = [Node(auth, settings, broker=broker), Node(users, settings, broker=broker)]
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    add_outbox_relay(node, poll_interval_s=0.05)
                    await tg.start(node.run)
                requester = await stack.enter_async_context(Requester(broker, settings))
                try:
                    yield Identity(requester, settings, broker, auth, users, redis)
                finally:
                    await requester.close()
                    for node in nodes:
                        node.drain()
                    for node in nodes:
                        await eventually(lambda n=node: n.state == "stopped")  # type: ignore[misc]
    finally:
        await redis.aclose()
        await drop_actor(postgres_url, auth_data)
        await drop_actor(postgres_url, users_data)
        await drop_redis_user(redis_url, users_data)


async def test_register_login_and_the_token_verifies_with_the_published_keys(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        registered = await ids.register("  Ada@Example.com ")
        assert registered.email == "ada@example.com"
        assert registered.roles == ("customer",)
        pair = await ids.login("ADA@example.com")
        assert pair.user_id == registered.user_id
        assert pair.expires_in == Auth.access_ttl_s

        async def fetch(request: GetSigningKeys) -> SigningKeys:
            return await ids.ask("auth", request, SigningKeys)

        verifier = TokenVerifier(EdgeConfig(), SigningKeyCache(fetch))
        principal = await verifier.verify(f"Bearer {pair.access_token}")
        assert principal.subject == registered.user_id
        assert principal.roles == {"customer"}

        # Stored: the password as Argon2id, the refresh token as its SHA-256, no token pair in
        # the inbox's stored replies.
        db = ids.auth.database
        assert (
            await db.fetchval("SELECT password_hash FROM accounts WHERE email = 'ada@example.com'")
        ).startswith("$argon2id$")
        digest = hashlib.sha256(pair.refresh_token.encode()).digest()
        assert await db.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash = $1", digest
        )
        assert await db.fetchval("SELECT count(*) FROM inbox WHERE type = 'auth.Login'") == 1
        assert (
            await db.fetchval(
                "SELECT count(*) FROM inbox WHERE reply_body IS NOT NULL AND type = 'auth.Login'"
            )
            == 0
        )

        # Another replica (or a restart) loads the same signing key.
        replica = type(ids.auth)()
        ctx = NodeContext(
            name="auth", settings=ids.settings, broker=ids.broker, log=get_logger("test")
        )
        await replica.on_start(ctx)
        try:
            assert replica.signing_key.kid == ids.auth.signing_key.kid
        finally:
            await replica.on_stop(ctx)


async def test_registration_is_validated_and_unique(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        with pytest.raises(InvalidError) as bad_email:
            await ids.ask("auth", Register(email="nope", password=PASSWORD), Registered)
        assert bad_email.value.field == "email"
        with pytest.raises(InvalidError) as weak:
            await ids.ask("auth", Register(email="b@example.com", password="short"), Registered)
        assert weak.value.field == "password"
        await ids.register("b@example.com")
        with pytest.raises(ConflictError) as taken:
            await ids.register("B@EXAMPLE.COM")
        assert taken.value.field == "email"


async def test_wrong_password_then_lockout(postgres_url: str, redis_url: str, unique: str) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        await ids.register("c@example.com")
        for _ in range(Auth.throttle.max_failures):
            with pytest.raises(UnauthorizedError, match="wrong email or password"):
                await ids.login("c@example.com", "wrong-password-123")
        # Locked out: even the right password is refused, with a time to come back.
        with pytest.raises(UnavailableError) as locked:
            await ids.login("c@example.com")
        assert 0 < locked.value.retry_after_s <= Auth.throttle.window_s
        # Unknown emails get the same answer as wrong passwords, and other accounts are unaffected.
        with pytest.raises(UnauthorizedError, match="wrong email or password"):
            await ids.login("nobody@example.com")
        await ids.register("d@example.com")
        assert (await ids.login("d@example.com")).access_token


async def test_refresh_rotates_and_reuse_revokes_the_family(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        await ids.register("e@example.com")
        first = await ids.login("e@example.com")
        second = await ids.ask("auth", Refresh(refresh_token=first.refresh_token), TokenPair)
        assert second.refresh_token != first.refresh_token
        assert second.user_id == first.user_id
        third = await ids.ask("auth", Refresh(refresh_token=second.refresh_token), TokenPair)

        # The already-exchanged first token comes back: a copy exists, so the family dies.
        with pytest.raises(UnauthorizedError, match="reused"):
            await ids.ask("auth", Refresh(refresh_token=first.refresh_token), TokenPair)
        with pytest.raises(UnauthorizedError, match="revoked"):
            await ids.ask("auth", Refresh(refresh_token=third.refresh_token), TokenPair)
        with pytest.raises(UnauthorizedError, match="unknown"):
            await ids.ask("auth", Refresh(refresh_token="made-up"), TokenPair)
        # A separate login is a separate family, untouched.
        other = await ids.login("e@example.com")
        assert await ids.ask("auth", Refresh(refresh_token=other.refresh_token), TokenPair)


async def test_logout_revokes_only_the_callers_session(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        f = await ids.register("f@example.com")
        g = await ids.register("g@example.com")
        f_pair, g_pair = await ids.login("f@example.com"), await ids.login("g@example.com")
        with pytest.raises(NotFoundError):  # f cannot end g's session
            await ids.ask(
                "auth", Logout(user_id=f.user_id, refresh_token=g_pair.refresh_token), LoggedOut
            )
        out = await ids.ask(
            "auth", Logout(user_id=f.user_id, refresh_token=f_pair.refresh_token), LoggedOut
        )
        assert out.revoked == 1
        with pytest.raises(UnauthorizedError, match="revoked"):
            await ids.ask("auth", Refresh(refresh_token=f_pair.refresh_token), TokenPair)
        assert await ids.ask("auth", Refresh(refresh_token=g_pair.refresh_token), TokenPair)
        everything = await ids.ask("auth", Logout(user_id=g.user_id, all_sessions=True), LoggedOut)
        assert everything.revoked == 2  # the whole family: the rotated token and its successor


async def test_admins_come_from_the_bootstrap_list_and_grant_roles(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        root = await ids.register(ADMIN)
        assert root.roles == ("customer", "admin")
        shopper = await ids.register("h@example.com")
        with pytest.raises(ForbiddenError):
            await ids.ask(
                "auth", GrantRole(actor_id=shopper.user_id, email=ADMIN, role="admin"), RoleGranted
            )
        granted = await ids.ask(
            "auth",
            GrantRole(actor_id=root.user_id, email="h@example.com", role="admin"),
            RoleGranted,
        )
        assert granted.roles == ("customer", "admin")
        assert (await ids.login("h@example.com")).roles == ("customer", "admin")
        with pytest.raises(NotFoundError):
            await ids.ask(
                "auth",
                GrantRole(actor_id=root.user_id, email="x@example.com", role="admin"),
                RoleGranted,
            )


async def test_profile_is_created_cached_and_invalidated(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        user = await ids.register("ivy.lee@example.com")
        profile = await ids.profile_when_created(user.user_id)
        assert profile.email == "ivy.lee@example.com"
        assert profile.display_name == "ivy.lee"
        assert profile.version == 1

        cache_key = f"users_{unique}:profile:{user.user_id}"
        assert await ids.redis.exists(cache_key)  # the read stored it
        # Served from the cache: a value only the cache holds comes back.
        doctored = msgspec.structs.replace(profile, display_name="from-cache")
        await ids.redis.set(cache_key, msgspec.json.encode(doctored))
        assert (await ids.profile(user.user_id)).display_name == "from-cache"

        updated = await ids.ask(
            "users",
            UpdateProfile(
                user_id=user.user_id,
                display_name="Ivy",
                address=Address(line1="1 Main St", city="Berlin", country="de"),
            ),
            Profile,
            user.user_id,
        )
        assert updated.version == 2
        assert updated.address.country == "DE"
        again = await ids.profile(user.user_id)
        assert again.display_name == "Ivy"
        assert again.address.city == "Berlin"
        with pytest.raises(ConflictError):
            await ids.ask(
                "users",
                UpdateProfile(user_id=user.user_id, phone="+49 30 1234", expected_version=1),
                Profile,
                user.user_id,
            )

        # The service's own ProfileUpdated event drops the key too (the path that survives a
        # crash between commit and the direct invalidation).
        await ids.redis.set(cache_key, msgspec.json.encode(doctored))
        await ids.ask(
            "users", UpdateProfile(user_id=user.user_id, phone="+49 30 1234"), Profile, user.user_id
        )
        await ids.redis.set(cache_key, msgspec.json.encode(doctored))  # stale after the commit
        event = ProfileUpdated(user_id=user.user_id, version=3)
        await ids.broker.publish(
            ids.settings.topic("users.events"),
            _envelope(event, key=user.user_id),
        )

        async def gone() -> bool:
            return not await ids.redis.exists(cache_key)

        await eventually_async(gone, interval=0.02)
        assert (await ids.profile(user.user_id)).phone == "+49 30 1234"


async def test_one_user_cannot_reach_anothers_profile(
    postgres_url: str, redis_url: str, unique: str
) -> None:
    async with identity(postgres_url, redis_url, unique) as ids:
        a = await ids.register("a1@example.com")
        b = await ids.register("b1@example.com")
        await ids.profile_when_created(a.user_id)
        before = await ids.profile_when_created(b.user_id)
        with pytest.raises(ForbiddenError):
            await ids.profile(b.user_id, key=a.user_id)
        with pytest.raises(ForbiddenError):
            await ids.ask(
                "users", UpdateProfile(user_id=b.user_id, display_name="mine"), Profile, a.user_id
            )
        with pytest.raises(UnauthorizedError):
            await ids.profile("", key="")
        assert await ids.profile(b.user_id) == before


def _envelope(message: msgspec.Struct, *, key: str) -> Any:
    from runtime.codec import encode
    from runtime.messages import Envelope

    type_tag, body = encode(message)
    return Envelope.new(type_tag, body, key=key)
