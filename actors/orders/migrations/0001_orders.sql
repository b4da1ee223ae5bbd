CREATE TABLE orders (
    order_id    text        PRIMARY KEY,
    user_id     text        NOT NULL,
    state       text        NOT NULL
                CHECK (state IN ('PENDING', 'RESERVED', 'CHARGED', 'CONFIRMED', 'CANCELLED')),
    total_cents bigint      NOT NULL CHECK (total_cents >= 0),
    reason      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- When the sweeper last re-sent this order's saga step (see actors.orders.actor).
    nudged_at   timestamptz
);
CREATE INDEX orders_by_user ON orders (user_id, order_id DESC);
CREATE INDEX orders_in_flight ON orders (updated_at)
    WHERE state IN ('PENDING', 'RESERVED', 'CHARGED');

CREATE TABLE order_lines (
    order_id         text    NOT NULL REFERENCES orders (order_id),
    product_id       text    NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);

-- The saga's history: every state an order went through, in order.
CREATE TABLE order_transitions (
    order_id   text        NOT NULL REFERENCES orders (order_id),
    from_state text,
    to_state   text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_transitions_by_order ON order_transitions (order_id, at);
