-- Credentials for external registries, per registry: one entry per upstream host. The secret is
-- sealed under the registry's keys where encryption is on ('sealed:' + base64), never returned.
CREATE TABLE upstreams (
    id                INTEGER PRIMARY KEY,
    registry_id       BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    host              TEXT NOT NULL,
    url               TEXT NOT NULL,
    username          TEXT NOT NULL,
    secret            TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    ca_certificate    TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    secret_updated_at BIGINT NOT NULL,
    UNIQUE (registry_id, host)
);

-- Tokens deleted at their expiry, remembered for a while so that a login with one is told it
-- expired (a client, or an upstream connection test, can then say why) rather than "unknown".
CREATE TABLE expired_tokens (
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    expired_at  BIGINT NOT NULL,
    PRIMARY KEY (registry_id, name)
);

-- Manifests by digest alone: the registry-wide vulnerability search joins findings to them, and
-- garbage collection looks for scans whose image no registry holds any more.
CREATE INDEX manifests_digest ON manifests (digest);
