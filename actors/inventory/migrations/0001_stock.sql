-- Products and their stock. The CHECKs are the last line of defence against overselling: every
-- stock change is a conditional UPDATE, and a bug that slipped past one would fail here instead.
CREATE TABLE products (
    product_id  text        PRIMARY KEY,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    available   integer     NOT NULL CHECK (available >= 0),
    reserved    integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        integer     NOT NULL DEFAULT 0 CHECK (sold >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order id, whatever the outcome, so every reservation command is idempotent per
-- order and a late request cannot act on an order that was already settled.
CREATE TABLE reservations (
    order_id    text        PRIMARY KEY,
    status      text        NOT NULL
                CHECK (status IN ('reserved', 'committed', 'released', 'rejected')),
    reason      text        NOT NULL DEFAULT '',
    total_cents bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservation_lines (
    order_id         text    NOT NULL REFERENCES reservations (order_id),
    product_id       text    NOT NULL REFERENCES products (product_id),
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);
