"""Greenroom runtime: the domain-free actor runtime (messages, bus, supervision, resilience, CLI).

Heavy clients (aiokafka, asyncpg, redis, aiobotocore) are imported only by the modules that use
them, so importing ``runtime`` stays cheap.
"""

from runtime.messages import Envelope, new_id

__all__ = ["Envelope", "new_id"]
