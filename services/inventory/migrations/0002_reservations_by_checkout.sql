-- Reservations an order's checkout made, which only the saga settles: an
-- admin release under a paid order would sell its units twice.
ALTER TABLE reservations ADD COLUMN by_checkout BOOLEAN NOT NULL DEFAULT false;

-- Checkouts in flight when this runs: the saga's reservations are the ones
-- that told payment or order about themselves (admin ones publish nothing).
-- Older settled rows keep the old rule; nothing is left for them to move.
UPDATE reservations r SET by_checkout = true
WHERE r.status = 'RESERVED'
  AND EXISTS (
      SELECT 1 FROM outbox o
      WHERE o.event_key = r.order_id::text
        AND o.event_type = 'shopmesh.events.v1.StockReserved'
  );
