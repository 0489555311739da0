-- An upload's running SHA-256 state and the content-store parts that hold its bytes, recorded
-- with its size: any node can take the next chunk or finish the upload without re-reading it.
ALTER TABLE uploads ADD COLUMN hash_state BYTEA;
ALTER TABLE uploads ADD COLUMN parts TEXT NOT NULL DEFAULT '';
