-- The cart version whose write last set the line's quantity outright (put
-- the product in, or UpdateItem). An order's confirmation leaves a line set
-- after its checkout as it is. 0 for lines written before this was kept:
-- they give up what was bought, as before.
ALTER TABLE cart_lines ADD COLUMN quantity_set_in bigint NOT NULL DEFAULT 0;
