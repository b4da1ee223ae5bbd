"""Names, error classification and stored-reply replay: the adapter logic that needs no server."""

from __future__ import annotations

import asyncpg
import msgspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st
from redis import exceptions as rex

from adapters import ActorNames, InvalidNameError, derive_secret
from adapters._names import quote_ident
from adapters.errors import postgres_transient, redis_transient, s3_transient
from adapters.postgres import replay_struct
from runtime.codec import encode


@pytest.mark.parametrize(
    "bad", ["", "Orders", "1orders", "or-ders", 'x"; DROP ROLE postgres; --', "a" * 42, "ü"]
)
def test_names_outside_the_rule_are_refused(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        ActorNames(bad)
    with pytest.raises(InvalidNameError):
        quote_ident(bad)


def test_names_derived_from_the_actor() -> None:
    names = ActorNames("order_items")
    assert (names.role, names.schema, names.key_prefix) == (
        "gr_order_items",
        "order_items",
        "order_items:",
    )
    assert names.bucket == "gr-order-items"
    assert quote_ident("order_items") == '"order_items"'


def test_derived_secrets_are_stable_hex_and_differ_by_purpose() -> None:
    a = derive_secret("admin-dsn", "postgres:gr_a")
    assert a == derive_secret("admin-dsn", "postgres:gr_a")
    assert a != derive_secret("admin-dsn", "postgres:gr_b")
    assert a != derive_secret("other-dsn", "postgres:gr_a")
    assert len(a) == 40
    assert set(a) <= set("0123456789abcdef")


def _pg(code: str) -> asyncpg.PostgresError:
    exc = asyncpg.PostgresError("x")
    exc.sqlstate = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_pg("40001"), True),  # serialization failure
        (_pg("40P01"), True),  # deadlock
        (_pg("53300"), True),  # too many connections
        (_pg("08006"), True),  # connection failure
        (_pg("23505"), False),  # unique violation
        (_pg("42501"), False),  # insufficient privilege
        (_pg("42P01"), False),  # undefined table
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (ValueError(), False),
    ],
)
def test_postgres_classification(error: BaseException, transient: bool) -> None:
    assert postgres_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (rex.ConnectionError(), True),
        (rex.TimeoutError(), True),
        (rex.BusyLoadingError(), True),
        (rex.TryAgainError(), True),
        (rex.NoPermissionError(), False),
        (rex.AuthenticationError(), False),
        (rex.ResponseError("WRONGTYPE"), False),
    ],
)
def test_redis_classification(error: BaseException, transient: bool) -> None:
    assert redis_transient(error) is transient


def _s3(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_s3("SlowDown", 503), True),
        (_s3("InternalError", 500), True),
        (_s3("AccessDenied", 403), False),
        (_s3("NoSuchKey", 404), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
    ],
)
def test_s3_classification(error: BaseException, transient: bool) -> None:
    assert s3_transient(error) is transient


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag="svc.Reply"):
    id: str
    count: int
    tags: list[str] = []
    price: float = 0.0
    note: str | None = None


class Custom(msgspec.Struct, frozen=True, tag="svc.Custom", tag_field="kind"):
    value: int


@given(
    id=st.text(),
    count=st.integers(-(2**63), 2**63 - 1),
    tags=st.lists(st.text(), max_size=3),
    price=st.floats(allow_nan=False, allow_infinity=False),
    note=st.none() | st.text(),
)
def test_a_stored_reply_replays_byte_for_byte(
    id: str, count: int, tags: list[str], price: float, note: str | None
) -> None:
    type_tag, body = encode(Reply(id=id, count=count, tags=tags, price=price, note=note))
    assert encode(replay_struct(type_tag, body)) == (type_tag, body)


def test_replay_finds_a_custom_tag_field() -> None:
    type_tag, body = encode(Custom(3))
    assert encode(replay_struct(type_tag, body)) == (type_tag, body)
    with pytest.raises(TypeError):
        replay_struct("svc.X", b"[1]")
