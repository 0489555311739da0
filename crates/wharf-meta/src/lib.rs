//! Metadata: registries, repositories, blobs links, manifests, tags and upload sessions.
//!
//! One implementation serves SQLite (embedded default) and PostgreSQL (scale-out): queries are
//! written in the SQL both accept and run through sqlx's `Any` driver; only the migrations differ.

mod admin;
mod caches;
mod copy;
mod db;
mod gc;
mod keys;
mod manifests;
mod registries;
mod replication;
mod scans;
mod tokens;
mod uploads;
mod upstreams;
mod vulndb;

pub use admin::{AdminKey, AuditEntry, AuditRecord, OwnedAuditEntry};
pub use caches::{CacheChanges, CacheRecord};
pub use db::{Backend, Meta};
pub use gc::{Collector, Garbage, GcCounts, GcPhase, GcRun, Pin};
pub use manifests::{ListPage, NewManifest, Referrer, StoredManifest};
pub use registries::{NewRegistry, Registry, RegistryChanges, RegistryStats, RepositoryInfo};
pub use replication::{ReplicationJob, ReplicationRule, RuleChanges, RuleStatus};
pub use scans::{
    AffectedArtifact, ArtifactInfo, FindingCursor, FindingFilter, FindingRow, ScanJob, ScanOutcome,
    ScanRecord, SCANNABLE_NAME,
};
pub use tokens::{NewScope, ScopeRecord, TokenRecord};
pub use uploads::Upload;
pub use upstreams::{UpstreamChanges, UpstreamRecord};
pub use vulndb::{AdvisoryRow, ImportCounts, ScoreRow, SourceStatus, VulnDbState};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("manifest references content missing from the repository: {}", .0.join(", "))]
    MissingReferences(Vec<String>),
    /// A blob's stored object was claimed by garbage collection while it was being linked
    /// (its grace period ran out during the upload).
    #[error("blob {0} was collected as garbage while it was being uploaded; upload it again")]
    Collected(String),
}

impl MetaError {
    /// Whether the database could not be reached (down, restarting, out of connections), as
    /// opposed to refusing a request: callers answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MetaError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        ) || matches!(self, MetaError::Database(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }

    /// Whether a row the change refers to was deleted meanwhile (a registry deleted while a
    /// push into it was being recorded).
    pub fn is_gone(&self) -> bool {
        matches!(self, MetaError::Database(sqlx::Error::Database(e))
            if e.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
    }

    /// Whether PostgreSQL gave up the transaction to let a concurrent one go on (a deadlock's
    /// victim, a serialization failure): running it again is the remedy.
    pub fn is_conflict_retry(&self) -> bool {
        matches!(self, MetaError::Database(sqlx::Error::Database(e))
            if e.code().is_some_and(|c| c == "40P01" || c == "40001"))
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// Runs `attempt` again, up to four more times with a growing pause, while it fails in a way
/// `when` says another attempt can mend.
pub(crate) async fn retry<T, F, Fut>(when: impl Fn(&MetaError) -> bool, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e) if tries < 4 && when(&e) => {
                tries += 1;
                tracing::debug!(error = %e, "retried");
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            other => return other,
        }
    }
}

/// Listings fetch one row more than `limit`: its presence tells that another page follows.
pub(crate) fn page<T>(
    rows: &[sqlx::any::AnyRow],
    limit: i64,
    item: impl FnMut(&sqlx::any::AnyRow) -> Result<T>,
) -> Result<(Vec<T>, bool)> {
    let more = rows.len() as i64 > limit;
    let items = rows
        .iter()
        .take(limit.max(0) as usize)
        .map(item)
        .collect::<Result<Vec<_>>>()?;
    Ok((items, more))
}

/// Milliseconds since the Unix epoch: the time type of every table.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
