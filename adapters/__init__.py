"""Adapters: each actor's own Postgres schema, Redis key space and object-storage bucket.

Every adapter wraps its client in the actor's :class:`runtime.resilience.ResiliencePolicy` for that
dependency, with the client's errors classified (:mod:`adapters.errors`). Subpackages import their
heavy client (asyncpg, redis, aiobotocore) only when they are imported themselves:

- :mod:`adapters.postgres`: role + schema per actor, migrations, transactions, inbox/outbox;
- :mod:`adapters.redis`: ACL user per actor, a key-prefixing client, cache-aside;
- :mod:`adapters.storage`: bucket + credentials per actor, streamed get, multipart put.
"""

from adapters._names import ActorNames, InvalidNameError, derive_secret

__all__ = ["ActorNames", "InvalidNameError", "derive_secret"]
