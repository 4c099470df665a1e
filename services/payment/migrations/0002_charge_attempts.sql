-- Every provider asked to charge an order, written and committed BEFORE the
-- call. The payment row commits only after the call, in the consumer's
-- transaction; if that never commits (crash, failed commit), a capture the
-- provider made is still findable: a retry asks these providers first instead
-- of charging another one, and a cancellation refunds what they hold.
CREATE TABLE charge_attempts (
    order_id     UUID        NOT NULL,
    provider     TEXT        NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, provider)
);
