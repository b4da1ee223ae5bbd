"""The order state machine and the pure parts of placing an order."""

from __future__ import annotations

import inspect
import itertools

import msgspec
import pytest

from actors.orders.actor import merge_order_lines
from actors.orders.contracts import AdvanceOrder, Order, OrderLine, PlaceOrder, PricedLine
from actors.orders.states import (
    FINAL_STATES,
    TRANSITIONS,
    IllegalTransitionError,
    check_transition,
    is_final,
)
from runtime.errors import ConflictError, InvalidError

HAPPY_PATH = ["PENDING", "RESERVED", "CHARGED", "CONFIRMED"]


def test_the_happy_path_is_allowed_step_by_step() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        assert check_transition(current, target) == target  # type: ignore[arg-type]


@pytest.mark.parametrize("state", ["PENDING", "RESERVED", "CHARGED"])
def test_every_state_in_flight_can_be_cancelled(state: str) -> None:
    assert check_transition(state, "CANCELLED") == "CANCELLED"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("PENDING", "CHARGED"),  # skipping the reservation
        ("PENDING", "CONFIRMED"),
        ("RESERVED", "PENDING"),  # backwards
        ("CHARGED", "RESERVED"),
        ("CONFIRMED", "CANCELLED"),  # final states stay final
        ("CANCELLED", "CONFIRMED"),
        ("CANCELLED", "CANCELLED"),
    ],
)
def test_other_transitions_are_refused(current: str, target: str) -> None:
    with pytest.raises(IllegalTransitionError, match=f"from {current} to {target}"):
        check_transition(current, target)  # type: ignore[arg-type]


def test_illegal_transition_is_a_conflict() -> None:
    assert issubclass(IllegalTransitionError, ConflictError)


def test_final_states() -> None:
    assert frozenset({"CONFIRMED", "CANCELLED"}) == FINAL_STATES
    assert all(is_final(s) == (not TRANSITIONS[s]) for s in TRANSITIONS)


def test_lines_are_merged_per_product_in_product_order() -> None:
    merged = merge_order_lines(
        [
            OrderLine(product_id="b", quantity=1),
            OrderLine(product_id="a", quantity=2),
            OrderLine(product_id="b", quantity=3),
        ]
    )
    assert [(x.product_id, x.quantity) for x in merged] == [("a", 2), ("b", 4)]


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([], "$.lines"),
        ([OrderLine(product_id="", quantity=1)], "$.lines[0].product_id"),
        ([OrderLine(product_id="a", quantity=0)], "$.lines[0].quantity"),
        (
            [OrderLine(product_id="a", quantity=1), OrderLine(product_id="b", quantity=-2)],
            "$.lines[1].quantity",
        ),
        ([OrderLine(product_id=f"p{i}", quantity=1) for i in range(51)], "$.lines"),
    ],
)
def test_bad_lines_name_the_field(lines: list[OrderLine], field: str) -> None:
    with pytest.raises(InvalidError) as raised:
        merge_order_lines(lines)
    assert raised.value.field == field


@pytest.mark.parametrize("contract", [PlaceOrder, AdvanceOrder, Order])
def test_contracts_are_frozen_tagged_and_keyword_only(contract: type[msgspec.Struct]) -> None:
    config = contract.__struct_config__
    assert config.frozen
    params = inspect.signature(contract).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert isinstance(config.tag, str)
    assert config.tag.startswith("orders.")


def test_an_order_round_trips_with_integer_cents() -> None:
    order = Order(
        order_id="o",
        user_id="u",
        state="CONFIRMED",
        lines=(PricedLine(product_id="p", quantity=3, unit_price_cents=333),),
        total_cents=999,
    )
    decoded = msgspec.json.decode(msgspec.json.encode(order), type=Order)
    assert decoded == order
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(order).replace(b"999", b"9.99"), type=Order)
