-- Scheduled imports of the vulnerability database from configured sources: one node imports at
-- a time (the claim, refreshed while it works and taken over when stale), an import can be asked
-- for ahead of the schedule, and the last run's report is kept for `vulndb status`.
ALTER TABLE vuln_db ADD COLUMN run_claimed_at BIGINT;
ALTER TABLE vuln_db ADD COLUMN run_requested_at BIGINT;
ALTER TABLE vuln_db ADD COLUMN run_started_at BIGINT;
ALTER TABLE vuln_db ADD COLUMN run_finished_at BIGINT;
ALTER TABLE vuln_db ADD COLUMN run_report TEXT;
