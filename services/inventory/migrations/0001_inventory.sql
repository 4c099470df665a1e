-- Stock per catalog product. No foreign key to catalog: inventory learns of
-- a product when an admin first sets its stock.
CREATE TABLE stock (
    product_id          UUID        PRIMARY KEY,
    on_hand             BIGINT      NOT NULL CHECK (on_hand >= 0),
    reserved            BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    low_stock_threshold BIGINT      NOT NULL CHECK (low_stock_threshold >= 0),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- available = on_hand - reserved can never go negative, whatever the code does.
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

-- One row per order ever seen: the idempotency key of every reservation RPC
-- and saga step. RELEASED rows without lines are tombstones of orders
-- released before they were reserved.
CREATE TABLE reservations (
    order_id          UUID        PRIMARY KEY,
    status            TEXT        NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED')),
    -- Products that were short when status is REJECTED.
    short_product_ids UUID[]      NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Merged per product. No foreign key to stock: a rejected reservation may
-- name products inventory has never stocked.
CREATE TABLE reservation_lines (
    order_id   UUID NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
    product_id UUID NOT NULL,
    quantity   INT  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
