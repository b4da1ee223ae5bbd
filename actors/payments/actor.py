"""The payments actor: charges an order at most once, refunds, and books every movement.

"At most once" rests on three keys, one per layer: the inbox (a redelivered command replays its
stored reply), the ``payments`` row keyed by order id with a unique idempotency key (a new command
for an order already paid answers the stored payment), and the provider's own dedupe on that
idempotency key (a call repeated after a lost answer returns the first charge).

What a charge attempt leaves, by what the provider did (see :mod:`actors.payments.contracts`):
captured or declined are stored as such; a provider that certainly did not take money (5xx
answers after retries, circuit open, connection refused) leaves ``failed``; a call whose answer
was lost (timeout) leaves ``pending``, resolved by the next :class:`Charge` or :class:`Refund` of
the order with the same key. Circuit open is therefore a fast, final "payments unavailable" for a
new order, and the orders saga cancels it -- it does not wait for the provider to heal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final

from actors.payments.contracts import Charge, GetPayment, Payment, PaymentStatus, Refund, charge_key
from actors.payments.gateway import (
    ProviderCall,
    ProviderGateway,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from actors.payments.provider import provider_url
from adapters.postgres import PostgresActor, transaction
from runtime.errors import InvalidError, NotFoundError, UnavailableError
from runtime.resilience import CallTimeoutError, CircuitOpenError, PolicyConfig, RetryConfig

if TYPE_CHECKING:
    import asyncpg

    from adapters.postgres import Connection
    from runtime.actor import Context, NodeContext

__all__ = ["Payments"]

_SELECT: Final = (
    "SELECT order_id, status, amount_cents, provider_ref, reason FROM payments"
    " WHERE order_id = $1 FOR UPDATE"
)
_UPSERT: Final = (
    "INSERT INTO payments (order_id, idempotency_key, user_id, amount_cents, status,"
    " provider_ref, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status,"
    " provider_ref = EXCLUDED.provider_ref, reason = EXCLUDED.reason, updated_at = now()"
)
_BOOK: Final = (
    "INSERT INTO ledger (order_id, kind, amount_cents, provider_ref) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (order_id, kind) DO NOTHING"
)
_UNAVAILABLE: Final = (CircuitOpenError, ProviderUnavailableError, OSError)


def _payment(row: asyncpg.Record) -> Payment:
    return Payment(
        order_id=row["order_id"],
        status=row["status"],
        amount_cents=row["amount_cents"],
        provider_ref=row["provider_ref"],
        reason=row["reason"],
    )


class Payments(PostgresActor):
    """Charges, refunds and the ledger (module docstring). Owns schema ``payments``.

    The provider is reached at ``PAYMENT_PROVIDER_URL`` (default ``http://127.0.0.1:8790``).
    """

    name = "payments"
    # `greenroom up` runs the provider stand-in beside this actor (runtime.cli.up.companion_specs).
    companion: ClassVar[tuple[str, str]] = ("payment-provider", "actors.payments.provider")
    # Named, not found beside the module: test subclasses live in other packages.
    migrations_package = "actors.payments.migrations"
    inbox = Charge | Refund | GetPayment
    concurrency = 16
    # A handler waits on the provider (with retries) inside its transaction; no whole-unit retry
    # on timeout, so a slow provider is not called a second time by the database policy.
    postgres_policy_config: ClassVar[PolicyConfig] = PolicyConfig(
        timeout_s=20.0, retry_on_timeout=False, retry=RetryConfig(max_attempts=2)
    )

    gateway: ProviderGateway

    async def on_start(self, ctx: NodeContext) -> None:
        """Postgres as every PostgresActor, then the provider client (no connection yet)."""
        await super().on_start(ctx)
        self.gateway = ProviderGateway(provider_url(), name=self.data_name or self.name)
        ctx.resources["provider"] = self.gateway

    async def on_stop(self, ctx: NodeContext) -> None:
        """Close the provider client, then Postgres."""
        gateway = getattr(self, "gateway", None)
        if gateway is not None:
            await gateway.aclose()
        await super().on_stop(ctx)

    async def charge(self, msg: Charge, ctx: Context) -> Payment:
        """Charge the order once and answer its payment (``captured``, ``declined``, ``failed``
        or ``pending``; an order already settled answers its stored payment unchanged).

        Raises:
            InvalidError: a non-positive amount, an empty order id or key.
        """
        if msg.amount_cents <= 0:
            raise InvalidError("amount_cents must be positive", field="$.amount_cents")
        if not msg.order_id or not msg.idempotency_key:
            raise InvalidError("order_id and idempotency_key are required", field="$.order_id")
        conn = transaction(ctx).conn
        existing = await self._locked(conn, msg.order_id)
        if existing is not None and existing.status != "pending":
            return existing
        call = ProviderCall()
        status: PaymentStatus
        ref = reason = ""
        try:
            answer = await self.gateway.charge(
                msg.idempotency_key, msg.amount_cents, msg.order_id, call
            )
        except (*_UNAVAILABLE, CallTimeoutError, ProviderRejectedError) as exc:
            unknown = call.ambiguous or existing is not None or isinstance(exc, CallTimeoutError)
            status = "pending" if unknown else "failed"
            reason = f"payments unavailable: {type(exc).__name__}"
            ctx.log.warning("payments.charge_failed", order_id=msg.order_id, status=status)
        else:
            status, ref, reason = answer.status_for_charge(), answer.charge_id, answer.reason
        await conn.execute(
            _UPSERT,
            msg.order_id,
            msg.idempotency_key,
            msg.user_id,
            msg.amount_cents,
            status,
            ref,
            reason,
        )
        if status == "captured":
            await conn.execute(_BOOK, msg.order_id, "charge", msg.amount_cents, ref)
        return Payment(
            order_id=msg.order_id,
            status=status,
            amount_cents=msg.amount_cents,
            provider_ref=ref,
            reason=reason,
        )

    async def refund(self, msg: Refund, ctx: Context) -> Payment:
        """Give back the order's money, or make sure none will be taken.

        ``captured`` (or ``pending``) -> the provider refunds or voids the key -> ``refunded`` /
        ``voided``; no payment yet -> a ``voided`` tombstone, so a late :class:`Charge` of the
        order is refused; anything else is final and answered unchanged.

        Raises:
            UnavailableError: the provider could not be reached; nothing changed, ask again.
        """
        conn = transaction(ctx).conn
        existing = await self._locked(conn, msg.order_id)
        if existing is None:
            await conn.execute(
                _UPSERT,
                msg.order_id,
                charge_key(msg.order_id),
                "",
                0,
                "voided",
                "",
                msg.reason or "voided before a charge",
            )
            return Payment(order_id=msg.order_id, status="voided", reason=msg.reason)
        if existing.status not in ("captured", "pending"):
            return existing
        key = await conn.fetchval(
            "SELECT idempotency_key FROM payments WHERE order_id = $1", msg.order_id
        )
        try:
            answer = await self.gateway.refund(key, ProviderCall())
        except (*_UNAVAILABLE, CallTimeoutError, ProviderRejectedError) as exc:
            raise UnavailableError(
                f"payment provider unavailable: {type(exc).__name__}", retry_after_s=1.0
            ) from exc
        status: PaymentStatus = "refunded" if answer.status == "refunded" else "voided"
        await conn.execute(
            "UPDATE payments SET status = $2, reason = $3, updated_at = now() WHERE order_id = $1",
            msg.order_id,
            status,
            msg.reason,
        )
        if status == "refunded":
            # A charge the provider took while we had it as pending is booked now, then undone.
            await conn.execute(_BOOK, msg.order_id, "charge", answer.amount_cents, answer.charge_id)
            await conn.execute(
                _BOOK, msg.order_id, "refund", -answer.amount_cents, answer.charge_id
            )
        return Payment(
            order_id=msg.order_id,
            status=status,
            amount_cents=existing.amount_cents,
            provider_ref=answer.charge_id,
            reason=msg.reason,
        )

    async def get_payment(self, msg: GetPayment, ctx: Context) -> Payment:
        """The order's payment. Raises NotFoundError if it has none."""
        row = await transaction(ctx).conn.fetchrow(
            "SELECT order_id, status, amount_cents, provider_ref, reason FROM payments"
            " WHERE order_id = $1",
            msg.order_id,
        )
        if row is None:
            raise NotFoundError(f"no payment for order {msg.order_id!r}", field="$.order_id")
        return _payment(row)

    @staticmethod
    async def _locked(conn: Connection, order_id: str) -> Payment | None:
        row = await conn.fetchrow(_SELECT, order_id)
        return None if row is None else _payment(row)
