-- The cart version an order was priced from; OrderConfirmed carries it so
-- the cart keeps lines the customer changed after checkout. 0 for orders
-- placed before it was kept.
ALTER TABLE orders ADD COLUMN cart_version bigint NOT NULL DEFAULT 0;
