-- Robot tokens of a registry. Only a slow salted hash of the secret is kept.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    enabled     BIGINT NOT NULL DEFAULT 1,
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL,
    UNIQUE (registry_id, name)
);
CREATE INDEX tokens_expiry ON tokens (expires_at);

CREATE TABLE token_scopes (
    id       INTEGER PRIMARY KEY,
    token_id BIGINT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,
    path     TEXT NOT NULL,
    actions  TEXT NOT NULL
);
CREATE INDEX token_scopes_token ON token_scopes (token_id);

-- Keys that sign the JWTs of the token flow, shared by every node.
CREATE TABLE signing_keys (
    id         BIGINT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

-- Anonymous pull, off by default.
ALTER TABLE repositories ADD COLUMN public BIGINT NOT NULL DEFAULT 0;
