-- One row per consumed event: event_id is unique on top of the inbox, so
-- even a replay that bypassed the inbox could not notify twice.
CREATE TABLE notifications (
    id         UUID        PRIMARY KEY,
    event_id   UUID        NOT NULL UNIQUE,
    user_id    UUID        NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED', 'ORDER_REFUNDED')),
    order_id   TEXT        NOT NULL,
    title      TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX notifications_user ON notifications (user_id, created_at DESC, id DESC);
