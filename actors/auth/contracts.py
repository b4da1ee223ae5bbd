"""The auth service's key-set contracts: how other services (the edge) get its public keys.

The auth service signs access tokens; anyone verifying them asks it for the public half with
:class:`GetSigningKeys` on ``auth.commands`` and gets :class:`SigningKeys`, a JWKS-like list. Each
key names its ``kid`` (which tokens carry in their header) and the one ``alg`` it signs with, so a
verifier never lets a token choose how its own key is used.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["SERVICE", "GetSigningKeys", "PublicKey", "SigningKeys"]

SERVICE: Final = "auth"


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
