"""The order state machine, as data: which transitions are allowed, and nothing else.

    PENDING ──reserve──▶ RESERVED ──charge──▶ CHARGED ──commit──▶ CONFIRMED
       │                    │                    │
       └────────────────────┴────────────────────┴──▶ CANCELLED (with a reason)

CONFIRMED and CANCELLED are final. Every transition the saga makes goes through
:func:`check_transition`, so a bug (or a message handled out of order) that would move an order
backwards fails loudly instead of corrupting it.
"""

from __future__ import annotations

from typing import Final, Literal

from runtime.errors import ConflictError

__all__ = [
    "FINAL_STATES",
    "TRANSITIONS",
    "IllegalTransitionError",
    "OrderState",
    "check_transition",
    "is_final",
]

OrderState = Literal["PENDING", "RESERVED", "CHARGED", "CONFIRMED", "CANCELLED"]

TRANSITIONS: Final[dict[OrderState, frozenset[OrderState]]] = {
    "PENDING": frozenset({"RESERVED", "CANCELLED"}),
    "RESERVED": frozenset({"CHARGED", "CANCELLED"}),
    "CHARGED": frozenset({"CONFIRMED", "CANCELLED"}),
    "CONFIRMED": frozenset(),
    "CANCELLED": frozenset(),
}

FINAL_STATES: Final = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)


class IllegalTransitionError(ConflictError):
    """A transition the state machine does not allow (a 409 if it ever reached a client)."""


def is_final(state: OrderState) -> bool:
    """True for CONFIRMED and CANCELLED: nothing happens to such an order any more."""
    return state in FINAL_STATES


def check_transition(current: OrderState, target: OrderState) -> OrderState:
    """Return ``target`` if an order in ``current`` may move to it.

    Raises:
        IllegalTransitionError: the move is not in :data:`TRANSITIONS`.
    """
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransitionError(f"an order cannot go from {current} to {target}")
    return target
