"""The users service's contracts: a user's own profile.

Every command names the user it is about in ``user_id``, which the edge always fills from the
access token's subject (``subject_field``), so a client can only ever name itself. Events go to
``users.events``; the service consumes them itself to drop cached profiles.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["SERVICE", "Address", "GetProfile", "Profile", "ProfileUpdated", "UpdateProfile"]

SERVICE: Final = "users"


class Address(msgspec.Struct, frozen=True, kw_only=True):
    """A postal address; a value inside contracts, not a message of its own."""

    line1: str = ""
    line2: str = ""
    city: str = ""
    postal_code: str = ""
    country: str = ""
    """ISO 3166-1 alpha-2 code (``"DE"``), or empty."""


class GetProfile(msgspec.Struct, frozen=True, kw_only=True, tag="users.GetProfile"):
    """The caller's profile."""

    user_id: str = ""


class UpdateProfile(msgspec.Struct, frozen=True, kw_only=True, tag="users.UpdateProfile"):
    """Change the caller's profile. A field left out (``null``) is kept; ``""`` clears a text.

    ``address`` replaces the whole address when given. ``expected_version`` (optional) makes the
    update conditional: it fails with a conflict if the profile changed since that version.
    """

    user_id: str = ""
    display_name: str | None = None
    phone: str | None = None
    address: Address | None = None
    expected_version: int | None = None


class Profile(msgspec.Struct, frozen=True, kw_only=True, tag="users.Profile"):
    """A user's profile. ``version`` grows by one with every change."""

    user_id: str
    email: str
    display_name: str
    phone: str = ""
    address: Address = Address()
    version: int
    created_at_ms: int
    updated_at_ms: int


class ProfileUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="users.ProfileUpdated"):
    """Event on ``users.events``: the profile of ``user_id`` changed to ``version``."""

    user_id: str
    version: int
