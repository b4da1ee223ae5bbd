"""The inventory service: products, stock and order reservations (``greenroom run inventory``).

Owns the Postgres schema ``inventory`` and the Redis key space ``inventory:``; reached only over
the bus on ``inventory.commands`` (contracts in :mod:`actors.inventory.contracts`).
"""

from actors.inventory.actor import Inventory

__all__ = ["Inventory"]
