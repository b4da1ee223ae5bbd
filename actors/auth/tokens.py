"""Access and refresh tokens: the pure parts, without Postgres.

* :class:`SigningKey`: an Ed25519 key pair. Its ``kid`` is the RFC 7638 JWK thumbprint of the
  public half, so the same key always has the same id on every replica.
* Access tokens (:meth:`SigningKey.mint`) are EdDSA JWTs with ``kid`` in the header and the claims
  the edge requires (``iss``, ``aud``, ``sub``, ``exp``) plus ``iat``, ``nbf``, ``jti``, ``roles``.
* Refresh tokens are 256 random bits, URL-safe; only their SHA-256 is stored. A slow hash is not
  needed (and would cost every refresh): guessing a 256-bit value is hopeless, unlike a password.
* :func:`refresh_verdict` is the rotation rule: a token can be exchanged once; presenting one
  that was already exchanged is *reuse*, the signal that it was copied, and revokes its family.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors.auth.contracts import TOKEN_AUDIENCE, TOKEN_ISSUER, PublicKey

__all__ = [
    "RefreshVerdict",
    "SigningKey",
    "StoredRefresh",
    "hash_refresh_token",
    "new_refresh_token",
    "refresh_verdict",
]

ALGORITHM = "EdDSA"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@final
@dataclass(frozen=True, slots=True)
class SigningKey:
    """One Ed25519 key pair that signs access tokens. Build with :meth:`generate` or
    :meth:`from_pem`; the private half never leaves auth (its schema and its process)."""

    private: Ed25519PrivateKey
    kid: str

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key pair."""
        return cls.of(Ed25519PrivateKey.generate())

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> SigningKey:
        """The key pair of ``private``, its ``kid`` the public key's RFC 7638 thumbprint."""
        x = _b64url(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )
        # RFC 7638: the required members only, sorted, no whitespace.
        canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
        return cls(private, _b64url(hashlib.sha256(canonical.encode()).digest()))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """The key pair stored as PKCS#8 PEM.

        Raises:
            ValueError: ``pem`` is not a PEM private key.
            TypeError: it is a private key of another kind than Ed25519.
        """
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise TypeError("stored signing key is not Ed25519")
        return cls.of(private)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, for auth's own schema only."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public(self) -> PublicKey:
        """The public half as a JWK, bound to ``EdDSA``."""
        x = _b64url(
            self.private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )
        return PublicKey(kid=self.kid, kty="OKP", crv="Ed25519", x=x, alg=ALGORITHM)

    def mint(
        self,
        subject: str,
        roles: Iterable[str],
        *,
        ttl_s: int,
        issuer: str = TOKEN_ISSUER,
        audience: str = TOKEN_AUDIENCE,
        now: float | None = None,
    ) -> str:
        """A signed access token for ``subject`` with ``roles``, valid ``ttl_s`` seconds."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
        }
        return jwt.encode(claims, self.private, algorithm=ALGORITHM, headers={"kid": self.kid})


def new_refresh_token() -> str:
    """A fresh refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    """What is stored and looked up for ``token`` (SHA-256; see the module docstring)."""
    return hashlib.sha256(token.encode()).digest()


class RefreshVerdict(Enum):
    """What presenting a refresh token leads to."""

    ROTATE = "rotate"
    """Valid: exchange it for a new pair and mark it used."""
    REUSED = "reused"
    """Already exchanged: someone holds a copy; revoke the whole family."""
    REVOKED = "revoked"
    """Logged out or revoked earlier: refuse, nothing more to do."""
    EXPIRED = "expired"
    """Past its lifetime: refuse."""
    UNKNOWN = "unknown"
    """Never issued (or forgotten): refuse."""


@dataclass(frozen=True, slots=True)
class StoredRefresh:
    """The state of a stored refresh token that decides its verdict."""

    expires_at: datetime
    rotated_at: datetime | None = None
    revoked_at: datetime | None = None


def refresh_verdict(stored: StoredRefresh | None, now: datetime) -> RefreshVerdict:
    """The verdict for presenting a token whose stored state is ``stored`` (None: not found).

    Revocation wins over rotation: a family revoked after a reuse refuses every member quietly,
    and a second reuse does not need to revoke again. Rotation wins over expiry: a copied token
    presented after its expiry is still evidence of theft.
    """
    if stored is None:
        return RefreshVerdict.UNKNOWN
    if stored.revoked_at is not None:
        return RefreshVerdict.REVOKED
    if stored.rotated_at is not None:
        return RefreshVerdict.REUSED
    if stored.expires_at <= now:
        return RefreshVerdict.EXPIRED
    return RefreshVerdict.ROTATE
