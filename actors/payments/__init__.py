"""The payments service: charges once per order, refunds, a ledger (``greenroom run payments``).

Owns the Postgres schema ``payments``; reached only over the bus on ``payments.commands``
(contracts in :mod:`actors.payments.contracts`). Calls the payment provider -- in development the
stand-in :mod:`actors.payments.provider`, run as its own process -- through a circuit breaker.
"""

from actors.payments.actor import Payments

__all__ = ["Payments"]
