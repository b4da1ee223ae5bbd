"""Finding an actor class from what a user types: ``orders`` or ``package.module:ClassName``.

* ``orders`` imports ``actors.orders.actor`` (or, if there is no such module, the package
  ``actors.orders``) and takes the :class:`Actor` subclass it holds: the one whose ``name`` is
  ``orders`` (or its only concrete actor class). Looking in ``actor`` first lets the package's
  ``__init__`` stay empty, so importing ``actors.orders.contracts`` never loads the handlers.
* ``tests.support.demo:Demo`` imports the module and takes that attribute.

Only these two forms: nothing is scanned beyond the named module, so a typo fails fast with the
names that would have worked.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType

from runtime.actor import Actor

__all__ = ["ACTORS_PACKAGE", "ActorNotFoundError", "actor_names", "resolve_actor"]

ACTORS_PACKAGE = "actors"


class ActorNotFoundError(LookupError):
    """No actor class matches the given name; the message says what was tried."""


def _concrete_actors(namespace: dict[str, object]) -> list[type[Actor]]:
    found = []
    for value in namespace.values():
        if (
            isinstance(value, type)
            and issubclass(value, Actor)
            and value is not Actor
            and "handlers" in vars(value)
        ):
            found.append(value)
    return list(dict.fromkeys(found))


def actor_names() -> list[str]:
    """The service names under the ``actors`` package (subpackages), sorted; [] if none."""
    try:
        package = importlib.import_module(ACTORS_PACKAGE)
    except ImportError:
        return []
    return sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if info.ispkg and not info.name.startswith("_")
    )


def resolve_actor(spec: str) -> type[Actor]:
    """The :class:`Actor` subclass that ``spec`` names (see the module docstring).

    Raises:
        ActorNotFoundError: the module cannot be imported, has no such attribute, the attribute
            is not an Actor subclass, or a package exposes no (or several ambiguous) actors.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        module = _import(module_name, spec)
        value = getattr(module, attr, None)
        if value is None:
            raise ActorNotFoundError(f"{spec}: module {module_name!r} has no attribute {attr!r}")
        if not (isinstance(value, type) and issubclass(value, Actor) and "handlers" in vars(value)):
            raise ActorNotFoundError(f"{spec}: {attr!r} is not a concrete Actor subclass")
        return value
    package = _import(f"{ACTORS_PACKAGE}.{spec}", spec)
    module = package
    if importlib.util.find_spec(f"{ACTORS_PACKAGE}.{spec}.actor") is not None:
        module = _import(f"{ACTORS_PACKAGE}.{spec}.actor", spec)
    candidates = _concrete_actors(vars(module))
    named = [c for c in candidates if c.name == spec]
    if len(named) == 1:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ActorNotFoundError(
            f"{spec}: package {ACTORS_PACKAGE}.{spec} exposes no Actor subclass "
            f"(define it in {ACTORS_PACKAGE}/{spec}/actor.py)"
        )
    names = ", ".join(sorted(c.__qualname__ for c in candidates))
    raise ActorNotFoundError(
        f"{spec}: several actors in {ACTORS_PACKAGE}.{spec} ({names}); use module:Class"
    )


def _import(module_name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            known = actor_names()
            hint = f"; known actors: {', '.join(known)}" if known else ""
            raise ActorNotFoundError(f"{spec}: no module {module_name!r}{hint}") from exc
        raise
