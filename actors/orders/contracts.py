"""The orders service's contracts: placing and reading orders, its saga step, its events.

Commands go to ``orders.commands``; events (:class:`OrderPlaced`, :class:`OrderConfirmed`,
:class:`OrderCancelled`) are published on ``orders.events`` through the outbox, keyed by order
id. Money is integer cents. :class:`AdvanceOrder` is the saga's own step command: the service
sends it to itself (see :mod:`actors.orders.actor`); other services have no reason to send it,
but doing so is harmless -- a step only ever moves an order forward along its state machine.
"""

from __future__ import annotations

from typing import Final

import msgspec

from actors.orders.states import OrderState

__all__ = [
    "SERVICE",
    "AdvanceOrder",
    "GetAnyOrder",
    "GetOrder",
    "ListOrders",
    "Order",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderLine",
    "OrderPage",
    "OrderPlaced",
    "PlaceOrder",
    "PricedLine",
]

SERVICE: Final = "orders"
MAX_LINES: Final = 50


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    """A product and how many units of it the customer wants."""

    product_id: str
    quantity: int


class PricedLine(msgspec.Struct, frozen=True, kw_only=True):
    """An order line at the unit price the order was placed at (cents)."""

    product_id: str
    quantity: int
    unit_price_cents: int


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True, tag="orders.PlaceOrder"):
    """Order ``lines`` for ``user_id`` (the edge sets it from the token)."""

    user_id: str
    lines: tuple[OrderLine, ...]


class GetOrder(msgspec.Struct, frozen=True, kw_only=True, tag="orders.GetOrder"):
    """Read one of ``user_id``'s orders."""

    order_id: str
    user_id: str


class GetAnyOrder(msgspec.Struct, frozen=True, kw_only=True, tag="orders.GetAnyOrder"):
    """Read any order (admin)."""

    order_id: str


class ListOrders(msgspec.Struct, frozen=True, kw_only=True, tag="orders.ListOrders"):
    """``user_id``'s orders, newest first; ``cursor`` is the previous page's ``next_cursor``."""

    user_id: str
    limit: int = 20
    cursor: str = ""


class AdvanceOrder(msgspec.Struct, frozen=True, kw_only=True, tag="orders.AdvanceOrder"):
    """Saga step: take the order one step further from the state it is in."""

    order_id: str


class Order(msgspec.Struct, frozen=True, kw_only=True, tag="orders.Order"):
    """An order and where it stands; ``reason`` says why it was cancelled. Times are epoch ms."""

    order_id: str
    user_id: str
    state: OrderState
    lines: tuple[PricedLine, ...]
    total_cents: int
    reason: str = ""
    created_at_ms: int = 0
    updated_at_ms: int = 0


class OrderPage(msgspec.Struct, frozen=True, kw_only=True, tag="orders.OrderPage"):
    """One page of orders; ``next_cursor`` is empty on the last page."""

    items: tuple[Order, ...]
    next_cursor: str = ""


class OrderPlaced(msgspec.Struct, frozen=True, kw_only=True, tag="orders.OrderPlaced"):
    """An order was accepted (PENDING); its saga has started."""

    order_id: str
    user_id: str
    lines: tuple[PricedLine, ...]
    total_cents: int


class OrderConfirmed(msgspec.Struct, frozen=True, kw_only=True, tag="orders.OrderConfirmed"):
    """The order's stock is sold and its payment captured."""

    order_id: str
    user_id: str
    total_cents: int


class OrderCancelled(msgspec.Struct, frozen=True, kw_only=True, tag="orders.OrderCancelled"):
    """The order will not be fulfilled; anything held for it was released or refunded."""

    order_id: str
    user_id: str
    reason: str
