-- Orders, range-partitioned by month on created_at. The primary key must
-- include the partition key; ids are UUIDv7, so they are time-ordered too.
CREATE TABLE orders (
    id               UUID        NOT NULL,
    user_id          TEXT        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    cancel_reason    TEXT        CHECK (cancel_reason IN ('OUT_OF_STOCK', 'PAYMENT_DECLINED', 'TIMEOUT', 'CUSTOMER_REQUEST')),
    currency_code    TEXT        NOT NULL,
    total_minor      BIGINT      NOT NULL CHECK (total_minor >= 0),
    shipping_address JSONB       NOT NULL,
    coupon_code      TEXT        NOT NULL DEFAULT '',
    paid             BOOLEAN     NOT NULL DEFAULT false,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, created_at),
    CHECK ((status = 'CANCELLED') = (cancel_reason IS NOT NULL))
) PARTITION BY RANGE (created_at);

CREATE INDEX orders_user_created ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_pending_created ON orders (created_at) WHERE status = 'PENDING';
CREATE INDEX orders_id ON orders (id);

-- Monthly partitions are created ahead of time by the service
-- (ensure_partitions); this one covers the month of the migration.
CREATE TABLE order_lines (
    order_id         UUID    NOT NULL,
    line_no          INT     NOT NULL,
    product_id       TEXT    NOT NULL,
    sku              TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    currency_code    TEXT    NOT NULL,
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    quantity         INT     NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line_no)
);

-- Every status transition, in order.
CREATE TABLE order_status_history (
    seq        BIGSERIAL   PRIMARY KEY,
    order_id   UUID        NOT NULL,
    status     TEXT        NOT NULL,
    reason     TEXT,
    note       TEXT        NOT NULL DEFAULT '',
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_status_history_order ON order_status_history (order_id, seq);

-- Idempotency-Key per user, kept 24 h: a retried checkout returns the same order.
CREATE TABLE idempotency_keys (
    user_id      TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    request_hash TEXT        NOT NULL,
    order_id     UUID        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
