-- Maintenance mode: a read-only registry refuses writes while pulls go on.
ALTER TABLE registries ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
