-- Imported advisories, one row per (source, id); `doc` is the advisory as the scanner reads it
-- and `digest` its hash, so a re-import rewrites only what changed.
CREATE TABLE vuln_advisories (
    source      TEXT NOT NULL,
    id          TEXT NOT NULL,
    modified    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    doc         TEXT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (source, id)
);

-- Which packages an advisory names, for lookup by (ecosystem, package).
CREATE TABLE vuln_packages (
    ecosystem TEXT NOT NULL,
    package   TEXT NOT NULL,
    source    TEXT NOT NULL,
    id        TEXT NOT NULL,
    PRIMARY KEY (ecosystem, package, source, id)
);
CREATE INDEX vuln_packages_advisory ON vuln_packages (source, id);

-- CVSS scores from scoring tables (NVD, CNAs, CISA-ADP), by CVE.
CREATE TABLE vuln_scores (
    cve      TEXT NOT NULL,
    source   TEXT NOT NULL,
    version  TEXT NOT NULL,
    vector   TEXT,
    score    DOUBLE PRECISION NOT NULL,
    modified TEXT,
    PRIMARY KEY (cve, source, version)
);

-- One row per imported source: what `wharf vulndb status` shows.
CREATE TABLE vuln_sources (
    source      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    file        TEXT NOT NULL,
    records     BIGINT NOT NULL,
    newest      TEXT,
    imported_at BIGINT NOT NULL
);

-- Package inventories of scanned images, so a new database is matched without reading layers.
CREATE TABLE scan_inventories (
    image            TEXT PRIMARY KEY,
    detector_version BIGINT NOT NULL,
    doc              TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
