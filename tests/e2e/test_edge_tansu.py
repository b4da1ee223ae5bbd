"""HTTP -> ``greenroom edge`` -> Kafka (Tansu) -> ``greenroom run`` nodes -> back, on real sockets.

One deployment serves the module: a ``TestAuth`` node (the edge fetches its signing keys over the
bus), a ``Things`` node and an edge with a per-token rate limit of :data:`SUBJECT_LIMIT`. Each
test signs its tokens for a subject of its own, so rate-limit and idempotency keys never meet.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.support.edge_actors import SLOW_HANDLER_S, THING_TIMEOUT_S
from tests.support.edge_helpers import (
    TEST_KEY,
    EdgeStack,
    SigningKey,
    StackFactory,
    unsigned_token,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.redis]

SUBJECT_LIMIT = 5
MAX_BODY_BYTES = 4096


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Iterator[EdgeStack]:
    edge_args = [
        *("--rate-limit-subject", str(SUBJECT_LIMIT)),
        *("--rate-limit-ip", "100000"),
        *("--rate-window", "60"),
        *("--max-body-bytes", str(MAX_BODY_BYTES)),
    ]
    with start_stack(edge_args=edge_args) as running:
        yield running


@pytest.fixture
async def client(stack: EdgeStack) -> AsyncIterator[httpx.AsyncClient]:
    # Generous against a hang, never a timing assertion: every wait is bounded by the deadline.
    async with httpx.AsyncClient(base_url=stack.url, timeout=THING_TIMEOUT_S + 10) as http:
        yield http


@pytest.fixture
def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def bearer(subject: str, **claims: Any) -> dict[str, str]:
    return TEST_KEY.bearer(subject, **claims)


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == kind
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


# --- success


async def test_post_and_get_round_trip_through_the_bus(
    client: httpx.AsyncClient, subject: str
) -> None:
    created = await client.post(
        "/things",
        json={"name": "lamp", "quantity": 2, "owner": "someone-else"},
        headers={**bearer(subject), "X-Correlation-Id": f"corr-{subject}"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    # The owner is the token's subject, whatever the body claimed.
    assert body == {
        "type": "e2e.Thing",
        "thing_id": "t-lamp",
        "owner": subject,
        "name": "lamp",
        "quantity": 2,
    }
    assert created.headers["x-correlation-id"] == f"corr-{subject}"

    read = await client.get("/things/t-lamp", headers=bearer(subject))
    assert read.status_code == 200, read.text
    assert (read.json()["thing_id"], read.json()["owner"]) == ("t-lamp", subject)

    pong = await client.get("/ping/41")
    assert pong.status_code == 200, pong.text
    assert pong.json() == {"type": "e2e.Pong", "n": 41}


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, subject: str
) -> None:
    headers = {**bearer(subject), "Idempotency-Key": f"create-{subject}"}
    first = await client.post("/things", json={"name": "chair", "quantity": 1}, headers=headers)
    again = await client.post("/things", json={"name": "chair", "quantity": 1}, headers=headers)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/things", json={"name": "table", "quantity": 1}, headers=headers)
    assert_error(other, 422, "invalid")
    assert other.json()["field"] == "Idempotency-Key"


# --- bad input


async def test_malformed_json_is_400(client: httpx.AsyncClient, subject: str) -> None:
    response = await client.post(
        "/things", content=b'{"name": "lamp", "quantity": ', headers=bearer(subject)
    )
    body = assert_error(response, 400, "malformed")
    assert "JSON" in body["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "lamp", "quantity": "two"}, "$.quantity"),
        ({"name": "lamp", "quantity": 0}, "$.quantity"),
        ({"quantity": 1}, "$.name"),
        ({"name": "", "quantity": 1}, "$.name"),
        (["not", "an", "object"], "$"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient, subject: str, payload: Any, field: str
) -> None:
    response = await client.post("/things", json=payload, headers=bearer(subject))
    body = assert_error(response, 422, "invalid")
    assert body["field"] == field
    assert body["message"]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, subject: str) -> None:
    payload = {"name": "x" * (2 * MAX_BODY_BYTES), "quantity": 1}
    response = await client.post("/things", json=payload, headers=bearer(subject))
    assert_error(response, 413, "too_large")


# --- tokens


def _token_cases() -> list[Any]:
    stranger = SigningKey.from_seed(TEST_KEY.kid, b"not the auth service's key")
    return [
        pytest.param(lambda s: {}, "missing bearer token", id="missing"),
        pytest.param(lambda s: bearer(s, exp_in=-120), "expired", id="expired"),
        pytest.param(
            lambda s: {"Authorization": f"Bearer {unsigned_token(s)}"},
            "algorithm",
            id="alg-none",
        ),
        pytest.param(lambda s: bearer(s, aud="another-api"), "audience", id="wrong-audience"),
        # The right kid, signed by another key: the signature check is what refuses it.
        pytest.param(stranger.bearer, "invalid token", id="wrong-key"),
    ]


@pytest.mark.parametrize(("headers_for", "reason"), _token_cases())
async def test_bad_tokens_are_401(
    client: httpx.AsyncClient, subject: str, headers_for: Any, reason: str
) -> None:
    response = await client.get("/things/t-1", headers=headers_for(subject))
    body = assert_error(response, 401, "unauthorized")
    assert reason in body["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- domain outcomes


async def test_unknown_thing_and_unknown_route_are_404(
    client: httpx.AsyncClient, subject: str
) -> None:
    missing = await client.get("/things/missing", headers=bearer(subject))
    assert_error(missing, 404, "not_found")
    nowhere = await client.get("/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["error"] == "not_found"


async def test_conflict_is_409_naming_the_field(client: httpx.AsyncClient, subject: str) -> None:
    response = await client.post(
        "/things", json={"name": "taken", "quantity": 1}, headers=bearer(subject)
    )
    body = assert_error(response, 409, "conflict")
    assert body["field"] == "$.name"


async def test_unavailable_service_is_503_with_retry_after(
    client: httpx.AsyncClient, subject: str
) -> None:
    response = await client.get("/things/down", headers=bearer(subject))
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "7"


async def test_handler_slower_than_the_deadline_is_504(
    client: httpx.AsyncClient, subject: str
) -> None:
    assert SLOW_HANDLER_S > THING_TIMEOUT_S
    started = time.monotonic()
    # The client's own timeout (deadline + 5 s) is the guard against a hang, nothing finer.
    response = await client.get(
        "/things/slow", headers=bearer(subject), timeout=THING_TIMEOUT_S + 5
    )
    elapsed = time.monotonic() - started
    print(
        f"504 after {elapsed:.3f}s for a {THING_TIMEOUT_S}s deadline (handler takes "
        f"{SLOW_HANDLER_S}s)"
    )
    assert_error(response, 504, "deadline")


# --- rate limits


async def test_rate_limit_per_token_is_429_with_headers(
    client: httpx.AsyncClient, subject: str
) -> None:
    remaining = []
    for i in range(SUBJECT_LIMIT):
        response = await client.get(f"/things/t-{i}", headers=bearer(subject))
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == str(SUBJECT_LIMIT)
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == list(range(SUBJECT_LIMIT - 1, -1, -1))
    limited = await client.get("/things/t-x", headers=bearer(subject))
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["ratelimit-limit"] == str(SUBJECT_LIMIT)
    assert limited.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(limited.headers["ratelimit-reset"]) <= 60
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # The limit is per token subject: another user is not affected.
    other = await client.get("/things/t-x", headers=bearer(f"{subject}-other"))
    assert other.status_code == 200, other.text
