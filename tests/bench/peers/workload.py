"""The workload every peer serves, in one place so no peer gets a different one.

A client sends ``{"key": "k123"}``; the service looks the key up in an in-memory dict of
``TABLE_SIZE`` entries and answers ``{"key": ..., "value": ...}``. Keys cycle over the table so
requests spread over partitions (a single hot key would serialise Greenroom's per-key ordering
and hide nothing else).

Imported by the Python peers (Greenroom, the floors, faust) and the load client; the Moleculer
service builds the same table in JavaScript (moleculer/app.js).
"""

from __future__ import annotations

TABLE_SIZE = 1_000


def key_for(i: int) -> str:
    """The ``i``-th request key (``k0`` ... ``k999``, then again)."""
    return f"k{i % TABLE_SIZE}"


def make_table() -> dict[str, str]:
    """The lookup table: ``k<i>`` -> ``value-<i>``, the same for every peer."""
    return {f"k{i}": f"value-{i}" for i in range(TABLE_SIZE)}
