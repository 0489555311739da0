-- Encryption at rest: each stored object's data key, wrapped by a master key. An object's
-- header names its key by `id` (32 hex digits); `master_key` is the id of the master key that
-- wrapped it, so that a rotation finds what it still has to rewrap.
CREATE TABLE data_keys (
    id         TEXT PRIMARY KEY,
    wrapped    BLOB NOT NULL,
    master_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX data_keys_master_key ON data_keys (master_key);
