"""Restart strategies: which children are restarted when one of them fails (OTP strategies)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import final

__all__ = ["Strategy"]


@final
class Strategy(StrEnum):
    """Which siblings share a failed child's restart.

    Children are considered in start order; the supervisor stops the affected ones in reverse
    order, then starts them again in order.
    """

    ONE_FOR_ONE = "one_for_one"
    """Only the failed child: siblings are independent."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: each one depends on all the others."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and those started after it: later children depend on earlier ones."""

    def affected(self, order: Sequence[str], failed: str) -> tuple[str, ...]:
        """The ids to restart when ``failed`` fails, in start order (``failed`` included).

        Raises:
            ValueError: ``failed`` is not in ``order``.
        """
        index = list(order).index(failed)
        if self is Strategy.ONE_FOR_ONE:
            return (failed,)
        if self is Strategy.ONE_FOR_ALL:
            return tuple(order)
        return tuple(order[index:])
