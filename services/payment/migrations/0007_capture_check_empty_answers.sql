-- How many of a capture check's attempts the provider answered "I hold
-- nothing" (the rest it could not answer at all). Only those answers use up
-- the window a charge still in flight gets to land: a provider unreachable
-- for hours must not have its window spent before it ever answered.
ALTER TABLE capture_checks ADD COLUMN empty_answers INT NOT NULL DEFAULT 0;
