"""No actor's code reaches another actor's data: they meet only on the bus.

A static scan of every module under ``actors/<name>/`` (its AST, not a grep, so comments and
docstrings do not count):

- it imports another actor only through that actor's ``contracts`` module (its message types),
  never its handlers, migrations or stores;
- no SQL it writes names another actor's schema (``<other>.<table>``): each actor's statements
  run in its own schema through its own role;
- it opens no connection with a data client itself (``asyncpg.create_pool``, ``Redis.from_url``,
  ``boto3.client``, ...; importing a client's types or exceptions is fine): Postgres, Redis and
  object storage are reached only through ``adapters``, which confine the actor to its schema,
  key prefix and bucket; and no string literal is a key in another actor's Redis prefix
  (``<other>:...``).

And every contract an actor publishes is a frozen, keyword-only msgspec Struct with a tag in the
actor's own namespace (``orders.PlaceOrder``).

This shows the code does not try. That it *could not* even if it did -- one actor's Postgres role,
Redis ACL user and S3 credentials refused another's data -- is proven against the real servers in
``tests/integration/test_adapters_isolation.py``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import msgspec
import pytest

ACTORS = Path(__file__).resolve().parents[2] / "actors"
NAMES = sorted(p.name for p in ACTORS.iterdir() if p.is_dir() and (p / "__init__.py").exists())
DATA_CLIENTS = ("asyncpg", "redis", "boto3", "botocore", "aiobotocore", "aioboto3", "psycopg")
CONNECTORS = frozenset(
    {
        "connect",
        "create_pool",
        "from_url",
        "Redis",
        "StrictRedis",
        "client",
        "resource",
        "create_client",
        "Session",
    }
)


def modules(actor: str) -> list[Path]:
    return sorted((ACTORS / actor).rglob("*.py"))


def strings(tree: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def imported(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend(f"{node.module}.{alias.name}" for alias in node.names)
            out.append(node.module)
    return out


def test_there_are_actors_to_check() -> None:
    assert {"inventory", "orders", "payments"} <= set(NAMES)


@pytest.mark.parametrize("actor", NAMES)
def test_other_actors_are_imported_only_for_their_contracts(actor: str) -> None:
    offences = []
    for path in modules(actor):
        for name in imported(ast.parse(path.read_text(), str(path))):
            parts = name.split(".")
            if parts[0] != "actors" or len(parts) < 2 or parts[1] in (actor, "__init__"):
                continue
            if len(parts) == 2 or parts[2] != "contracts":
                offences.append(f"{path.relative_to(ACTORS)} imports {name}")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("actor", NAMES)
def test_sql_names_no_other_schema(actor: str) -> None:
    others = "|".join(n for n in NAMES if n != actor)
    # A table reference qualified by another actor's schema, where SQL names a table.
    qualified = re.compile(
        rf"\b(FROM|JOIN|INTO|UPDATE|TABLE|REFERENCES|ON|SCHEMA)\s+\"?({others})\"?\s*\.", re.I
    )
    offences = []
    for path in [*modules(actor), *sorted((ACTORS / actor).rglob("*.sql"))]:
        text = path.read_text()
        if path.suffix == ".sql":
            literals = ["\n".join(line.split("--")[0] for line in text.splitlines())]
        else:
            literals = strings(ast.parse(text, str(path)))
        offences += [
            f"{path.relative_to(ACTORS)}: {s.strip()[:80]!r}"
            for s in literals
            if qualified.search(s)
        ]
    assert not offences, "\n".join(offences)


def data_connections(tree: ast.AST) -> list[str]:
    """Calls that open a connection with a data client directly (``asyncpg.create_pool(...)``,
    ``Redis.from_url(...)``, ``boto3.client(...)``); importing a client's types or exceptions
    is fine."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        chain = []
        func: ast.expr = node.func
        while isinstance(func, ast.Attribute):
            chain.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            continue
        root = aliases.get(func.id, "")
        names = [root.split(".")[-1], *reversed(chain)]
        if root.split(".")[0] in DATA_CLIENTS and CONNECTORS.intersection(names):
            found.append(".".join([root, *reversed(chain)]))
    return found


@pytest.mark.parametrize("actor", NAMES)
def test_data_is_reached_only_through_adapters(actor: str) -> None:
    others = [n for n in NAMES if n != actor]
    foreign_key = re.compile(rf"^({'|'.join(others)}):")
    offences = []
    for path in modules(actor):
        tree = ast.parse(path.read_text(), str(path))
        offences += [f"{path.relative_to(ACTORS)} calls {c}" for c in data_connections(tree)]
        offences += [
            f"{path.relative_to(ACTORS)}: key {s!r}" for s in strings(tree) if foreign_key.match(s)
        ]
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("actor", NAMES)
def test_contracts_are_frozen_keyword_only_and_tagged_in_the_actors_namespace(actor: str) -> None:
    module = importlib.import_module(f"actors.{actor}.contracts")
    structs = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == module.__name__
    ]
    assert structs
    for struct in structs:
        config = struct.__struct_config__
        assert config.frozen, f"{struct.__qualname__} is not frozen"
        params = inspect.signature(struct).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), (
            f"{struct.__qualname__} is not keyword-only"
        )
        if isinstance(config.tag, str):
            assert config.tag.startswith(f"{actor}."), f"{struct.__qualname__}: tag {config.tag}"
