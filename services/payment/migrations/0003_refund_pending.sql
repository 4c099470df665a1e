-- A refund the provider cannot take yet (an outage, no answer) no longer
-- fails the cancellation into the dead-letter topic: the payment is marked
-- REFUND_PENDING in the consumer's transaction and a background task asks
-- again, backing off, until the money is back.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUND_PENDING', 'REFUNDED'));
ALTER TABLE payments
    ADD COLUMN refund_attempts INT         NOT NULL DEFAULT 0,
    ADD COLUMN next_refund_at  TIMESTAMPTZ,
    ADD COLUMN refund_error    TEXT        NOT NULL DEFAULT '';

CREATE INDEX payments_refunds_due ON payments (next_refund_at) WHERE status = 'REFUND_PENDING';
