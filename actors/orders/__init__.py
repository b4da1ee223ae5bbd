"""The orders service: orders and the reserve -> charge -> confirm saga (``greenroom run orders``).

Owns the Postgres schema ``orders``; reached only over the bus on ``orders.commands`` and
publishes ``orders.events`` (contracts in :mod:`actors.orders.contracts`). It talks to inventory
and payments through their contracts only.
"""

from actors.orders.actor import Orders

__all__ = ["Orders"]
