"""Actors and routes for end-to-end edge tests: a ``things`` service and a test ``auth`` service.

Run them as nodes (``greenroom run tests.support.edge_actors:Things`` and
``greenroom run tests.support.edge_actors:TestAuth``) and the edge with
``greenroom edge --routes tests.support.edge_actors:ROUTES --jwt-issuer ISSUER --jwt-audience
AUDIENCE``. Tokens for it are minted with :data:`~tests.support.edge_helpers.TEST_KEY` (a fixed
Ed25519 key, so the node process and the test agree without sharing anything at run time).

``Things`` picks its behaviour from the name or id it is sent, as real services answer real
states:

==========  ======================================================================
``missing`` ``NotFoundError`` (404)
``taken``   ``ConflictError`` on ``$.name`` (409)
``down``    ``UnavailableError(retry_after_s=7)``, as a service with an open circuit (503)
``slow``    sleeps :data:`SLOW_HANDLER_S`, longer than the route's deadline (504)
==========  ======================================================================
"""

from __future__ import annotations

from typing import Annotated, Final

import anyio
import msgspec

from actors.auth.contracts import GetSigningKeys, SigningKeys
from edge.routes import Route
from runtime.actor import Actor
from runtime.errors import ConflictError, NotFoundError, UnavailableError
from tests.support.edge_helpers import AUDIENCE, ISSUER, TEST_KEY

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "ROUTES",
    "SLOW_HANDLER_S",
    "TEST_KEY",
    "THING_TIMEOUT_S",
    "GetThing",
    "Ping",
    "Pong",
    "PutThing",
    "TestAuth",
    "Thing",
    "Things",
]

THING_TIMEOUT_S: Final = 2.0
"""The deadline of ``GET /things/{thing_id}``."""
SLOW_HANDLER_S: Final = 4.0
"""How long ``GetThing(thing_id="slow")`` takes: well past :data:`THING_TIMEOUT_S`."""
RETRY_AFTER_S: Final = 7.0


class PutThing(msgspec.Struct, frozen=True, kw_only=True, tag="e2e.PutThing"):
    owner: str
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=1_000)]


class GetThing(msgspec.Struct, frozen=True, kw_only=True, tag="e2e.GetThing"):
    thing_id: str
    owner: str


class Thing(msgspec.Struct, frozen=True, kw_only=True, tag="e2e.Thing"):
    thing_id: str
    owner: str
    name: str = ""
    quantity: int = 0


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="e2e.Ping"):
    n: int


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag="e2e.Pong"):
    n: int


ROUTES: Final = (
    Route(
        "POST",
        "/things",
        service="things",
        request_type=PutThing,
        reply_type=Thing,
        subject_field="owner",
        key_field="name",
        status_code=201,
        summary="Create a thing",
    ),
    Route(
        "GET",
        "/things/{thing_id:str}",
        service="things",
        request_type=GetThing,
        reply_type=Thing,
        subject_field="owner",
        timeout_s=THING_TIMEOUT_S,
        summary="Read a thing",
    ),
    Route(
        "GET",
        "/ping/{n:int}",
        service="things",
        request_type=Ping,
        reply_type=Pong,
        auth=False,
        summary="Round trip through the things service",
    ),
)


async def _act_on(target: str) -> None:
    match target:
        case "missing":
            raise NotFoundError(f"no thing {target!r}")
        case "taken":
            raise ConflictError("a thing with this name exists", field="$.name")
        case "down":
            raise UnavailableError("storage circuit open", retry_after_s=RETRY_AFTER_S)
        case "slow":
            await anyio.sleep(SLOW_HANDLER_S)


class Things(Actor):
    """The service behind :data:`ROUTES` (behaviour by name or id: see the module docstring)."""

    name = "things"
    inbox = PutThing | GetThing | Ping
    concurrency = 32
    retry_attempts = 1

    async def put(self, msg: PutThing) -> Thing:
        await _act_on(msg.name)
        return Thing(
            thing_id=f"t-{msg.name}", owner=msg.owner, name=msg.name, quantity=msg.quantity
        )

    async def get(self, msg: GetThing) -> Thing:
        await _act_on(msg.thing_id)
        return Thing(thing_id=msg.thing_id, owner=msg.owner, name=msg.thing_id)

    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class TestAuth(Actor):
    """Stands in for the auth service: publishes :data:`TEST_KEY`'s public half."""

    __test__ = False  # a test double, not a pytest test class

    name = "auth"
    inbox = GetSigningKeys

    async def keys(self, msg: GetSigningKeys) -> SigningKeys:
        return SigningKeys(keys=(TEST_KEY.public(),), issuer=ISSUER)
