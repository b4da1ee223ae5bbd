"""Emails and passwords: what auth accepts, and how passwords are stored (Argon2id).

The password policy follows NIST SP 800-63B rather than composition rules: long enough
(:data:`MIN_PASSWORD_LENGTH`), bounded (:data:`MAX_PASSWORD_LENGTH`, so a request cannot make the
hash work on megabytes), not a run of a few characters, not a well-known password, and not built
from the email's own name. Each rule fails with an :class:`~runtime.errors.InvalidError` whose
``field`` is ``password`` (or ``email``), which the edge turns into a 422 naming the field.

Hashing is Argon2id (RFC 9106's second recommended profile: 64 MiB, 3 passes, 4 lanes), run in a
worker thread so the event loop keeps serving other messages, and at most
``PasswordHashes.max_parallel`` at a time so concurrent logins cannot exhaust memory.
"""

from __future__ import annotations

import re
from typing import Final, final

import anyio
import anyio.to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from runtime.errors import InvalidError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "PasswordHashes",
    "check_password",
    "normalise_email",
]

MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 256
_MIN_DISTINCT_CHARACTERS: Final = 5

# Deliberately pragmatic: one "@", a plausible local part and a dotted domain of DNS labels.
# Full RFC 5322 accepts addresses no mail system delivers; deliverability is proven by mail.
_EMAIL: Final = re.compile(
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)

# The head of every breached-password list; a full list belongs in a k-anonymity lookup service.
_COMMON: Final = frozenset(
    {
        "123456789012",
        "1234567890123",
        "password1234",
        "password12345",
        "passwordpassword",
        "qwertyuiop12",
        "qwertyuiopasdf",
        "iloveyou1234",
        "letmein12345",
        "welcome12345",
        "administrator",
        "correcthorsebatterystaple",
    }
)


def normalise_email(email: str) -> str:
    """``email`` trimmed and lower-cased, the form accounts are stored and found by.

    Raises:
        InvalidError: (field ``email``) it is not an email address.
    """
    normal = email.strip().lower()
    if len(normal) > 254 or not _EMAIL.match(normal) or ".." in normal:
        raise InvalidError("email is not a valid email address", field="email")
    return normal


def check_password(password: str, email: str = "") -> None:
    """Accept ``password`` for the account ``email`` (normalised) or say why not.

    Raises:
        InvalidError: (field ``password``) too short, too long, too few distinct characters, a
            well-known password, or containing the email's local part.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidError(
            f"password must be at most {MAX_PASSWORD_LENGTH} characters", field="password"
        )
    if len(set(password)) < _MIN_DISTINCT_CHARACTERS:
        raise InvalidError(
            f"password must use at least {_MIN_DISTINCT_CHARACTERS} different characters",
            field="password",
        )
    lowered = password.lower()
    if lowered in _COMMON:
        raise InvalidError("password is too common", field="password")
    local = email.partition("@")[0]
    if len(local) >= 4 and local in lowered:
        raise InvalidError("password must not contain the email's name", field="password")


@final
class PasswordHashes:
    """Argon2id hashes in PHC string form (``$argon2id$v=19$m=...``), made and checked off the
    event loop. The parameters travel inside each hash, so raising them later keeps old hashes
    verifiable; :meth:`needs_rehash` says when to store a stronger one (at the next login)."""

    def __init__(
        self,
        *,
        time_cost: int = 3,
        memory_kib: int = 65_536,
        parallelism: int = 4,
        max_parallel: int = 4,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._limiter = anyio.CapacityLimiter(max_parallel)
        # Verified when an account does not exist, so "no such email" takes as long as "wrong
        # password" and response times do not reveal which emails have accounts.
        self._dummy = self._hasher.hash("greenroom timing equaliser")

    async def hash(self, password: str) -> str:
        """The Argon2id hash of ``password`` with a fresh random salt."""
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (None: no account; always False, in the same
        time). A malformed stored hash is a mismatch, never an exception."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored or self._dummy, password) and stored is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(check, limiter=self._limiter)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with weaker parameters than this hasher uses."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
