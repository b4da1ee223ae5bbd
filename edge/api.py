"""The reference system's HTTP API, as data (see :class:`edge.routes.Route`).

``greenroom edge`` serves :data:`ROUTES` unless ``--routes module:attribute`` names another table.
Domain routes (orders, inventory, ...) join this table as their actors' contracts land.
"""

from __future__ import annotations

from actors.auth.contracts import GetSigningKeys, SigningKeys
from edge.routes import Route
from edge.routes_commerce import COMMERCE_ROUTES
from edge.routes_files import FILES_ROUTES
from edge.routes_identity import IDENTITY_ROUTES

__all__ = ["ROUTES"]

ROUTES: tuple[Route, ...] = (
    # The public keys tokens are signed with (a JWKS), so clients can verify tokens too.
    Route(
        "GET",
        "/auth/keys",
        service="auth",
        request_type=GetSigningKeys,
        reply_type=SigningKeys,
        auth=False,
        key_field="kid",
        summary="Public keys that sign access tokens",
    ),
    *IDENTITY_ROUTES,
    *FILES_ROUTES,
    *COMMERCE_ROUTES,
)
