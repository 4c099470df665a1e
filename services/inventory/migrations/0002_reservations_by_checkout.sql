-- Reservations an order's checkout made, which only the saga settles: an
-- admin release under a paid order would sell its units twice. Rows from
-- before this column keep the old rule (false: an admin may settle them);
-- for a checkout in flight at the deploy that lasts its pending timeout.
ALTER TABLE reservations ADD COLUMN by_checkout BOOLEAN NOT NULL DEFAULT false;
