"""The payment-provider stand-in (in-process, over ASGI): dedupe on the idempotency key, refunds
and voids, fault injection; and the payments contracts' rules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from actors.payments.contracts import Charge, Payment, charge_key
from actors.payments.provider import ProviderConfig, ProviderState, create_provider_app


@pytest.fixture
async def provider() -> AsyncIterator[httpx.AsyncClient]:
    app = create_provider_app(ProviderConfig(decline_over_cents=10_000))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://provider"
    ) as client:
        yield client


async def test_a_key_charges_once(provider: httpx.AsyncClient) -> None:
    body = {"idempotency_key": "k1", "amount_cents": 500}
    first = await provider.post("/v1/charges", json=body)
    again = await provider.post("/v1/charges", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["charge_id"] == again.json()["charge_id"]
    assert (await provider.get("/v1/stats")).json()["captured"] == 1
    other_amount = await provider.post("/v1/charges", json={**body, "amount_cents": 600})
    assert other_amount.status_code == 409


async def test_declines_are_stored_too(provider: httpx.AsyncClient) -> None:
    body = {"idempotency_key": "big", "amount_cents": 20_000}
    assert (await provider.post("/v1/charges", json=body)).status_code == 402
    again = await provider.post("/v1/charges", json=body)
    assert (again.status_code, again.json()["status"]) == (402, "declined")


async def test_refund_then_void(provider: httpx.AsyncClient) -> None:
    await provider.post("/v1/charges", json={"idempotency_key": "k", "amount_cents": 5})
    refunded = await provider.post("/v1/refunds", json={"charge_key": "k"})
    assert refunded.json()["status"] == "refunded"
    assert (await provider.post("/v1/refunds", json={"charge_key": "k"})).json()["status"] == (
        "refunded"
    )
    voided = await provider.post("/v1/refunds", json={"charge_key": "never"})
    assert voided.json()["status"] == "voided"
    late = await provider.post("/v1/charges", json={"idempotency_key": "never", "amount_cents": 5})
    assert late.status_code == 409  # a voided key never charges


async def test_failure_rate_is_settable_and_fails_before_processing(
    provider: httpx.AsyncClient,
) -> None:
    config = await provider.put(
        "/v1/config", json={"latency_ms": 0, "failure_rate": 1.0, "decline_over_cents": 10_000}
    )
    assert config.status_code == 200
    failed = await provider.post("/v1/charges", json={"idempotency_key": "x", "amount_cents": 1})
    assert failed.status_code == 503
    stats = (await provider.get("/v1/stats")).json()
    assert (stats["captured"], stats["failures_injected"]) == (0, 1)
    bad = await provider.put("/v1/config", json={"failure_rate": 2.0})
    assert bad.status_code == 400


def test_the_journal_survives_a_restart(tmp_path: pytest.TempPathFactory) -> None:
    from actors.payments.provider import ProviderCharge

    journal = tmp_path / "provider.jsonl"  # type: ignore[operator]
    state = ProviderState(journal)
    state.store(
        ProviderCharge(charge_id="c", idempotency_key="k", amount_cents=1, status="captured")
    )
    assert ProviderState(journal).charges["k"].charge_id == "c"


def test_charge_key_is_derived_from_the_order() -> None:
    assert charge_key("o-1") == charge_key("o-1") != charge_key("o-2")
    assert "o-1" in charge_key("o-1")


@pytest.mark.parametrize("contract", [Charge, Payment])
def test_payment_contracts_are_frozen_and_tagged(contract: type) -> None:
    config = contract.__struct_config__
    assert config.frozen
    assert config.tag.startswith("payments.")
