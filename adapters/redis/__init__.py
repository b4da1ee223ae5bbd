"""Redis for actors (redis.asyncio): an ACL user per actor, a key-prefixing client behind the
``redis`` policy, and cache-aside with single flight. Importing this package imports redis."""

from adapters.redis.cache import Cache
from adapters.redis.client import CACHE_POLICY, ActorRedis, redis_policy
from adapters.redis.provision import (
    ACL_COMMAND_RULES,
    RedisCredentials,
    actor_redis_credentials,
    drop_redis_user,
    provision_redis_user,
)

__all__ = [
    "ACL_COMMAND_RULES",
    "CACHE_POLICY",
    "ActorRedis",
    "Cache",
    "RedisCredentials",
    "actor_redis_credentials",
    "drop_redis_user",
    "provision_redis_user",
    "redis_policy",
]
