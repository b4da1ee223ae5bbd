"""The auth actor: accounts, sessions (access + refresh tokens), roles and the signing key set.

Data (schema ``auth``, see ``migrations/0001_identity.sql``): accounts with Argon2id password
hashes, refresh tokens by SHA-256, failed logins, and the Ed25519 signing key. The first replica
to start generates the key and stores it; every replica and restart loads the same one, so tokens
signed by any replica verify against the one published key set.

Two kinds of write must survive the handler failing, because the failure *is* the point:

* a failed login is counted (the lockout rule, :mod:`actors.auth.throttle`), and
* reuse of a rotated refresh token revokes its family.

Both are answered with an error, which rolls back the message's transaction, so they are written
on a connection of their own (autocommit) before raising. That is why :attr:`Auth.concurrency` is
kept below half the pool: a handler may hold two connections at once.

Admins: an account registered with an email in :attr:`Auth.admin_emails` (or the comma-separated
``AUTH_ADMIN_EMAILS`` environment variable, read at start) gets ``admin`` as well as ``customer``;
after that, admins grant roles to other accounts with :class:`~actors.auth.contracts.GrantRole`.
Register the bootstrap addresses right after deploying: until then, whoever registers one first
owns it (there is no email verification in this reference system).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

from actors.auth.contracts import (
    ROLES,
    TOKEN_AUDIENCE,
    TOKEN_ISSUER,
    GetSigningKeys,
    GrantRole,
    LoggedOut,
    Login,
    Logout,
    Refresh,
    Register,
    Registered,
    Role,
    RoleGranted,
    SigningKeys,
    TokenPair,
    UserRegistered,
)
from actors.auth.passwords import PasswordHashes, check_password, normalise_email
from actors.auth.throttle import LoginThrottle
from actors.auth.tokens import (
    RefreshVerdict,
    SigningKey,
    StoredRefresh,
    hash_refresh_token,
    new_refresh_token,
    refresh_verdict,
)
from adapters.postgres import PostgresActor, transaction
from runtime.actor import Actor, Context, NodeContext
from runtime.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from adapters.postgres import Connection

__all__ = ["ADMIN_EMAILS_ENV", "Auth"]

ADMIN_EMAILS_ENV: Final = "AUTH_ADMIN_EMAILS"
"""Comma-separated emails that become admins when they register (see the module docstring)."""

# Contracts with no effects to make exactly-once: answered without an inbox row, so the edge's
# key-set fetches cost a read, not a write.
_READ_ONLY: Final = frozenset({"auth.GetSigningKeys"})

_WRONG_CREDENTIALS: Final = "wrong email or password"


def _roles(stored: Iterable[str]) -> tuple[Role, ...]:
    # Only roles this version knows leave the service, in a stable order.
    held = set(stored)
    return tuple(role for role in ROLES if role in held)


class Auth(PostgresActor):
    """Registers accounts, logs them in and out, rotates refresh tokens, grants roles and
    publishes the public signing keys (module docstring)."""

    name = "auth"
    inbox = GetSigningKeys | Register | Login | Refresh | Logout | GrantRole
    # At most two pooled connections per handler (see the module docstring); the pool has 10.
    concurrency = 4
    # Named, not found beside the module, so subclasses defined elsewhere (tests) keep them.
    migrations_package = "actors.auth.migrations"

    issuer: ClassVar[str] = TOKEN_ISSUER
    audience: ClassVar[str] = TOKEN_AUDIENCE
    access_ttl_s: ClassVar[int] = 900
    refresh_ttl_s: ClassVar[int] = 30 * 86_400
    throttle: ClassVar[LoginThrottle] = LoginThrottle()
    admin_emails: ClassVar[frozenset[str]] = frozenset()
    # Argon2id cost (RFC 9106's second profile). Tests lower it; production should not.
    hash_time_cost: ClassVar[int] = 3
    hash_memory_kib: ClassVar[int] = 65_536

    signing_key: SigningKey
    passwords: PasswordHashes
    admins: frozenset[str]

    async def on_start(self, ctx: NodeContext) -> None:
        """Provision and migrate (see :class:`PostgresActor`), then load the signing key,
        generating and storing it if this is the first start of the service.

        Raises:
            RuntimeError, MigrationError, asyncpg.PostgresError, ...: as PostgresActor.on_start.
            ValueError, TypeError: the stored signing key is not an Ed25519 PEM key.
        """
        await super().on_start(ctx)
        self.passwords = PasswordHashes(
            time_cost=self.hash_time_cost, memory_kib=self.hash_memory_kib
        )
        from_env = os.environ.get(ADMIN_EMAILS_ENV, "").split(",")
        self.admins = frozenset(
            e.strip().lower() for e in (*self.admin_emails, *from_env) if e.strip()
        )
        self.signing_key = await self._load_signing_key()
        ctx.log.info("auth.signing_key", kid=self.signing_key.kid, admins=len(self.admins))

    async def _load_signing_key(self) -> SigningKey:
        db = self.database
        pem = await db.fetchval("SELECT private_pem FROM signing_keys WHERE retired_at IS NULL")
        if pem is None:
            fresh = SigningKey.generate()
            # Replicas starting together race here; the partial unique index lets one win and
            # the others load the winner's key below.
            await db.execute(
                "INSERT INTO signing_keys (kid, alg, private_pem) VALUES ($1, 'EdDSA', $2)"
                " ON CONFLICT DO NOTHING",
                fresh.kid,
                fresh.private_pem(),
            )
            pem = await db.fetchval("SELECT private_pem FROM signing_keys WHERE retired_at IS NULL")
        return SigningKey.from_pem(bytes(pem))

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        """Read-only contracts skip the inbox; every other handler runs exactly once."""
        if type_tag in _READ_ONLY:
            return Actor.handler_for(self, type_tag)
        return super().handler_for(type_tag)

    # --- key set -------------------------------------------------------------------------------

    async def signing_keys(self, msg: GetSigningKeys) -> SigningKeys:
        """The public keys of the active signing key and of keys retired less than an access
        token's lifetime ago (tokens they signed may still be in use). Never fails for a
        ``kid`` it does not know: the caller looks for it in the answer."""
        rows = await self.database.fetch(
            "SELECT private_pem FROM signing_keys"
            " WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)"
            " ORDER BY created_at DESC",
            float(self.access_ttl_s),
        )
        keys = tuple(SigningKey.from_pem(bytes(row["private_pem"])).public() for row in rows)
        return SigningKeys(keys=keys, issuer=self.issuer)

    # --- accounts ------------------------------------------------------------------------------

    async def register(self, msg: Register, ctx: Context) -> Registered:
        """Create the account and emit :class:`UserRegistered` (in the same transaction).

        Raises:
            InvalidError: ``email`` is not an address, or ``password`` breaks the policy
                (``field`` names which).
            ConflictError: (field ``email``) an account with this email exists.
        """
        email = normalise_email(msg.email)
        check_password(msg.password, email)
        password_hash = await self.passwords.hash(msg.password)
        roles: tuple[Role, ...] = ("customer", "admin") if email in self.admins else ("customer",)
        user_id = uuid.uuid4()
        tx = transaction(ctx)
        created = await tx.conn.fetchval(
            "INSERT INTO accounts (user_id, email, password_hash, roles) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (email) DO NOTHING RETURNING true",
            user_id,
            email,
            password_hash,
            list(roles),
        )
        if not created:
            raise ConflictError("an account with this email already exists", field="email")
        await ctx.emit(
            UserRegistered(
                user_id=str(user_id), email=email, registered_at_ms=int(time.time() * 1000)
            ),
            key=str(user_id),
        )
        ctx.log.info("auth.registered", user_id=str(user_id), roles=roles)
        return Registered(user_id=str(user_id), email=email, roles=roles)

    # --- sessions ------------------------------------------------------------------------------

    async def login(self, msg: Login, ctx: Context) -> TokenPair:
        """A new session (a new refresh-token family) for the right email and password.

        Raises:
            UnavailableError: the email is locked out after too many failures;
                ``retry_after_s`` says for how long (the edge answers 503 with Retry-After).
            UnauthorizedError: wrong email or password (one message for both, and the same
                time, so neither reveals whether an account exists). The failure is counted.
        """
        try:
            email = normalise_email(msg.email)
        except InvalidError as exc:
            raise UnauthorizedError(_WRONG_CREDENTIALS) from exc
        tx = transaction(ctx)
        failures, oldest_age_s = await tx.conn.fetchrow(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(failed_at)), 0)::float8"
            " FROM login_failures"
            " WHERE email = $1 AND failed_at > now() - make_interval(secs => $2)",
            email,
            self.throttle.window_s,
        ) or (0, 0.0)
        wait_s = self.throttle.retry_after_s(int(failures), float(oldest_age_s))
        if wait_s:
            ctx.log.warning("auth.locked_out", failures=failures, retry_after_s=wait_s)
            raise UnavailableError(
                "too many failed logins for this account; try again later", retry_after_s=wait_s
            )
        account = await tx.conn.fetchrow(
            "SELECT user_id, password_hash, roles FROM accounts WHERE email = $1", email
        )
        stored = None if account is None else str(account["password_hash"])
        if not await self.passwords.verify(stored, msg.password) or account is None:
            await self._count_failure(email)
            raise UnauthorizedError(_WRONG_CREDENTIALS)
        await tx.conn.execute("DELETE FROM login_failures WHERE email = $1", email)
        if stored is not None and self.passwords.needs_rehash(stored):
            await tx.conn.execute(
                "UPDATE accounts SET password_hash = $2 WHERE user_id = $1",
                account["user_id"],
                await self.passwords.hash(msg.password),
            )
        return await self._issue(
            tx.conn, account["user_id"], _roles(account["roles"]), family=uuid.uuid4()
        )

    async def _count_failure(self, email: str) -> None:
        # Autocommit, outside the message's transaction, which the UnauthorizedError rolls back.
        await self.database.execute(
            "WITH pruned AS (DELETE FROM login_failures"
            " WHERE email = $1 AND failed_at <= now() - make_interval(secs => $2))"
            " INSERT INTO login_failures (email) VALUES ($1)",
            email,
            self.throttle.window_s,
        )

    async def refresh(self, msg: Refresh, ctx: Context) -> TokenPair:
        """Exchange a refresh token for a new pair; the token given is used up.

        Raises:
            UnauthorizedError: the token is unknown, expired, revoked, or was already exchanged
                (reuse: then its whole family is revoked, so the thief's copy and the owner's
                newer token both stop working, and the owner must log in again).
        """
        token_hash = hash_refresh_token(msg.refresh_token)
        tx = transaction(ctx)
        row = await tx.conn.fetchrow(
            "SELECT t.family_id, t.user_id, t.expires_at, t.rotated_at, t.revoked_at, a.roles"
            " FROM refresh_tokens t JOIN accounts a USING (user_id) WHERE t.token_hash = $1",
            token_hash,
        )
        stored = (
            None
            if row is None
            else StoredRefresh(
                expires_at=row["expires_at"],
                rotated_at=row["rotated_at"],
                revoked_at=row["revoked_at"],
            )
        )
        verdict = refresh_verdict(stored, datetime.now(UTC))
        if verdict is RefreshVerdict.ROTATE and row is not None:
            # Conditional, so two concurrent exchanges of one token cannot both succeed: the
            # loser matches no row and is treated as the reuse it is.
            used = await tx.conn.fetchval(
                "UPDATE refresh_tokens SET rotated_at = now()"
                " WHERE token_hash = $1 AND rotated_at IS NULL AND revoked_at IS NULL"
                " RETURNING true",
                token_hash,
            )
            if used:
                return await self._issue(
                    tx.conn, row["user_id"], _roles(row["roles"]), family=row["family_id"]
                )
            verdict = RefreshVerdict.REUSED
        if verdict is RefreshVerdict.REUSED and row is not None:
            revoked = await self._revoke_family(row["family_id"])
            ctx.log.warning(
                "auth.refresh_reuse",
                user_id=str(row["user_id"]),
                family_id=str(row["family_id"]),
                revoked=revoked,
            )
        raise UnauthorizedError(f"refresh token is not valid ({verdict.value})")

    async def _revoke_family(self, family_id: uuid.UUID) -> int:
        # Autocommit, outside the message's transaction, which the UnauthorizedError rolls back.
        status = await self.database.execute(
            "UPDATE refresh_tokens SET revoked_at = now()"
            " WHERE family_id = $1 AND revoked_at IS NULL",
            family_id,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def _issue(
        self, conn: Connection, user_id: uuid.UUID, roles: tuple[Role, ...], *, family: uuid.UUID
    ) -> TokenPair:
        refresh_token = new_refresh_token()
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            hash_refresh_token(refresh_token),
            family,
            user_id,
            float(self.refresh_ttl_s),
        )
        access_token = self.signing_key.mint(
            str(user_id),
            roles,
            ttl_s=self.access_ttl_s,
            issuer=self.issuer,
            audience=self.audience,
        )
        return TokenPair(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=self.access_ttl_s,
            refresh_expires_in=self.refresh_ttl_s,
            user_id=str(user_id),
            roles=roles,
        )

    async def logout(self, msg: Logout, ctx: Context) -> LoggedOut:
        """Revoke the session of ``refresh_token`` (its whole family) or, with
        ``all_sessions``, every session of ``user_id``. Access tokens already issued stay
        valid until they expire (``access_ttl_s``): they are checked without asking auth.

        Raises:
            UnauthorizedError: no caller (``user_id``) is named.
            InvalidError: (field ``refresh_token``) neither a token nor ``all_sessions`` given.
            NotFoundError: the token is unknown or belongs to another user (the two are not
                told apart).
        """
        user_id = _parse_user_id(msg.user_id)
        tx = transaction(ctx)
        if msg.all_sessions:
            status = await tx.conn.execute(
                "UPDATE refresh_tokens SET revoked_at = now()"
                " WHERE user_id = $1 AND revoked_at IS NULL",
                user_id,
            )
            return LoggedOut(revoked=int(status.rsplit(" ", 1)[-1]))
        if not msg.refresh_token:
            raise InvalidError("give a refresh_token or all_sessions", field="refresh_token")
        family = await tx.conn.fetchval(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2",
            hash_refresh_token(msg.refresh_token),
            user_id,
        )
        if family is None:
            raise NotFoundError("no such session", field="refresh_token")
        status = await tx.conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1"
            " AND revoked_at IS NULL",
            family,
        )
        return LoggedOut(revoked=int(status.rsplit(" ", 1)[-1]))

    # --- roles ---------------------------------------------------------------------------------

    async def grant_role(self, msg: GrantRole, ctx: Context) -> RoleGranted:
        """Add ``role`` to the account ``email``; idempotent. The edge requires the admin role
        in the caller's token; this checks the caller's *stored* roles too, so a token minted
        before an admin lost the role cannot grant anything.

        Raises:
            UnauthorizedError: no caller (``actor_id``) is named.
            ForbiddenError: the caller is not an admin.
            InvalidError: (field ``email``) not an email address.
            NotFoundError: (field ``email``) no account has this email.
        """
        actor_id = _parse_user_id(msg.actor_id)
        tx = transaction(ctx)
        actor_roles = await tx.conn.fetchval(
            "SELECT roles FROM accounts WHERE user_id = $1", actor_id
        )
        if actor_roles is None or "admin" not in actor_roles:
            raise ForbiddenError("only admins may grant roles")
        email = normalise_email(msg.email)
        row = await tx.conn.fetchrow(
            "UPDATE accounts SET roles = ARRAY(SELECT DISTINCT unnest(roles || $2::text))"
            " WHERE email = $1 RETURNING user_id, roles",
            email,
            msg.role,
        )
        if row is None:
            raise NotFoundError("no account has this email", field="email")
        roles = _roles(row["roles"])
        ctx.log.info(
            "auth.role_granted", user_id=str(row["user_id"]), role=msg.role, by=str(actor_id)
        )
        return RoleGranted(user_id=str(row["user_id"]), email=email, roles=roles)


def _parse_user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise UnauthorizedError("no valid caller named") from exc
