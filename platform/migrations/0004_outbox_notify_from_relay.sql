-- The relay is now woken in-process after commit (and by a NOTIFY from other
-- replicas, sent outside business transactions). A NOTIFY inside every
-- writing transaction serialised their commits on Postgres' notify lock.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS shopmesh_outbox_notify();
