-- One payment per order: the primary key and the unique idempotency key are what make "an order
-- is charged at most once" hold even if two deliveries of a Charge race each other.
CREATE TABLE payments (
    order_id        text        PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    user_id         text        NOT NULL,
    amount_cents    bigint      NOT NULL CHECK (amount_cents >= 0),
    status          text        NOT NULL CHECK (status IN
                    ('captured', 'declined', 'failed', 'pending', 'refunded', 'voided')),
    provider_ref    text        NOT NULL DEFAULT '',
    reason          text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every movement of money, signed (charges positive, refunds negative); at most one of each kind
-- per order, so a replayed handler cannot book twice.
CREATE TABLE ledger (
    entry_id     bigserial   PRIMARY KEY,
    order_id     text        NOT NULL REFERENCES payments (order_id),
    kind         text        NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount_cents bigint      NOT NULL,
    provider_ref text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, kind)
);
