//! Push replication: rules that copy what is pushed to an upstream, and the jobs (one per rule
//! and pushed manifest) that do it, retried with back-off; finished jobs are the history.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, Meta, MetaError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationRule {
    pub id: i64,
    pub registry_id: i64,
    pub name: String,
    /// Repository pattern (`*` matches any characters).
    pub repositories: String,
    /// Tag pattern; empty: every tag.
    pub tags: String,
    pub upstream_id: i64,
    /// The upstream's `host[:port]`, read with the rule.
    pub upstream_host: String,
    /// The repository on the upstream; `{name}` stands for the pushed repository's name.
    pub target: String,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RuleChanges {
    pub repositories: Option<String>,
    pub tags: Option<String>,
    pub upstream_id: Option<i64>,
    pub target: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationJob {
    pub id: i64,
    pub rule_id: i64,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    /// `pending` (waiting, running or to be retried), `succeeded` or `failed` (gave up).
    pub status: String,
    pub attempts: i64,
    /// When it is (next) due.
    pub next_at: i64,
    /// When a node took it last; a pending job claimed recently is running.
    pub claimed_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A rule's jobs by state, and its last success and failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    pub pending: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
}

const RULE_COLUMNS: &str = "r.id, r.registry_id, r.name, r.repositories, r.tags, r.upstream_id, \
     u.host AS upstream_host, r.target, r.enabled, r.created_at, r.updated_at";

const JOB_COLUMNS: &str = "id, rule_id, repository, tag, digest, status, attempts, next_at, \
     claimed_at, last_error, created_at, finished_at";

fn rule(r: &AnyRow) -> Result<ReplicationRule> {
    Ok(ReplicationRule {
        id: r.try_get("id")?,
        registry_id: r.try_get("registry_id")?,
        name: r.try_get("name")?,
        repositories: r.try_get("repositories")?,
        tags: r.try_get("tags")?,
        upstream_id: r.try_get("upstream_id")?,
        upstream_host: r.try_get("upstream_host")?,
        target: r.try_get("target")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn job(r: &AnyRow) -> Result<ReplicationJob> {
    Ok(ReplicationJob {
        id: r.try_get("id")?,
        rule_id: r.try_get("rule_id")?,
        repository: r.try_get("repository")?,
        tag: r.try_get("tag")?,
        digest: r.try_get("digest")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_at: r.try_get("next_at")?,
        claimed_at: r.try_get("claimed_at")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

impl Meta {
    /// Stores a new rule; a name the registry has already is [`MetaError::Conflict`].
    pub async fn create_replication_rule(&self, r: &ReplicationRule) -> Result<ReplicationRule> {
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO replication_rules (registry_id, name, repositories, tags, upstream_id, \
             target, enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (registry_id, name) DO NOTHING",
        )
        .bind(r.registry_id)
        .bind(&r.name)
        .bind(&r.repositories)
        .bind(&r.tags)
        .bind(r.upstream_id)
        .bind(&r.target)
        .bind(i64::from(r.enabled))
        .bind(now)
        .execute(&self.write)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(MetaError::Conflict(format!(
                "the registry has a replication rule named {:?} already",
                r.name
            )));
        }
        self.replication_rule(r.registry_id, &r.name)
            .await?
            .ok_or_else(|| MetaError::Conflict("the rule was deleted as it was made".into()))
    }

    pub async fn replication_rules(&self, registry_id: i64) -> Result<Vec<ReplicationRule>> {
        sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM replication_rules r \
             JOIN upstreams u ON u.id = r.upstream_id WHERE r.registry_id = $1 ORDER BY r.name"
        ))
        .bind(registry_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(rule)
        .collect()
    }

    pub async fn replication_rule(
        &self,
        registry_id: i64,
        name: &str,
    ) -> Result<Option<ReplicationRule>> {
        sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM replication_rules r \
             JOIN upstreams u ON u.id = r.upstream_id WHERE r.registry_id = $1 AND r.name = $2"
        ))
        .bind(registry_id)
        .bind(name)
        .fetch_optional(&self.write)
        .await?
        .as_ref()
        .map(rule)
        .transpose()
    }

    pub async fn replication_rule_by_id(&self, id: i64) -> Result<Option<ReplicationRule>> {
        sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM replication_rules r \
             JOIN upstreams u ON u.id = r.upstream_id WHERE r.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(rule)
        .transpose()
    }

    /// Applies `changes`; `None` when there is no such rule.
    pub async fn update_replication_rule(
        &self,
        registry_id: i64,
        name: &str,
        changes: &RuleChanges,
    ) -> Result<Option<ReplicationRule>> {
        let done = sqlx::query(
            "UPDATE replication_rules SET repositories = COALESCE($3, repositories), \
             tags = COALESCE($4, tags), upstream_id = COALESCE($5, upstream_id), \
             target = COALESCE($6, target), enabled = COALESCE($7, enabled), updated_at = $8 \
             WHERE registry_id = $1 AND name = $2",
        )
        .bind(registry_id)
        .bind(name)
        .bind(&changes.repositories)
        .bind(&changes.tags)
        .bind(changes.upstream_id)
        .bind(&changes.target)
        .bind(changes.enabled.map(i64::from))
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.replication_rule(registry_id, name).await
    }

    /// Removes a rule with its jobs and history; false when there was none.
    pub async fn delete_replication_rule(&self, registry_id: i64, name: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM replication_rules WHERE registry_id = $1 AND name = $2")
                .bind(registry_id)
                .bind(name)
                .execute(&self.write)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The names of the rules that copy to an upstream.
    pub async fn rules_of_upstream(&self, upstream_id: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT name FROM replication_rules WHERE upstream_id = $1 ORDER BY name")
                .bind(upstream_id)
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("name")?))
            .collect()
    }

    /// Queues a copy of a pushed manifest by a rule, due at once.
    pub async fn queue_replication(
        &self,
        rule_id: i64,
        repository: &str,
        tag: Option<&str>,
        digest: &str,
    ) -> Result<()> {
        let now = now_millis();
        sqlx::query(
            "INSERT INTO replication_jobs (rule_id, repository, tag, digest, status, next_at, \
             created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5)",
        )
        .bind(rule_id)
        .bind(repository)
        .bind(tag)
        .bind(digest)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Takes the oldest due job for this node: pending, due, and not claimed since
    /// `stale_before` (a node that stopped mid-copy leaves its claim to go stale).
    pub async fn claim_replication(&self, stale_before: i64) -> Result<Option<ReplicationJob>> {
        let now = now_millis();
        let free =
            "status = 'pending' AND next_at <= $1 AND (claimed_at IS NULL OR claimed_at < $2)";
        let candidates = sqlx::query(&format!(
            "SELECT id FROM replication_jobs WHERE {free} ORDER BY next_at, id LIMIT 8"
        ))
        .bind(now)
        .bind(stale_before)
        .fetch_all(&self.read)
        .await?;
        for c in candidates {
            let id: i64 = c.try_get("id")?;
            let claimed = sqlx::query(&format!(
                "UPDATE replication_jobs SET claimed_at = $3, attempts = attempts + 1 \
                 WHERE id = $4 AND {free} RETURNING {JOB_COLUMNS}"
            ))
            .bind(now)
            .bind(stale_before)
            .bind(now)
            .bind(id)
            .fetch_all(&self.write)
            .await?
            .pop();
            if let Some(row) = claimed {
                return job(&row).map(Some);
            }
        }
        Ok(None)
    }

    /// Ends a job: succeeded (`error` none), failed for good, or due again at `retry_at`.
    pub async fn end_replication(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let now = now_millis();
        let (status, next_at, finished) = match (error, retry_at) {
            (None, _) => ("succeeded", now, Some(now)),
            (Some(_), Some(at)) => ("pending", at, None),
            (Some(_), None) => ("failed", now, Some(now)),
        };
        sqlx::query(
            "UPDATE replication_jobs SET status = $2, next_at = $3, finished_at = $4, \
             last_error = $5, claimed_at = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(next_at)
        .bind(finished)
        .bind(error)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A rule's jobs, newest first, from before job `before` when given.
    pub async fn replication_history(
        &self,
        rule_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReplicationJob>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM replication_jobs WHERE rule_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(rule_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(job)
        .collect()
    }

    /// A rule's jobs by state, and its last success and the last error.
    pub async fn replication_status(&self, rule_id: i64) -> Result<RuleStatus> {
        let row = sqlx::query(
            "SELECT \
             COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), 0) AS succeeded, \
             COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed, \
             MAX(CASE WHEN status = 'succeeded' THEN finished_at END) AS last_success_at \
             FROM replication_jobs WHERE rule_id = $1",
        )
        .bind(rule_id)
        .fetch_one(&self.read)
        .await?;
        let last_error = sqlx::query(
            "SELECT last_error FROM replication_jobs WHERE rule_id = $1 \
             AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(rule_id)
        .fetch_optional(&self.read)
        .await?
        .map(|r| r.try_get::<String, _>("last_error"))
        .transpose()?;
        Ok(RuleStatus {
            pending: row.try_get("pending")?,
            succeeded: row.try_get("succeeded")?,
            failed: row.try_get("failed")?,
            last_success_at: row.try_get("last_success_at")?,
            last_error,
        })
    }

    /// Forgets finished jobs older than `before` (the history kept is bounded in time).
    pub async fn prune_replication_history(&self, before: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM replication_jobs WHERE status <> 'pending' AND finished_at < $1",
        )
        .bind(before)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }
}
