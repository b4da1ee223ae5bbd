"""Resolving `greenroom run <actor>`: a service name or module:Class."""

from __future__ import annotations

import pytest

from runtime.registry import ActorNotFoundError, resolve_actor
from tests.support.demo import Demo


def test_module_and_class() -> None:
    assert resolve_actor("tests.support.demo:Demo") is Demo


def test_unknown_module_names_what_was_tried() -> None:
    with pytest.raises(ActorNotFoundError, match=r"no module 'actors\.no_such_service'"):
        resolve_actor("no_such_service")
    with pytest.raises(ActorNotFoundError, match=r"no module 'tests\.support\.nope'"):
        resolve_actor("tests.support.nope:Demo")


def test_attribute_that_is_missing_or_not_an_actor() -> None:
    with pytest.raises(ActorNotFoundError, match="has no attribute 'Nope'"):
        resolve_actor("tests.support.demo:Nope")
    with pytest.raises(ActorNotFoundError, match="not a concrete Actor subclass"):
        resolve_actor("tests.support.demo:Work")
