"""The edge route of the chaos harness's own load: ``POST /ledger/credit`` answered by the Ledger
actor (tests/chaos/actors.py) over the bus. Served with ``greenroom edge --routes
tests.chaos.routes:LEDGER_ROUTES``."""

from __future__ import annotations

from edge.routes import Route
from tests.chaos.actors import Credit, Credited

LEDGER_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/ledger/credit",
        service="ledger",
        request_type=Credit,
        reply_type=Credited,
        auth=False,
        key_field="account",
        status_code=201,
        summary="Credit an account (chaos harness load)",
    ),
)
