"""A payment-provider stand-in: a small HTTP service that takes charges and refunds.

It plays the external card processor the payments actor calls, so tests and ``greenroom up`` can
make that dependency slow or failing on demand. Run it as its own process::

    python -m actors.payments.provider --port 8790 --latency-ms 20 --failure-rate 0.1

API (JSON):

- ``POST /v1/charges`` ``{"idempotency_key", "amount_cents", "reference"}``: ``201`` with the
  charge (``status`` ``captured``), or ``402`` with ``status`` ``declined`` (amounts above
  ``decline_over_cents``), stored either way. The same key again answers the stored outcome with
  ``200`` -- as real providers do -- and the same key with another amount is ``409``. A key that
  was voided answers ``409``.
- ``POST /v1/refunds`` ``{"charge_key"}``: refunds the charge stored under ``charge_key``
  (``refunded``), or, when there is none, voids the key so a late charge with it is refused
  (``voided``). Idempotent.
- ``GET /v1/charges/{key}``: one stored charge, or ``404``.
- ``GET /v1/stats``: counts of captures, declines, refunds, voids and injected failures.
- ``GET|PUT /v1/config`` ``{"latency_ms", "failure_rate", "decline_over_cents"}``: the fault
  knobs. A failure (``503``) is injected *before* the key is looked at, so it means "not
  processed"; latency is added to every call.
- ``GET /health``.

State lives in memory and, with ``--state-file``, in an append-only JSON-lines journal replayed at
start, so a provider killed under chaos still remembers what it charged (a real provider would).
Defaults come from ``PAYMENT_PROVIDER_URL`` (host and port), ``PAYMENT_PROVIDER_LATENCY_MS`` and
``PAYMENT_PROVIDER_FAILURE_RATE``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post, put

__all__ = [
    "DEFAULT_URL",
    "ProviderCharge",
    "ProviderConfig",
    "ProviderState",
    "create_provider_app",
    "main",
    "provider_url",
]

DEFAULT_URL: Final = "http://127.0.0.1:8790"
URL_ENV: Final = "PAYMENT_PROVIDER_URL"


def provider_url() -> str:
    """Where the provider listens / is reached: ``PAYMENT_PROVIDER_URL`` or the default."""
    return os.environ.get(URL_ENV, DEFAULT_URL).rstrip("/")


class ProviderConfig(msgspec.Struct, kw_only=True):
    """The fault knobs (see the module docstring)."""

    latency_ms: float = 0.0
    failure_rate: float = 0.0
    decline_over_cents: int = 10_000_000

    def check(self) -> None:
        """Raises ValueError for a rate outside [0, 1] or a negative latency."""
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must not be negative")


class ChargeRequest(msgspec.Struct, kw_only=True):
    idempotency_key: str
    amount_cents: int
    reference: str = ""


class RefundRequest(msgspec.Struct, kw_only=True):
    charge_key: str


class ProviderCharge(msgspec.Struct, kw_only=True):
    """A charge as the provider stores and returns it."""

    charge_id: str
    idempotency_key: str
    amount_cents: int
    status: Literal["captured", "declined", "refunded", "voided"]
    reference: str = ""
    reason: str = ""


class ProviderState:
    """Charges by idempotency key, journaled to ``journal`` when given."""

    def __init__(self, journal: Path | None = None) -> None:
        self.charges: dict[str, ProviderCharge] = {}
        self.failures = 0
        self._journal = journal
        self._encoder = msgspec.json.Encoder()
        if journal is not None and journal.exists():
            decoder = msgspec.json.Decoder(ProviderCharge)
            for line in journal.read_bytes().splitlines():
                if line.strip():
                    try:
                        charge = decoder.decode(line)
                    except msgspec.DecodeError:
                        continue  # a line torn by a kill mid-write; the client will retry it
                    self.charges[charge.idempotency_key] = charge

    def store(self, charge: ProviderCharge) -> ProviderCharge:
        """Remember ``charge`` (journaled before it is acknowledged)."""
        self.charges[charge.idempotency_key] = charge
        if self._journal is not None:
            with self._journal.open("ab") as out:
                out.write(self._encoder.encode(charge) + b"\n")
                out.flush()
                os.fsync(out.fileno())
        return charge

    def stats(self) -> dict[str, int]:
        counts = {"captured": 0, "declined": 0, "refunded": 0, "voided": 0}
        for charge in self.charges.values():
            counts[charge.status] += 1
        return {**counts, "failures_injected": self.failures}


_json: Final = msgspec.json.Encoder()


def _reply(body: Any, status: int) -> Response[bytes]:
    return Response(content=_json.encode(body), status_code=status, media_type="application/json")


def create_provider_app(
    config: ProviderConfig | None = None, state: ProviderState | None = None
) -> Litestar:
    """The provider as a Litestar app (see the module docstring)."""
    cfg = config or ProviderConfig()
    cfg.check()
    store = state or ProviderState()
    rng = random.Random()  # fault injection, not cryptography
    charge_decoder = msgspec.json.Decoder(ChargeRequest)
    refund_decoder = msgspec.json.Decoder(RefundRequest)
    config_decoder = msgspec.json.Decoder(ProviderConfig)

    async def delay_or_fail() -> Response[bytes] | None:
        if cfg.latency_ms:
            await anyio.sleep(cfg.latency_ms / 1000)
        if cfg.failure_rate and rng.random() < cfg.failure_rate:
            store.failures += 1
            return _reply({"error": "provider failure (injected)"}, 503)
        return None

    @post("/v1/charges")
    async def charge(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        try:
            req = charge_decoder.decode(body)
        except msgspec.DecodeError as exc:
            return _reply({"error": str(exc)}, 400)
        if req.amount_cents <= 0 or not req.idempotency_key:
            return _reply({"error": "amount_cents must be positive, idempotency_key set"}, 400)
        if failed := await delay_or_fail():
            return failed
        known = store.charges.get(req.idempotency_key)
        if known is not None:
            if known.status == "voided" or known.amount_cents != req.amount_cents:
                return _reply({"error": f"key already used ({known.status})", **_as(known)}, 409)
            return _reply(known, 402 if known.status == "declined" else 200)
        declined = req.amount_cents > cfg.decline_over_cents
        stored = store.store(
            ProviderCharge(
                charge_id=f"ch_{os.urandom(8).hex()}",
                idempotency_key=req.idempotency_key,
                amount_cents=req.amount_cents,
                status="declined" if declined else "captured",
                reference=req.reference,
                reason="amount over the card's limit" if declined else "",
            )
        )
        return _reply(stored, 402 if declined else 201)

    @post("/v1/refunds")
    async def refund(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        try:
            req = refund_decoder.decode(body)
        except msgspec.DecodeError as exc:
            return _reply({"error": str(exc)}, 400)
        if failed := await delay_or_fail():
            return failed
        known = store.charges.get(req.charge_key)
        if known is None:
            voided = ProviderCharge(
                charge_id=f"ch_{os.urandom(8).hex()}",
                idempotency_key=req.charge_key,
                amount_cents=0,
                status="voided",
            )
            return _reply(store.store(voided), 200)
        if known.status == "captured":
            known = store.store(msgspec.structs.replace(known, status="refunded"))
        return _reply(known, 200)

    @get("/v1/charges/{key:str}")
    async def read_charge(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = request.path_params["key"]
        known = store.charges.get(key)
        return _reply(known, 200) if known else _reply({"error": "no such charge"}, 404)

    @get("/v1/stats")
    async def stats() -> Response[bytes]:
        return _reply(store.stats(), 200)

    @get("/v1/config")
    async def read_config() -> Response[bytes]:
        return _reply(cfg, 200)

    @put("/v1/config")
    async def write_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        try:
            new = config_decoder.decode(body)
            new.check()
        except (msgspec.DecodeError, ValueError) as exc:
            return _reply({"error": str(exc)}, 400)
        cfg.latency_ms, cfg.failure_rate = new.latency_ms, new.failure_rate
        cfg.decline_over_cents = new.decline_over_cents
        return _reply(cfg, 200)

    @get("/health")
    async def health() -> Response[bytes]:
        return _reply({"status": "ok"}, 200)

    return Litestar(
        route_handlers=[charge, refund, read_charge, stats, read_config, write_config, health],
        logging_config=None,
        openapi_config=None,
        debug=False,
    )


def _as(charge: ProviderCharge) -> dict[str, Any]:
    return msgspec.structs.asdict(charge)


def main(argv: list[str] | None = None) -> int:
    """Run the provider until interrupted; exit 2 on bad arguments."""
    import uvicorn

    address = urlsplit(provider_url())
    parser = argparse.ArgumentParser(prog="payment-provider", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=address.hostname or "127.0.0.1")
    parser.add_argument("--port", type=int, default=address.port or 8790)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=float(os.environ.get("PAYMENT_PROVIDER_LATENCY_MS", "0")),
    )
    parser.add_argument(
        "--failure-rate",
        type=float,
        default=float(os.environ.get("PAYMENT_PROVIDER_FAILURE_RATE", "0")),
    )
    parser.add_argument("--state-file", type=Path, default=None, help="JSON-lines journal")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="keep the journal here (as under greenroom up)"
    )
    args = parser.parse_args(argv)
    if args.state_file is None and args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        args.state_file = args.run_dir / "payment-provider.jsonl"
    config = ProviderConfig(latency_ms=args.latency_ms, failure_rate=args.failure_rate)
    try:
        config.check()
    except ValueError as exc:
        print(f"payment-provider: {exc}", file=sys.stderr)
        return 2
    app = create_provider_app(config, ProviderState(args.state_file))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
