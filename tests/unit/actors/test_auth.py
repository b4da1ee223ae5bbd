"""The pure parts of auth: email and password rules, Argon2id hashes, token minting checked by
the edge's own verifier, the refresh rotation rule and the lockout rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from actors.auth.contracts import TOKEN_AUDIENCE, TOKEN_ISSUER, GetSigningKeys, SigningKeys
from actors.auth.passwords import PasswordHashes, check_password, normalise_email
from actors.auth.throttle import LoginThrottle
from actors.auth.tokens import (
    RefreshVerdict,
    SigningKey,
    StoredRefresh,
    hash_refresh_token,
    new_refresh_token,
    refresh_verdict,
)
from edge.auth import SigningKeyCache, TokenVerifier
from edge.config import EdgeConfig
from edge.errors import EdgeError
from runtime.errors import InvalidError

GOOD = "plum-Harbour-41-quietly"


# --- emails and passwords -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("  Ada@Example.COM ", "ada@example.com"),
        ("a.b+tag@sub.example.org", "a.b+tag@sub.example.org"),
    ],
)
def test_emails_are_normalised(given: str, normal: str) -> None:
    assert normalise_email(given) == normal


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "a b@example.com",
        "a..b@example.com",
        "ada@-example.com",
        f"{'a' * 65}@example.com",
    ],
)
def test_bad_emails_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidError) as caught:
        normalise_email(bad)
    assert caught.value.field == "email"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short-1A", "at least 12"),
        ("x" * 257, "at most 256"),
        ("abababababababab", "different characters"),
        ("Password1234", "too common"),
        ("grace.hopper-2024!", "email's name"),
    ],
)
def test_weak_passwords_are_refused_naming_the_field(password: str, why: str) -> None:
    with pytest.raises(InvalidError) as caught:
        check_password(password, "grace.hopper@example.com")
    assert caught.value.field == "password"
    assert why in caught.value.message


def test_a_long_varied_password_passes() -> None:
    check_password(GOOD, "ada@example.com")


async def test_argon2id_hash_verifies_only_the_right_password() -> None:
    hashes = PasswordHashes(time_cost=1, memory_kib=8_192, parallelism=1)
    stored = await hashes.hash(GOOD)
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert await hashes.hash(GOOD) != stored  # a fresh salt each time
    assert await hashes.verify(stored, GOOD)
    assert not await hashes.verify(stored, GOOD + "x")
    assert not await hashes.verify(None, GOOD)  # no account: false, after the same work
    assert not await hashes.verify("not a hash", GOOD)
    assert not hashes.needs_rehash(stored)
    assert PasswordHashes(time_cost=2, memory_kib=8_192, parallelism=1).needs_rehash(stored)


async def test_default_cost_is_memory_hard() -> None:
    stored = await PasswordHashes().hash(GOOD)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


# --- access tokens through the edge's verifier --------------------------------------------------


def verifier_for(*keys: SigningKey) -> TokenVerifier:
    async def fetch(_request: GetSigningKeys) -> SigningKeys:
        return SigningKeys(keys=tuple(k.public() for k in keys), issuer=TOKEN_ISSUER)

    # The edge's defaults: what auth's tokens must satisfy with no extra configuration.
    return TokenVerifier(EdgeConfig(), SigningKeyCache(fetch))


async def test_minted_token_passes_the_edges_verifier() -> None:
    key = SigningKey.generate()
    token = key.mint("user-7", ("customer", "admin"), ttl_s=60)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    principal = await verifier_for(key).verify(f"Bearer {token}")
    assert principal.subject == "user-7"
    assert principal.roles == {"customer", "admin"}
    assert principal.claims["iss"] == TOKEN_ISSUER
    assert principal.claims["aud"] == TOKEN_AUDIENCE
    assert principal.claims["jti"]


async def test_expired_or_foreign_tokens_are_refused() -> None:
    key = SigningKey.generate()
    verifier = verifier_for(key)
    with pytest.raises(EdgeError, match="expired"):
        await verifier.verify(f"Bearer {key.mint('u', (), ttl_s=60, now=0)}")
    impostor = SigningKey(SigningKey.generate().private, key.kid)  # right kid, wrong key
    with pytest.raises(EdgeError, match="invalid token"):
        await verifier.verify(f"Bearer {impostor.mint('u', (), ttl_s=60)}")
    with pytest.raises(EdgeError, match="audience"):
        await verifier.verify(f"Bearer {key.mint('u', (), ttl_s=60, audience='elsewhere')}")


def test_kid_is_the_public_keys_thumbprint_and_survives_storage() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.private_pem())
    assert again.kid == key.kid
    assert again.public() == key.public()
    assert SigningKey.generate().kid != key.kid
    jwk = key.public().to_jwk()
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert "d" not in jwk  # the private part is never published


def test_rfc8037_thumbprint_example() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 public key.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = SigningKey.of(Ed25519PrivateKey.from_private_bytes(seed))
    assert key.public().x == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


# --- refresh tokens -------------------------------------------------------------------------------


def test_refresh_tokens_are_random_and_stored_as_digests() -> None:
    first, second = new_refresh_token(), new_refresh_token()
    assert first != second
    assert len(first) >= 43  # 256 bits, URL-safe base64
    assert hash_refresh_token(first) == hash_refresh_token(first)
    assert first.encode() not in hash_refresh_token(first)


NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("stored", "verdict"),
    [
        (None, RefreshVerdict.UNKNOWN),
        (StoredRefresh(expires_at=LATER), RefreshVerdict.ROTATE),
        (StoredRefresh(expires_at=NOW), RefreshVerdict.EXPIRED),
        (StoredRefresh(expires_at=LATER, rotated_at=NOW), RefreshVerdict.REUSED),
        # A copied token is evidence of theft even once it has expired.
        (StoredRefresh(expires_at=NOW - timedelta(1), rotated_at=NOW), RefreshVerdict.REUSED),
        # Once the family is revoked, nothing is left to revoke.
        (StoredRefresh(expires_at=LATER, rotated_at=NOW, revoked_at=NOW), RefreshVerdict.REVOKED),
        (StoredRefresh(expires_at=LATER, revoked_at=NOW), RefreshVerdict.REVOKED),
    ],
)
def test_refresh_verdicts(stored: StoredRefresh | None, verdict: RefreshVerdict) -> None:
    assert refresh_verdict(stored, NOW) is verdict


# --- lockout --------------------------------------------------------------------------------------


def test_lockout_after_max_failures_until_the_oldest_ages_out() -> None:
    rule = LoginThrottle(max_failures=5, window_s=900)
    assert rule.retry_after_s(0, 0) == 0
    assert rule.retry_after_s(4, 800) == 0
    assert rule.retry_after_s(5, 100) == 800
    assert rule.retry_after_s(5, 899.5) == 1  # never "retry after 0" while locked
