-- A cancelled order with no payment row whose charge attempt a provider
-- cannot yet account for (it was asked to charge, then stopped answering).
-- Instead of dead-lettering the cancellation, the question is kept here and
-- asked again in the background until the provider says whether it holds
-- money; what it holds is then recorded and refunded.
CREATE TABLE capture_checks (
    order_id      UUID        PRIMARY KEY,
    user_id       UUID        NOT NULL,
    attempts      INT         NOT NULL,
    last_error    TEXT        NOT NULL DEFAULT '',
    next_check_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX capture_checks_due ON capture_checks (next_check_at);
