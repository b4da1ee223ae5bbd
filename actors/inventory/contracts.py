"""The inventory service's contracts: products, stock, and reservations held for orders.

Commands go to ``inventory.commands``; every reply below answers one of them. Money is integer
cents, quantities whole units. Reservations are keyed by the order id and are idempotent per
order id for *every* outcome: asking again for an order that was reserved, rejected, released or
committed answers with the same outcome instead of acting again, so a late or repeated request
(redelivery, a saga step run twice) can neither reserve twice nor resurrect a released order.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "SERVICE",
    "CommitReservation",
    "CreateProduct",
    "GetProduct",
    "ListProducts",
    "Product",
    "ProductPage",
    "Quote",
    "QuoteLine",
    "QuoteOrder",
    "ReleaseReservation",
    "ReservationLine",
    "ReservationState",
    "ReservationStatus",
    "ReserveStock",
    "Restock",
    "StockLine",
]

SERVICE: Final = "inventory"

ReservationStatus = Literal["reserved", "committed", "released", "rejected"]

MAX_QUANTITY: Final = 10_000
"""Largest quantity of one product a single order line or restock may name."""


class StockLine(msgspec.Struct, frozen=True, kw_only=True):
    """One product and how many units of it."""

    product_id: str
    quantity: int


class CreateProduct(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.CreateProduct"):
    """Admin: add a product with a price (cents) and an initial stock (units)."""

    name: str
    price_cents: int
    stock: int = 0
    description: str = ""


class Restock(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.Restock"):
    """Admin: add ``quantity`` units to a product's available stock."""

    product_id: str
    quantity: int


class GetProduct(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.GetProduct"):
    """Read one product."""

    product_id: str


class ListProducts(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.ListProducts"):
    """A page of products in id order; ``cursor`` is the ``next_cursor`` of the previous page."""

    limit: int = 20
    cursor: str = ""


class Product(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.Product"):
    """A product and its stock: ``available`` can be ordered, ``reserved`` is held for orders in
    flight, ``sold`` was committed by confirmed orders."""

    product_id: str
    name: str
    description: str
    price_cents: int
    available: int
    reserved: int
    sold: int


class ProductPage(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.ProductPage"):
    """One page of products; ``next_cursor`` is empty on the last page."""

    items: tuple[Product, ...]
    next_cursor: str = ""


class QuoteOrder(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.QuoteOrder"):
    """Price ``lines`` and check that they are available now, reserving nothing (advisory)."""

    lines: tuple[StockLine, ...]


class QuoteLine(msgspec.Struct, frozen=True, kw_only=True):
    """One priced line."""

    product_id: str
    quantity: int
    unit_price_cents: int


class Quote(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.Quote"):
    """The priced lines and their total (cents)."""

    lines: tuple[QuoteLine, ...]
    total_cents: int


class ReserveStock(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.ReserveStock"):
    """Hold every line for ``order_id``, all or nothing."""

    order_id: str
    lines: tuple[StockLine, ...]


class CommitReservation(
    msgspec.Struct, frozen=True, kw_only=True, tag="inventory.CommitReservation"
):
    """The order is paid: the held units become sold."""

    order_id: str


class ReleaseReservation(
    msgspec.Struct, frozen=True, kw_only=True, tag="inventory.ReleaseReservation"
):
    """The order will not complete: give the held units back (a tombstone if none were held)."""

    order_id: str


class ReservationLine(msgspec.Struct, frozen=True, kw_only=True):
    """One reserved line, at the price it was reserved at."""

    product_id: str
    quantity: int
    unit_price_cents: int


class ReservationState(msgspec.Struct, frozen=True, kw_only=True, tag="inventory.ReservationState"):
    """Where an order's reservation stands. ``reason`` says why it was ``rejected``."""

    order_id: str
    status: ReservationStatus
    lines: tuple[ReservationLine, ...] = ()
    total_cents: int = 0
    reason: str = ""
