-- Token and administrator key ids are never reused: SQLite hands a deleted row's id to the next
-- insert unless the key is AUTOINCREMENT, and a JWT names its token by id. The tables are
-- rebuilt with AUTOINCREMENT keys, rows and ids kept; token_scopes is rebuilt first so that
-- dropping the old tokens table cascades to nothing.
CREATE TABLE tokens_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    enabled     BIGINT NOT NULL DEFAULT 1,
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL,
    UNIQUE (registry_id, name)
);
INSERT INTO tokens_new (id, registry_id, name, secret_hash, enabled, expires_at, created_at)
    SELECT id, registry_id, name, secret_hash, enabled, expires_at, created_at FROM tokens;

CREATE TABLE token_scopes_new (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id BIGINT NOT NULL REFERENCES tokens_new(id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,
    path     TEXT NOT NULL,
    actions  TEXT NOT NULL
);
INSERT INTO token_scopes_new (id, token_id, kind, path, actions)
    SELECT id, token_id, kind, path, actions FROM token_scopes;

DROP TABLE token_scopes;
DROP TABLE tokens;
-- Renaming rewrites token_scopes_new's reference to point at the renamed table.
ALTER TABLE tokens_new RENAME TO tokens;
ALTER TABLE token_scopes_new RENAME TO token_scopes;
CREATE INDEX tokens_expiry ON tokens (expires_at);
CREATE INDEX token_scopes_token ON token_scopes (token_id);

CREATE TABLE admin_keys_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT,
    revoked_at   BIGINT
);
INSERT INTO admin_keys_new (id, name, key_hash, prefix, permissions, created_at, created_by, revoked_at)
    SELECT id, name, key_hash, prefix, permissions, created_at, created_by, revoked_at FROM admin_keys;
DROP TABLE admin_keys;
ALTER TABLE admin_keys_new RENAME TO admin_keys;

-- Requests per second each token of the registry may make; NULL takes the server's setting.
ALTER TABLE registries ADD COLUMN rate_limit BIGINT;

-- Upload sessions are counted per repository and expired by age.
CREATE INDEX uploads_repository ON uploads (registry_id, repository);
CREATE INDEX uploads_updated ON uploads (updated_at);
