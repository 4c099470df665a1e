-- A provider that refused a charge outright (unavailable: it never took the
-- request) holds nothing from that attempt, so the order may go to another
-- provider. Any other attempt (no answer, a crash mid-call, a decline, a
-- capture) pins the order to its provider: a retry asks it again under the
-- same idempotency key and no other, or one charge could become two.
ALTER TABLE charge_attempts ADD COLUMN refused BOOLEAN NOT NULL DEFAULT false;
