-- The feed is ordered by when each outcome happened, not by when its event
-- reached this service: with uneven consumer lag a refund can be stored
-- before the cancellation that caused it.
ALTER TABLE notifications ADD COLUMN occurred_at TIMESTAMPTZ;
UPDATE notifications SET occurred_at = created_at;
ALTER TABLE notifications ALTER COLUMN occurred_at SET NOT NULL;
CREATE INDEX notifications_user_feed ON notifications (user_id, occurred_at DESC, id DESC);
DROP INDEX notifications_user;
