-- Scanning inside the registry.
--
-- When a manifest was last handed to a client (stamped by the audit writer, at most once a
-- minute per manifest): images pulled lately are matched again when the database changes.
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT;

-- One scan per image manifest and content scope ('' for the instance's content, else the
-- registry key it is stored apart under, as in blob_objects): the queue and the result in one
-- row. A node claims a pending row (claimed_at) and writes the result; a claim older than the
-- scan time limit is stale and taken over. `db_version` is the vulnerability database version
-- the findings were matched against: rows behind the current one are matched again.
CREATE TABLE scans (
    scope      TEXT NOT NULL,
    digest     TEXT NOT NULL,
    status     TEXT NOT NULL,
    reason     TEXT,
    queued_at  BIGINT NOT NULL,
    claimed_at BIGINT,
    attempts   BIGINT NOT NULL DEFAULT 0,
    scanned_at BIGINT,
    db_version BIGINT NOT NULL DEFAULT 0,
    os         TEXT,
    packages   BIGINT,
    partial    INTEGER NOT NULL DEFAULT 0,
    highest    TEXT,
    summary    TEXT,
    PRIMARY KEY (scope, digest)
);
CREATE INDEX scans_status ON scans (status, queued_at);

-- The findings of each scan, one row per (vulnerability, package); `ids` holds the ID and its
-- aliases between spaces, for the search by any of them.
CREATE TABLE scan_findings (
    scope     TEXT NOT NULL,
    digest    TEXT NOT NULL,
    vuln_id   TEXT NOT NULL,
    package   TEXT NOT NULL,
    installed TEXT NOT NULL,
    fixed     TEXT,
    severity  TEXT NOT NULL,
    rank      INTEGER NOT NULL,
    score     DOUBLE PRECISION,
    ids       TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (scope, digest, vuln_id, package, installed)
);
CREATE INDEX scan_findings_vuln ON scan_findings (vuln_id);

-- The vulnerability database's version: an import that changes anything moves it on.
CREATE TABLE vuln_db (
    id         INTEGER PRIMARY KEY,
    version    BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
INSERT INTO vuln_db (id, version, changed_at) VALUES (1, 1, 0);

-- Every other ID an advisory is known by (its CVE, a GHSA...), for the look-up of a
-- vulnerability by any of them.
CREATE TABLE vuln_aliases (
    alias  TEXT NOT NULL,
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (alias, source, id)
);
CREATE INDEX vuln_aliases_advisory ON vuln_aliases (source, id);
