"""The identity routes: served by the edge, documented in its OpenAPI, and public only where a
client cannot have a token yet."""

from __future__ import annotations

from edge.api import ROUTES
from edge.app import create_app
from edge.routes_identity import IDENTITY_ROUTES
from runtime.config import Settings

PUBLIC = {("POST", "/auth/register"), ("POST", "/auth/login"), ("POST", "/auth/refresh")}


def test_identity_routes_are_served() -> None:
    assert set(IDENTITY_ROUTES) <= set(ROUTES)


def test_only_session_starters_are_public_and_the_rest_act_for_the_token_subject() -> None:
    for route in IDENTITY_ROUTES:
        if (route.method, route.path) in PUBLIC:
            assert not route.auth, route.path
        else:
            assert route.auth, route.path
            assert route.subject_field, route.path  # the caller comes from the token, always
    grant = next(r for r in IDENTITY_ROUTES if r.path == "/auth/roles")
    assert grant.roles == ("admin",)


def test_every_identity_operation_is_in_the_openapi_with_a_summary() -> None:
    schema = create_app(Settings(broker="memory"), routes=ROUTES).openapi_schema.to_schema()
    for route in IDENTITY_ROUTES:
        operation = schema["paths"][route.openapi_path][route.method.lower()]
        assert operation["summary"] == route.summary != ""
    assert "201" in schema["paths"]["/auth/register"]["post"]["responses"]
