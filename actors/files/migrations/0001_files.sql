-- One row per declared file. Rows of deleted files stay as tombstones (state 'deleted') so a
-- repeated DELETE by the owner is answered the same way, and nobody else learns the id existed.
CREATE TABLE files (
    id           text        PRIMARY KEY,
    owner        text        NOT NULL,
    name         text        NOT NULL,
    content_type text        NOT NULL,
    size         bigint      NOT NULL CHECK (size > 0),
    state        text        NOT NULL CHECK (state IN ('pending', 'ready', 'deleted')),
    object_key   text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX files_owner_created ON files (owner, created_at) WHERE state <> 'deleted';
