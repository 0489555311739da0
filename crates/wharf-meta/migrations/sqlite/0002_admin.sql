-- Administrators' API keys: only a hash of the secret is kept.
CREATE TABLE admin_keys (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT,
    revoked_at   BIGINT
);

-- Who changed what, when.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    registry   TEXT,
    repository TEXT,
    digest     TEXT,
    detail     TEXT
);
CREATE INDEX audit_log_registry ON audit_log (registry, id);
