-- The users service's profiles, in its own schema. `user_id` is auth's account id (the token's
-- subject); the row is created when auth.UserRegistered arrives.
CREATE TABLE profiles (
    user_id       uuid        PRIMARY KEY,
    email         text        NOT NULL,
    display_name  text        NOT NULL,
    phone         text        NOT NULL DEFAULT '',
    address       jsonb       NOT NULL DEFAULT '{}',
    version       bigint      NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
