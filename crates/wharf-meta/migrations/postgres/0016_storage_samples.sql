-- Storage used by each registry over time, sampled by one node per interval (the sample's time
-- is the start of its interval, so nodes sampling at once write one row): the console draws it.
CREATE TABLE storage_samples (
    registry_id BIGINT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    PRIMARY KEY (registry_id, at)
);
