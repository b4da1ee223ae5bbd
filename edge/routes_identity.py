"""The identity domain's HTTP routes (auth and users), as data for :data:`edge.api.ROUTES`.

Sessions: ``/auth/register``, ``/auth/login`` and ``/auth/refresh`` need no token (refresh is how
a client gets a new access token once its old one expired). Everything else takes the caller from
the token: ``subject_field`` overwrites the contract's user field with the token's subject, so a
body naming another user changes nothing. Roles: customers reach their own profile; only admins
grant roles (auth checks the caller's stored roles again).

Errors the client sees besides the edge's own: 422 naming ``email``/``password``/a profile field,
409 for an email already registered or a stale ``expected_version``, 401 for wrong credentials or
a refresh token that is not valid (reusing a rotated one also revokes its session), 503 with
``Retry-After`` while an email is locked out after repeated failed logins.
"""

from __future__ import annotations

from actors.auth.contracts import (
    GrantRole,
    LoggedOut,
    Login,
    Logout,
    Refresh,
    Register,
    Registered,
    RoleGranted,
    TokenPair,
)
from actors.users.contracts import GetProfile, Profile, UpdateProfile
from edge.routes import Route

__all__ = ["IDENTITY_ROUTES"]

IDENTITY_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/auth/register",
        service="auth",
        request_type=Register,
        reply_type=Registered,
        auth=False,
        key_field="email",
        status_code=201,
        summary="Create an account (email and password)",
    ),
    Route(
        "POST",
        "/auth/login",
        service="auth",
        request_type=Login,
        reply_type=TokenPair,
        auth=False,
        key_field="email",
        summary="Log in: an access token and a refresh token",
    ),
    Route(
        "POST",
        "/auth/refresh",
        service="auth",
        request_type=Refresh,
        reply_type=TokenPair,
        auth=False,
        summary="Exchange a refresh token for a new pair (the old one stops working)",
    ),
    Route(
        "POST",
        "/auth/logout",
        service="auth",
        request_type=Logout,
        reply_type=LoggedOut,
        subject_field="user_id",
        summary="Revoke a session (its refresh token family), or all of the caller's sessions",
    ),
    Route(
        "POST",
        "/auth/roles",
        service="auth",
        request_type=GrantRole,
        reply_type=RoleGranted,
        roles=("admin",),
        subject_field="actor_id",
        key_field="email",
        summary="Grant a role to an account (admins only)",
    ),
    Route(
        "GET",
        "/users/me",
        service="users",
        request_type=GetProfile,
        reply_type=Profile,
        subject_field="user_id",
        summary="The caller's profile",
    ),
    Route(
        "PATCH",
        "/users/me",
        service="users",
        request_type=UpdateProfile,
        reply_type=Profile,
        subject_field="user_id",
        summary="Change the caller's profile (fields left out are kept)",
    ),
)
