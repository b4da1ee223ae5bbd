"""The pure parts of users: profile update validation and the contracts' wire form."""

from __future__ import annotations

import msgspec
import pytest

from actors.users.actor import validate_update
from actors.users.contracts import Address, Profile, UpdateProfile
from runtime.errors import InvalidError


def test_fields_left_out_stay_unchanged() -> None:
    assert validate_update(UpdateProfile(user_id="u")) == (None, None, None)


def test_given_fields_are_cleaned() -> None:
    name, phone, address = validate_update(
        UpdateProfile(
            user_id="u",
            display_name="  Ada  ",
            phone="",
            address=Address(line1=" 1 Main St ", city="Berlin", country="de"),
        )
    )
    assert name == "Ada"
    assert phone == ""  # "" clears
    assert address == Address(line1="1 Main St", city="Berlin", country="DE")


@pytest.mark.parametrize(
    ("update", "field"),
    [
        (UpdateProfile(display_name="   "), "display_name"),
        (UpdateProfile(display_name="x" * 101), "display_name"),
        (UpdateProfile(display_name="two\nlines"), "display_name"),
        (UpdateProfile(phone="call me"), "phone"),
        (UpdateProfile(address=Address(country="Germany")), "address.country"),
        (UpdateProfile(address=Address(postal_code="1" * 17)), "address.postal_code"),
    ],
)
def test_bad_fields_are_named(update: UpdateProfile, field: str) -> None:
    with pytest.raises(InvalidError) as caught:
        validate_update(update)
    assert caught.value.field == field


def test_profile_round_trips_as_cached() -> None:
    profile = Profile(
        user_id="u",
        email="a@example.com",
        display_name="a",
        version=2,
        created_at_ms=1,
        updated_at_ms=2,
    )
    raw = msgspec.json.encode(profile)
    assert msgspec.json.decode(raw, type=Profile) == profile
    assert b'"type":"users.Profile"' in raw
