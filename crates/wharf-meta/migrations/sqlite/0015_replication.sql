-- Push replication: rules per registry copy what is pushed to matching repositories (and tags)
-- to an upstream, under a repository name made from the target template ('{name}' is the
-- repository's own name).
CREATE TABLE replication_rules (
    id           INTEGER PRIMARY KEY,
    registry_id  BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    repositories TEXT NOT NULL,
    tags         TEXT NOT NULL DEFAULT '',
    upstream_id  BIGINT NOT NULL REFERENCES upstreams(id),
    target       TEXT NOT NULL,
    enabled      BIGINT NOT NULL DEFAULT 1,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (registry_id, name)
);
CREATE INDEX replication_rules_upstream ON replication_rules (upstream_id);

-- One copy of one pushed manifest by one rule: queued by the push, claimed by a node's worker
-- (claimed_at, refreshed while it runs), retried with back-off until it succeeds or gives up.
-- Finished jobs are the rule's history.
CREATE TABLE replication_jobs (
    id            INTEGER PRIMARY KEY,
    rule_id       BIGINT NOT NULL REFERENCES replication_rules(id) ON DELETE CASCADE,
    repository    TEXT NOT NULL,
    tag           TEXT,
    digest        TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    next_at       BIGINT NOT NULL,
    claimed_at    BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX replication_jobs_due ON replication_jobs (status, next_at);
CREATE INDEX replication_jobs_rule ON replication_jobs (rule_id, id);
