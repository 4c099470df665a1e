-- Wake the outbox relay from the database itself: one NOTIFY per inserting
-- statement, delivered at commit, instead of a separate round trip per event.
CREATE OR REPLACE FUNCTION shopmesh_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shopmesh_outbox', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION shopmesh_outbox_notify();
