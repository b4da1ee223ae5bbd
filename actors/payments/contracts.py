"""The payments service's contracts: charging an order once, refunding it, reading its payment.

Commands go to ``payments.commands``. Money is integer cents. One order has at most one payment:
its row is keyed by the order id and the provider is called with an idempotency key derived from
it (:func:`charge_key`), so a repeated :class:`Charge` answers the stored outcome instead of
charging again.

Payment status:

- ``captured``: the money was taken (a ``charge`` ledger entry exists);
- ``declined``: the provider refused the card; final;
- ``failed``: the provider could not be used (it answered errors, or its circuit is open) and
  certainly did not take money; final for this order;
- ``pending``: the provider did not answer in time, so it may have taken money; asking again
  resolves it with the provider (same key) -- callers retry later;
- ``refunded``: captured, then given back (a ``refund`` ledger entry exists);
- ``voided``: cancelled before any money was taken; a later charge for the order is refused.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = ["SERVICE", "Charge", "GetPayment", "Payment", "PaymentStatus", "Refund", "charge_key"]

SERVICE: Final = "payments"

PaymentStatus = Literal["captured", "declined", "failed", "pending", "refunded", "voided"]


def charge_key(order_id: str) -> str:
    """The idempotency key of an order's charge (the one the provider sees)."""
    return f"order-{order_id}-charge"


class Charge(msgspec.Struct, frozen=True, kw_only=True, tag="payments.Charge"):
    """Charge ``amount_cents`` for ``order_id`` once; ``idempotency_key`` is usually
    :func:`charge_key` of the order."""

    order_id: str
    user_id: str
    amount_cents: int
    idempotency_key: str


class Refund(msgspec.Struct, frozen=True, kw_only=True, tag="payments.Refund"):
    """Give back the order's charge, or void the order's payment if nothing was taken."""

    order_id: str
    reason: str = ""


class GetPayment(msgspec.Struct, frozen=True, kw_only=True, tag="payments.GetPayment"):
    """Read the order's payment."""

    order_id: str


class Payment(msgspec.Struct, frozen=True, kw_only=True, tag="payments.Payment"):
    """An order's payment (see the module docstring for ``status``)."""

    order_id: str
    status: PaymentStatus
    amount_cents: int = 0
    provider_ref: str = ""
    reason: str = ""
