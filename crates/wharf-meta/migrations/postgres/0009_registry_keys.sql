-- A registry with a master key of its own: its id (`r-...`, what its data keys name) and the
-- key itself, wrapped by the instance's master key. Deleting the row destroys the key.
ALTER TABLE registries ADD COLUMN key_id TEXT;
ALTER TABLE registries ADD COLUMN wrapped_key BYTEA;
