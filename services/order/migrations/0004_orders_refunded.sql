-- Whether the order's payment went back. With `paid` it tells a capture
-- heard after its refund (a dead-letter replay) from one still to refund.
ALTER TABLE orders ADD COLUMN refunded BOOLEAN NOT NULL DEFAULT false;
UPDATE orders o SET refunded = true
WHERE NOT o.paid
  AND EXISTS (SELECT 1 FROM order_status_history h WHERE h.order_id = o.id AND h.note = 'payment refunded');
ALTER TABLE orders ADD CONSTRAINT orders_paid_or_refunded CHECK (NOT (paid AND refunded));
