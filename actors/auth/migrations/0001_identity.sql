-- The auth service's tables, in its own schema.

-- One row per account. `email` is stored normalised (trimmed, lower-case), so the unique
-- constraint is the duplicate check. `password_hash` is an Argon2id PHC string.
CREATE TABLE accounts (
    user_id        uuid        PRIMARY KEY,
    email          text        NOT NULL UNIQUE,
    password_hash  text        NOT NULL,
    roles          text[]      NOT NULL DEFAULT '{customer}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens, by SHA-256 only. Each login starts a family; each refresh marks its token
-- rotated and adds the next one to the family. Presenting a rotated token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id) WHERE revoked_at IS NULL;

-- Failed logins per normalised email (whether or not an account exists), for the lockout rule.
-- Rows older than the window are pruned when the same email fails again.
CREATE TABLE login_failures (
    id         bigserial   PRIMARY KEY,
    email      text        NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);

-- Token signing keys. The first replica to start generates one; every replica and restart signs
-- with the active one (at most one: the partial unique index). Retired keys stay published
-- until the tokens they signed have expired.
CREATE TABLE signing_keys (
    kid          text        PRIMARY KEY,
    alg          text        NOT NULL,
    private_pem  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE retired_at IS NULL;

-- The inbox stores each request's reply so a redelivered request can be answered again. A token
-- pair must not sit there in plain text (refresh tokens are stored hashed everywhere else), so
-- its reply is dropped before the row is written: a redelivered login or refresh (after a crash
-- between commit and acknowledgement) is answered with an internal error, and the client simply
-- logs in again.
CREATE FUNCTION inbox_drop_secret_replies() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reply_type = 'auth.TokenPair' THEN
        NEW.reply_type := NULL;
        NEW.reply_body := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER inbox_drop_secret_replies
    BEFORE INSERT OR UPDATE OF reply_type, reply_body ON inbox
    FOR EACH ROW EXECUTE FUNCTION inbox_drop_secret_replies();
