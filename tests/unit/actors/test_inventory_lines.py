"""Inventory's pure rules: how order lines are merged and validated, and totals in cents."""

from __future__ import annotations

import pytest

from actors.inventory.actor import merge_lines, order_total
from actors.inventory.contracts import MAX_QUANTITY, QuoteLine, ReservationLine, StockLine
from runtime.errors import InvalidError


def test_merge_sorts_by_product_so_lock_order_is_global() -> None:
    merged = merge_lines(
        [
            StockLine(product_id="z", quantity=1),
            StockLine(product_id="a", quantity=1),
            StockLine(product_id="z", quantity=2),
        ]
    )
    assert merged == [StockLine(product_id="a", quantity=1), StockLine(product_id="z", quantity=3)]


def test_merged_quantity_is_bounded_too() -> None:
    half = MAX_QUANTITY // 2 + 1
    with pytest.raises(InvalidError, match="at most"):
        merge_lines([StockLine(product_id="a", quantity=half)] * 2)


@pytest.mark.parametrize("quantity", [0, -1, MAX_QUANTITY + 1])
def test_quantity_out_of_range_is_invalid(quantity: int) -> None:
    with pytest.raises(InvalidError) as raised:
        merge_lines([StockLine(product_id="a", quantity=quantity)])
    assert raised.value.field == "$.lines[0].quantity"


def test_no_lines_is_invalid() -> None:
    with pytest.raises(InvalidError):
        merge_lines([])


def test_totals_are_integer_cents() -> None:
    lines = [
        QuoteLine(product_id="a", quantity=3, unit_price_cents=333),
        ReservationLine(product_id="b", quantity=1, unit_price_cents=1),
    ]
    total = order_total(lines)
    assert total == 1000
    assert isinstance(total, int)
