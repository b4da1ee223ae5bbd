"""The shop's actors with data names of their own, so a chaos run never touches another run's
(or a developer's) schemas, Redis users or buckets. ``CHAOS_DATA_PREFIX`` (unique per test) is
read when a node imports this module; the actors' names, and so their topics, are unchanged.

``CHAOS_FAST_BREAKER=1`` gives :class:`ChaosFiles`'s bucket the suite's fast policy
(:data:`tests.chaos.actors.FAST_BREAKER`: 1 s call timeout, a breaker that opens for 2 s), so S3's
storage leg sees it trip and recover within seconds. The other actors keep their product
policies: :class:`ChaosInventory` and :class:`ChaosUsers` use the shipped cache policy for Redis.
"""

from __future__ import annotations

import os

from actors.auth.actor import Auth
from actors.files.actor import Files
from actors.inventory import Inventory
from actors.orders import Orders
from actors.payments import Payments
from actors.users.actor import Users
from tests.chaos.actors import FAST_BREAKER

PREFIX = os.environ.get("CHAOS_DATA_PREFIX", "chaos")


class ChaosAuth(Auth):
    data_name = f"{PREFIX}_auth"


class ChaosInventory(Inventory):
    data_name = f"{PREFIX}_inventory"


class ChaosOrders(Orders):
    data_name = f"{PREFIX}_orders"


class ChaosPayments(Payments):
    data_name = f"{PREFIX}_payments"


class ChaosUsers(Users):
    data_name = f"{PREFIX}_users"


class ChaosFiles(Files):
    data_name = f"{PREFIX}_files"
    if os.environ.get("CHAOS_FAST_BREAKER") == "1":
        s3_policy_config = FAST_BREAKER


SHOP = {
    "auth": ChaosAuth,
    "inventory": ChaosInventory,
    "orders": ChaosOrders,
    "payments": ChaosPayments,
}
