-- Whether the order's payment went back. With `paid` it tells a capture
-- heard after its refund (a dead-letter replay) from one still to refund.
-- Payment captures an order once, so a refund noted in the history is
-- final, even where a replayed capture set `paid` again after it.
ALTER TABLE orders ADD COLUMN refunded BOOLEAN NOT NULL DEFAULT false;
UPDATE orders o SET refunded = true, paid = false
WHERE EXISTS (SELECT 1 FROM order_status_history h WHERE h.order_id = o.id AND h.note = 'payment refunded');
ALTER TABLE orders ADD CONSTRAINT orders_paid_or_refunded CHECK (NOT (paid AND refunded));
