"""The shop's actors with data names of their own, so a chaos run never touches another run's
(or a developer's) schemas, Redis users or buckets. ``CHAOS_DATA_PREFIX`` (unique per test) is
read when a node imports this module; the actors' names, and so their topics, are unchanged.
"""

from __future__ import annotations

import os

from actors.auth.actor import Auth
from actors.inventory import Inventory
from actors.orders import Orders
from actors.payments import Payments

PREFIX = os.environ.get("CHAOS_DATA_PREFIX", "chaos")


class ChaosAuth(Auth):
    data_name = f"{PREFIX}_auth"


class ChaosInventory(Inventory):
    data_name = f"{PREFIX}_inventory"


class ChaosOrders(Orders):
    data_name = f"{PREFIX}_orders"


class ChaosPayments(Payments):
    data_name = f"{PREFIX}_payments"


SHOP = {
    "auth": ChaosAuth,
    "inventory": ChaosInventory,
    "orders": ChaosOrders,
    "payments": ChaosPayments,
}
