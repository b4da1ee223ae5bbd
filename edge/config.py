"""Edge-only settings: token rules, rate limits, body limit, idempotency.

These live apart from :class:`runtime.config.Settings` because only the gateway uses them; the
``greenroom edge`` command fills them from its flags. Defaults suit development.
"""

from __future__ import annotations

import msgspec

__all__ = ["EdgeConfig"]


class EdgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the edge checks tokens, limits clients and remembers idempotent POSTs.

    * ``jwt_algorithms`` is the allow-list; symmetric (``HS*``) and ``none`` are never accepted,
      whatever this says, because the edge only holds public keys.
    * ``key_refresh_min_interval_s`` bounds how often an unknown ``kid`` may trigger a key
      refresh from the auth service, so a flood of made-up kids cannot hammer it.
    * Rate limits are fixed windows of ``rate_window_s`` per client IP and per token subject,
      counted in Redis so every edge replica shares them. ``0`` disables a limit.
    """

    jwt_issuer: str = "greenroom-auth"
    jwt_audience: str = "greenroom"
    jwt_algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
    jwt_leeway_s: float = 30.0
    key_cache_ttl_s: float = 300.0
    key_refresh_min_interval_s: float = 5.0
    auth_service: str = "auth"

    max_body_bytes: int = 1_048_576
    rate_window_s: int = 60
    rate_limit_per_ip: int = 600
    rate_limit_per_subject: int = 300
    rate_limit_fail_open: bool = True

    redis_prefix: str = "greenroom:edge:"
    idempotency_ttl_s: int = 86_400
    trust_forwarded_for: bool = False
