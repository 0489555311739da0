-- Every repository, manifest, tag and upload belongs to a registry (tenant).
CREATE TABLE registries (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    location    TEXT NOT NULL DEFAULT '',
    scanning    INTEGER NOT NULL DEFAULT 0,
    gc_schedule TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (registry_id, name)
);

-- Content is stored once per digest and shared by every repository that links it.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL REFERENCES blobs(digest),
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

CREATE TABLE manifests (
    id            INTEGER PRIMARY KEY,
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    size          BIGINT NOT NULL,
    content       BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject);

-- What each manifest needs: blobs (config, layers) and child manifests. Kept for garbage collection.
CREATE TABLE manifest_references (
    manifest_id BIGINT NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    digest      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    PRIMARY KEY (manifest_id, kind, digest)
);
CREATE INDEX manifest_references_digest ON manifest_references (digest);

CREATE TABLE tags (
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    manifest_id   BIGINT NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_manifest ON tags (manifest_id);

-- Repositories are created on first push, so an upload names its repository by name.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    repository  TEXT NOT NULL,
    size        BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
