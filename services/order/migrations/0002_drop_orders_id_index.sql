-- The primary key (id, created_at) already serves lookups by id; a second
-- index on id alone only cost every insert one more index write.
DROP INDEX orders_id;

-- 0001 says its monthly partition covers the month of the migration; it
-- creates none. The service creates them (ensure_partitions), from last
-- month to three ahead, at start-up and hourly.
