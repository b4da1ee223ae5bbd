"""The HTTP floor: a plain Litestar handler doing the lookup in process, no bus.

Served by the same uvicorn as the edge (``uvicorn floor_litestar:app``), so the gap between this
and Greenroom is what the bus round trip and the edge pipeline cost.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, post
from workload import make_table

_TABLE = make_table()


class LookupRequest(msgspec.Struct, frozen=True, kw_only=True):
    key: str


class LookupReply(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: str


@post("/lookup", status_code=200, sync_to_thread=False)
def lookup(data: LookupRequest) -> LookupReply:
    return LookupReply(key=data.key, value=_TABLE.get(data.key, ""))


app = Litestar(route_handlers=[lookup], logging_config=None, debug=False)
