-- The cart version whose write put the product in the cart. An order's
-- confirmation leaves a line put in after its checkout whole. 0 for lines
-- written before this was kept: they give up what was bought, as before.
ALTER TABLE cart_lines ADD COLUMN added_in bigint NOT NULL DEFAULT 0;
