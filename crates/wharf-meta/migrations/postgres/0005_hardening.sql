-- Identity columns never hand out an id twice, so token and administrator key ids are unique
-- for the life of the database already (a JWT names its token by id).

-- Requests per second each token of the registry may make; NULL takes the server's setting.
ALTER TABLE registries ADD COLUMN rate_limit BIGINT;

-- Upload sessions are counted per repository and expired by age.
CREATE INDEX uploads_repository ON uploads (registry_id, repository);
CREATE INDEX uploads_updated ON uploads (updated_at);
