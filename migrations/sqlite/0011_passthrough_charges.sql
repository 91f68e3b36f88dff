-- Charging batches and fine-tuning jobs (issue 18): the key that created each object, and
-- when its work was charged (NULL = not yet; files are never charged). The gateway polls
-- the uncharged batches and jobs until they end. Same meaning in migrations/sqlite and
-- migrations/postgres.
ALTER TABLE passthrough_objects ADD COLUMN key_id TEXT;
ALTER TABLE passthrough_objects ADD COLUMN charged_at INTEGER;
CREATE INDEX passthrough_objects_uncharged ON passthrough_objects (created_at)
    WHERE charged_at IS NULL AND kind <> 'file';
