-- The built-in test providers' books: what each simulated provider charged
-- under which idempotency key, and which charges it refunded. A real
-- provider keeps these on its side. Written on the providers' own
-- connections, never in a payment's transaction, they outlive a crash of
-- the payment process as a real provider's would. Unused by real providers.
CREATE TABLE test_provider_charges (
    provider           TEXT        NOT NULL,
    idempotency_key    TEXT        NOT NULL,
    -- A charge has a reference, card, currency and amount; a decline its reason.
    provider_reference TEXT,
    card_display       TEXT,
    currency_code      TEXT,
    amount_minor       BIGINT,
    declined           TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, idempotency_key)
);

CREATE TABLE test_provider_refunds (
    provider_reference TEXT        PRIMARY KEY,
    refunded_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
