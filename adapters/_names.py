"""Names and secrets derived from an actor's name, validated before they reach SQL or an ACL.

Identifiers cannot be bound as query parameters (``CREATE ROLE $1`` is not SQL), so every name
that ends up in a statement comes from here: it matches ``^[a-z][a-z0-9_]{0,40}$`` and is quoted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final, final

__all__ = ["ActorNames", "InvalidNameError", "derive_secret", "quote_ident"]

_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class InvalidNameError(ValueError):
    """An actor name that could not be used safely as an identifier; the message shows the rule."""


def _check(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"{name!r} is not a valid actor name: it must match ^[a-z][a-z0-9_]{{0,40}}$"
        )
    return name


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier, after checking it against the name rule.

    Raises:
        InvalidNameError: ``name`` does not match the rule.
    """
    return f'"{_check(name)}"'


def derive_secret(master: str, purpose: str, *, length: int = 40) -> str:
    """A hex secret for ``purpose`` (e.g. ``"postgres:gr_orders"``), derived from ``master``.

    Derived rather than random so every replica of an actor computes the same password without
    sharing state, and re-provisioning is idempotent; without ``master`` (an admin credential
    the operator holds) nobody can compute it. Hex only, so it is safe inside a SQL literal.
    """
    digest = hmac.new(master.encode(), purpose.encode(), hashlib.sha256).hexdigest()
    return digest[:length]


@final
@dataclass(frozen=True, slots=True)
class ActorNames:
    """Everything named after one actor: its Postgres role and schema, Redis user and key prefix,
    and bucket.

    Raises:
        InvalidNameError: at construction, for a name outside ``^[a-z][a-z0-9_]{0,40}$``.
    """

    actor: str

    def __post_init__(self) -> None:
        _check(self.actor)

    @property
    def role(self) -> str:
        """The Postgres role (and Redis user): ``gr_<actor>``."""
        return f"gr_{self.actor}"

    @property
    def schema(self) -> str:
        """The Postgres schema: the actor's name."""
        return self.actor

    @property
    def key_prefix(self) -> str:
        """Every Redis key and channel of the actor starts with this: ``<actor>:``."""
        return f"{self.actor}:"

    @property
    def bucket(self) -> str:
        """The bucket: ``gr-<actor>`` with ``_`` turned into ``-`` (S3 allows no underscores;
        actor names contain no ``-``, so the mapping stays one-to-one)."""
        return "gr-" + self.actor.replace("_", "-")
