"""Greenroom's side of the peer benchmark: the lookup actor, its contracts and its edge route.

The edge is started with ``greenroom edge --routes greenroom_lookup:ROUTES`` and the node with
``greenroom run greenroom_lookup:LookupActor`` (this folder on the import path), so the request
path is the product's own: HTTP -> edge -> ``lookup.commands`` -> node -> reply topic -> edge.
"""

from __future__ import annotations

import msgspec
from workload import make_table

from edge.routes import Route
from runtime.actor import Actor


class GetValue(msgspec.Struct, frozen=True, kw_only=True, tag="bench.GetValue"):
    """Ask for the value stored under ``key``."""

    key: str


class Value(msgspec.Struct, frozen=True, kw_only=True, tag="bench.Value"):
    """The value stored under ``key``."""

    key: str
    value: str


class LookupActor(Actor):
    """Answers :class:`GetValue` from an in-memory table; no I/O, so only the runtime is timed."""

    name = "lookup"
    inbox = GetValue
    # As many keys in flight as the largest client concurrency, so the actor never queues work
    # that another peer would run at once.
    concurrency = 64

    def __init__(self) -> None:
        self.table = make_table()

    async def get(self, msg: GetValue) -> Value:
        return Value(key=msg.key, value=self.table.get(msg.key, ""))


# No auth: the peers have none either, and a JWT check would measure the edge's crypto instead.
# Keyed by the lookup key, as an entity id would be.
ROUTES = (
    Route(
        "POST",
        "/lookup",
        service="lookup",
        request_type=GetValue,
        reply_type=Value,
        auth=False,
        key_field="key",
        summary="benchmark lookup",
    ),
)
