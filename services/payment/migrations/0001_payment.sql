-- One payment per order: the unique order_id is what makes a charge happen
-- at most once however often StockReserved is delivered. No card data: the
-- provider token is not kept, only what the provider told us to display.
CREATE TABLE payments (
    id                 UUID        PRIMARY KEY,
    order_id           UUID        NOT NULL UNIQUE,
    user_id            UUID        NOT NULL,
    currency_code      TEXT        NOT NULL,
    amount_minor       BIGINT      NOT NULL,
    status             TEXT        NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED')),
    provider           TEXT        NOT NULL DEFAULT '',
    provider_reference TEXT        NOT NULL DEFAULT '',
    card_display       TEXT        NOT NULL DEFAULT '',
    decline_reason     TEXT        NOT NULL DEFAULT '',
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX payments_user ON payments (user_id, created_at DESC, id DESC);

-- Orders cancelled before (or after) their StockReserved arrived. The two
-- events travel on different topics, so a cancellation can overtake the
-- reservation; this tombstone stops the late reservation from being charged.
CREATE TABLE cancelled_orders (
    order_id     UUID        PRIMARY KEY,
    reason       TEXT        NOT NULL,
    cancelled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
