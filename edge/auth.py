"""Bearer-token verification done by the edge itself, with keys from the auth service.

:class:`SigningKeyCache` asks the auth service for its public keys over the bus
(:class:`~actors.auth.contracts.GetSigningKeys`), keeps them for ``key_cache_ttl_s`` and refreshes
early when a token names an unknown ``kid`` -- at most once per ``key_refresh_min_interval_s``,
and one refresh at a time, so a flood of tokens with made-up kids costs the auth service at most
one request per interval.

:class:`TokenVerifier` accepts a token only if its header names an allowed asymmetric algorithm
and a ``kid``, that key exists and is bound to the same algorithm, the signature verifies, and
``iss``, ``aud``, ``exp`` and ``sub`` are present and right (``exp``/``nbf`` with a small leeway).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

import anyio
import jwt

from actors.auth.contracts import GetSigningKeys, SigningKeys
from edge.config import EdgeConfig
from edge.errors import EdgeError
from runtime.errors import DomainError, UnavailableError
from runtime.logging import get_logger

__all__ = ["KeyFetcher", "Principal", "SigningKeyCache", "TokenVerifier"]

# Symmetric and unsigned algorithms are refused even if configured: the edge holds only public
# keys, and accepting HS* with a public key as the secret is the classic key-confusion attack.
_NEVER: Final = frozenset({"none", "HS256", "HS384", "HS512"})

KeyFetcher = Callable[[GetSigningKeys], Awaitable[SigningKeys]]
"""Fetches the key set; the edge passes one that asks the auth service through its Requester."""


def _log() -> Any:
    # Looked up per use, not bound at import: a logger bound before configure_logging() keeps
    # structlog's default configuration (stdout, console format) for good.
    return get_logger("edge.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request: the token's subject, its roles and all verified claims."""

    subject: str
    roles: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)


def _unauthorized(message: str) -> EdgeError:
    return EdgeError(
        "unauthorized", message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


@final
class SigningKeyCache:
    """The auth service's public keys by ``kid``, refreshed on expiry and on unknown kids."""

    def __init__(
        self,
        fetch: KeyFetcher,
        *,
        ttl_s: float = 300.0,
        min_refresh_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._min_interval_s = min_refresh_interval_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = anyio.Lock()
        self.refreshes = 0
        """How many times keys were fetched from the auth service (tests and metrics read it)."""

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid``, or None if the auth service does not know it (after a refresh).

        Raises:
            UnavailableError: no keys are cached and the auth service cannot be asked.
        """
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._ttl_s
        key = self._keys.get(kid)
        if key is not None and not stale:
            return key
        await self._refresh(force=key is None and not stale)
        return self._keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        attempted = self._attempted_at
        async with self._lock:
            if self._attempted_at != attempted:
                return  # someone refreshed while we waited for the lock: use their result
            now = self._clock()
            if (
                force
                and self._attempted_at is not None
                and now - self._attempted_at < self._min_interval_s
            ):
                return  # an unknown kid may refresh at most once per interval
            self._attempted_at = now
            try:
                reply = await self._fetch(GetSigningKeys())
            except DomainError as exc:
                if not self._keys:
                    raise UnavailableError(
                        f"signing keys unavailable: {exc}", retry_after_s=self._min_interval_s
                    ) from exc
                # Keep verifying with the keys we have; the auth service may be restarting.
                _log().warning("signing key refresh failed; keeping cached keys", error=str(exc))
                return
            keys: dict[str, jwt.PyJWK] = {}
            for public in reply.keys:
                try:
                    keys[public.kid] = jwt.PyJWK(public.to_jwk(), algorithm=public.alg)
                except jwt.PyJWKError as exc:
                    _log().warning("unusable signing key skipped", kid=public.kid, error=str(exc))
            self._keys = keys
            self._fetched_at = now
            self.refreshes += 1


@final
class TokenVerifier:
    """Verifies bearer tokens against the auth service's keys (see the module docstring)."""

    def __init__(self, config: EdgeConfig, keys: SigningKeyCache) -> None:
        self._issuer = config.jwt_issuer
        self._audience = config.jwt_audience
        self._leeway = config.jwt_leeway_s
        self._algorithms = frozenset(config.jwt_algorithms) - _NEVER
        self._keys = keys

    async def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <jwt>`` header value.

        Raises:
            EdgeError: ``unauthorized`` when the header is missing or the token is not acceptable
                for any reason (the message says which, without echoing the token).
            UnavailableError: the keys cannot be obtained from the auth service.
        """
        if not authorization:
            raise _unauthorized("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("authorization must be 'Bearer <token>'")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _unauthorized(f"token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _unauthorized("token has no key id (kid)")
        key = await self._keys.get(kid)
        if key is None:
            raise _unauthorized("token signed with an unknown key")
        if key.algorithm_name != alg:
            raise _unauthorized("token algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise _unauthorized("token audience is not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise _unauthorized("token issuer is not accepted") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {type(exc).__name__}") from exc
        roles = claims.get("roles", ())
        return Principal(
            subject=str(claims["sub"]),
            roles=frozenset(r for r in roles if isinstance(r, str))
            if isinstance(roles, list | tuple)
            else frozenset(),
            claims=claims,
        )
