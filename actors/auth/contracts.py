"""The auth service's contracts: accounts, tokens, roles, and the key set verifiers use.

Commands go to ``auth.commands``; the one event, :class:`UserRegistered`, goes to ``auth.events``
through auth's outbox. ``auth.events`` carries *only* that event: a subscriber's runtime
dead-letters a type it has no handler for, so a new event type here means a handler in every
subscriber first.

Key set: anyone verifying tokens asks with :class:`GetSigningKeys` and gets :class:`SigningKeys`,
a JWKS-like list. Each key names its ``kid`` (which tokens carry in their header) and the one
``alg`` it signs with, so a verifier never lets a token choose how its own key is used.

Access tokens are JWTs signed with EdDSA (Ed25519) carrying ``iss`` = :data:`TOKEN_ISSUER`,
``aud`` = :data:`TOKEN_AUDIENCE` (the edge's defaults, ``edge.config.EdgeConfig``), ``sub`` (the
user id), ``exp``, ``iat``, ``nbf``, ``jti`` and ``roles`` (a list of :data:`Role`).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "ROLES",
    "SERVICE",
    "TOKEN_AUDIENCE",
    "TOKEN_ISSUER",
    "GetSigningKeys",
    "GrantRole",
    "LoggedOut",
    "Login",
    "Logout",
    "PublicKey",
    "Refresh",
    "Register",
    "Registered",
    "Role",
    "RoleGranted",
    "SigningKeys",
    "TokenPair",
    "UserRegistered",
]

SERVICE: Final = "auth"
TOKEN_ISSUER: Final = "greenroom-auth"  # noqa: S105 - a claim value, not a secret
"""``iss`` of every access token; the edge's default ``jwt_issuer``."""
TOKEN_AUDIENCE: Final = "greenroom"  # noqa: S105 - a claim value, not a secret
"""``aud`` of every access token; the edge's default ``jwt_audience``."""

Role = Literal["customer", "admin"]
ROLES: Final[tuple[Role, ...]] = ("customer", "admin")


# --- key set ---------------------------------------------------------------------------------


class GetSigningKeys(msgspec.Struct, frozen=True, kw_only=True, tag="auth.GetSigningKeys"):
    """Ask for the current public signing keys. ``kid`` is a hint: the key a caller looks for."""

    kid: str = ""


class PublicKey(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One public key as a JSON Web Key (RFC 7517): ``OKP``/``EC`` use crv+x(+y), ``RSA`` n+e."""

    kid: str
    kty: str
    alg: str
    use: str = "sig"
    crv: str = ""
    x: str = ""
    y: str = ""
    n: str = ""
    e: str = ""

    def to_jwk(self) -> dict[str, str]:
        """The key as a JWK dict (empty members left out), as JOSE libraries take it."""
        return {name: value for name in self.__struct_fields__ if (value := getattr(self, name))}


class SigningKeys(msgspec.Struct, frozen=True, kw_only=True, tag="auth.SigningKeys"):
    """The keys tokens may currently be signed with (the active one and any still valid)."""

    keys: tuple[PublicKey, ...]
    issuer: str = ""


# --- accounts --------------------------------------------------------------------------------


class Register(msgspec.Struct, frozen=True, kw_only=True, tag="auth.Register"):
    """Create an account. The password must be 12-256 characters and not all one kind of
    character (see ``actors.auth.passwords``); ``email`` is compared case-insensitively."""

    email: str
    password: str


class Registered(msgspec.Struct, frozen=True, kw_only=True, tag="auth.Registered"):
    """The new account: its id (the ``sub`` of its tokens), normalised email and roles."""

    user_id: str
    email: str
    roles: tuple[Role, ...]


class UserRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="auth.UserRegistered"):
    """Event on ``auth.events``: an account was created (keyed by ``user_id``)."""

    user_id: str
    email: str
    registered_at_ms: int


# --- sessions --------------------------------------------------------------------------------


class Login(msgspec.Struct, frozen=True, kw_only=True, tag="auth.Login"):
    """Exchange email and password for a :class:`TokenPair`."""

    email: str
    password: str


class Refresh(msgspec.Struct, frozen=True, kw_only=True, tag="auth.Refresh"):
    """Exchange a refresh token for a new :class:`TokenPair`; the one given stops working."""

    refresh_token: str


class TokenPair(msgspec.Struct, frozen=True, kw_only=True, tag="auth.TokenPair"):
    """A short-lived access token (JWT, send as ``Authorization: Bearer``) and the refresh token
    that replaces it once (opaque; keep it secret, it is shown only this once)."""

    access_token: str
    refresh_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int
    """Seconds the access token is valid for."""
    refresh_expires_in: int
    user_id: str
    roles: tuple[Role, ...]


class Logout(msgspec.Struct, frozen=True, kw_only=True, tag="auth.Logout"):
    """Revoke the session of ``refresh_token`` (its whole rotation family), or with
    ``all_sessions`` every session of the user. ``user_id`` is the caller (the edge fills it
    from the access token), and must own the refresh token."""

    user_id: str = ""
    refresh_token: str = ""
    all_sessions: bool = False


class LoggedOut(msgspec.Struct, frozen=True, kw_only=True, tag="auth.LoggedOut"):
    """How many refresh tokens were revoked (0 when they already were)."""

    revoked: int


# --- roles -----------------------------------------------------------------------------------


class GrantRole(msgspec.Struct, frozen=True, kw_only=True, tag="auth.GrantRole"):
    """Give the account ``email`` the role ``role``. ``actor_id`` is the caller (the edge fills it
    from the access token) and must itself hold ``admin``. Takes effect at the account's next
    login or refresh."""

    actor_id: str = ""
    email: str
    role: Role


class RoleGranted(msgspec.Struct, frozen=True, kw_only=True, tag="auth.RoleGranted"):
    """The account's roles after the grant."""

    user_id: str
    email: str
    roles: tuple[Role, ...]
