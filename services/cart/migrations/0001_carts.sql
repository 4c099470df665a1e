-- Source of truth for carts; Redis holds a write-through copy.
CREATE TABLE carts (
    user_id    text PRIMARY KEY,
    -- Bumped on every write; Redis never lets an older copy replace a newer one.
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cart_lines (
    user_id    text NOT NULL REFERENCES carts (user_id) ON DELETE CASCADE,
    product_id uuid NOT NULL,
    quantity   integer NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    added_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
