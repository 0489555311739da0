-- Online garbage collection.
--
-- Every stored blob object: a blob's content in one scope ('' for the instance's content, else
-- the id of the registry key it is stored apart under). Whatever links a blob into a
-- repository (an upload, a mount) first sets `pinned_at` on its object, holding the row for
-- its transaction; a collection claims an object (sets `deleting_since`) only when nothing
-- links it and it was not pinned within the grace period. Both take the same row, so a link
-- and a claim can never both win.
CREATE TABLE blob_objects (
    scope          TEXT NOT NULL,
    digest         TEXT NOT NULL,
    size           BIGINT NOT NULL,
    pinned_at      BIGINT NOT NULL,
    deleting_since BIGINT,
    PRIMARY KEY (scope, digest)
);
CREATE INDEX blob_objects_digest ON blob_objects (digest);
INSERT INTO blob_objects (scope, digest, size, pinned_at)
    SELECT DISTINCT COALESCE(g.key_id, ''), b.digest, b.size, b.created_at FROM blobs b
    JOIN repository_blobs rb ON rb.digest = b.digest
    JOIN repositories r ON r.id = rb.repository_id
    JOIN registries g ON g.id = r.registry_id;
-- Blobs no repository links any more (of deleted repositories) are the instance's: a scoped
-- one's object, if any, is left where it is.
INSERT INTO blob_objects (scope, digest, size, pinned_at)
    SELECT '', b.digest, b.size, b.created_at FROM blobs b
    WHERE NOT EXISTS (SELECT 1 FROM blob_objects o WHERE o.digest = b.digest);

-- A manifest pushed again is young again: the grace period protects it from its last push.
ALTER TABLE manifests ADD COLUMN pushed_at BIGINT NOT NULL DEFAULT 0;
UPDATE manifests SET pushed_at = created_at;
CREATE INDEX repository_blobs_created ON repository_blobs (created_at);

-- Whether collections remove manifests nothing refers to (no tag, no index, no live subject).
ALTER TABLE registries ADD COLUMN gc_untagged INTEGER NOT NULL DEFAULT 1;
-- When the schedule next falls (milliseconds); the node that moves it on runs the collection.
ALTER TABLE registries ADD COLUMN gc_next_run BIGINT;
-- Storage a registry may use (bytes); pushes beyond it are refused. NULL: no quota.
ALTER TABLE registries ADD COLUMN quota_bytes BIGINT;

-- Collections, one running per registry at a time (the unique index), with what they freed.
-- Registry 0 is the instance: its runs free what deleted registries and repositories left.
CREATE TABLE gc_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    registry_id     BIGINT NOT NULL,
    cause           TEXT NOT NULL,
    dry_run         INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL,
    phase           TEXT NOT NULL DEFAULT '',
    started_at      BIGINT NOT NULL,
    heartbeat_at    BIGINT NOT NULL,
    finished_at     BIGINT,
    manifests_freed BIGINT NOT NULL DEFAULT 0,
    blobs_freed     BIGINT NOT NULL DEFAULT 0,
    bytes_freed     BIGINT NOT NULL DEFAULT 0,
    error           TEXT,
    details         TEXT
);
CREATE UNIQUE INDEX gc_runs_one_running ON gc_runs (registry_id) WHERE status = 'running';
CREATE INDEX gc_runs_registry ON gc_runs (registry_id, id);
