-- Pull-through caches: a repository prefix of a registry (e.g. 'hub') that proxies an upstream.
-- 'hub/x' is fetched from the upstream as upstream_prefix + '/x' (or 'x' when it is empty). An
-- upstream in use by a cache cannot be deleted.
CREATE TABLE caches (
    id               INTEGER PRIMARY KEY,
    registry_id      BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    prefix           TEXT NOT NULL,
    upstream_id      BIGINT NOT NULL REFERENCES upstreams(id),
    upstream_prefix  TEXT NOT NULL DEFAULT '',
    revalidate_secs  BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (registry_id, prefix)
);
CREATE INDEX caches_upstream ON caches (upstream_id);

-- When a cached tag was last found current on its upstream: it is asked again once
-- revalidate_secs have passed.
CREATE TABLE cache_checks (
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    repository  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    checked_at  BIGINT NOT NULL,
    PRIMARY KEY (registry_id, repository, tag)
);
