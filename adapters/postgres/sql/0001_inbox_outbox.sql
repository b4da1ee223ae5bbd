-- Greenroom's exactly-once tables, in the actor's own schema (DESIGN.md, delivery contract).

-- One row per message whose effects were committed; a redelivery finds it and does nothing.
-- For a request, the reply that was sent, so a redelivered request gets the same answer.
CREATE TABLE inbox (
    message_id  text        PRIMARY KEY,
    type        text        NOT NULL,
    reply_type  text,
    reply_body  bytea,
    handled_at  timestamptz NOT NULL DEFAULT now()
);

-- Messages to publish once the transaction that wrote them commits; the relay sends them in
-- `id` order (so per key in order) and stamps `sent_at`.
CREATE TABLE outbox (
    id              bigserial   PRIMARY KEY,
    message_id      text        NOT NULL UNIQUE,
    topic           text        NOT NULL,
    key             text        NOT NULL DEFAULT '',
    type            text        NOT NULL,
    body            bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}',
    correlation_id  text        NOT NULL DEFAULT '',
    causation_id    text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);

CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
