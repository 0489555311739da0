//! Pull-through caches: repository prefixes of a registry that proxy an upstream, and when each
//! cached tag was last found current there.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, Meta, MetaError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRecord {
    pub id: i64,
    pub registry_id: i64,
    /// The repository prefix (`hub`): `hub/x` is cached from the upstream.
    pub prefix: String,
    pub upstream_id: i64,
    /// The upstream's `host[:port]`, read with the rule.
    pub upstream_host: String,
    /// Put before the rest of a name on the upstream (`library`), or empty.
    pub upstream_prefix: String,
    /// A cached tag is asked for again on the upstream after this many seconds.
    pub revalidate_secs: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct CacheChanges {
    pub upstream_id: Option<i64>,
    pub upstream_prefix: Option<String>,
    pub revalidate_secs: Option<i64>,
}

const COLUMNS: &str = "c.id, c.registry_id, c.prefix, c.upstream_id, u.host AS upstream_host, \
                       c.upstream_prefix, c.revalidate_secs, c.created_at, c.updated_at";

fn record(r: &AnyRow) -> Result<CacheRecord> {
    Ok(CacheRecord {
        id: r.try_get("id")?,
        registry_id: r.try_get("registry_id")?,
        prefix: r.try_get("prefix")?,
        upstream_id: r.try_get("upstream_id")?,
        upstream_host: r.try_get("upstream_host")?,
        upstream_prefix: r.try_get("upstream_prefix")?,
        revalidate_secs: r.try_get("revalidate_secs")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Meta {
    /// Stores a new cache rule; a prefix the registry has already is [`MetaError::Conflict`].
    pub async fn create_cache(&self, c: &CacheRecord) -> Result<CacheRecord> {
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO caches (registry_id, prefix, upstream_id, upstream_prefix, \
             revalidate_secs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (registry_id, prefix) DO NOTHING",
        )
        .bind(c.registry_id)
        .bind(&c.prefix)
        .bind(c.upstream_id)
        .bind(&c.upstream_prefix)
        .bind(c.revalidate_secs)
        .bind(now)
        .execute(&self.write)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(MetaError::Conflict(format!(
                "the registry has a cache for {}/ already; update it instead",
                c.prefix
            )));
        }
        self.cache(c.registry_id, &c.prefix)
            .await?
            .ok_or_else(|| MetaError::Conflict("the cache was deleted as it was made".into()))
    }

    pub async fn caches(&self, registry_id: i64) -> Result<Vec<CacheRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM caches c JOIN upstreams u ON u.id = c.upstream_id \
             WHERE c.registry_id = $1 ORDER BY c.prefix"
        ))
        .bind(registry_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(record)
        .collect()
    }

    pub async fn cache(&self, registry_id: i64, prefix: &str) -> Result<Option<CacheRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM caches c JOIN upstreams u ON u.id = c.upstream_id \
             WHERE c.registry_id = $1 AND c.prefix = $2"
        ))
        .bind(registry_id)
        .bind(prefix)
        .fetch_optional(&self.write)
        .await?
        .as_ref()
        .map(record)
        .transpose()
    }

    /// Applies `changes`; `None` when there is no such cache.
    pub async fn update_cache(
        &self,
        registry_id: i64,
        prefix: &str,
        changes: &CacheChanges,
    ) -> Result<Option<CacheRecord>> {
        let done = sqlx::query(
            "UPDATE caches SET upstream_id = COALESCE($3, upstream_id), \
             upstream_prefix = COALESCE($4, upstream_prefix), \
             revalidate_secs = COALESCE($5, revalidate_secs), updated_at = $6 \
             WHERE registry_id = $1 AND prefix = $2",
        )
        .bind(registry_id)
        .bind(prefix)
        .bind(changes.upstream_id)
        .bind(&changes.upstream_prefix)
        .bind(changes.revalidate_secs)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.cache(registry_id, prefix).await
    }

    /// Removes a cache rule (what it cached stays, as pushed content would); false when there
    /// was none.
    pub async fn delete_cache(&self, registry_id: i64, prefix: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM caches WHERE registry_id = $1 AND prefix = $2")
            .bind(registry_id)
            .bind(prefix)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The prefixes of the caches that fetch from an upstream.
    pub async fn caches_of_upstream(&self, upstream_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT prefix FROM caches WHERE upstream_id = $1 ORDER BY prefix")
            .bind(upstream_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("prefix")?))
            .collect()
    }

    /// When a cached tag was last found current on its upstream (milliseconds).
    pub async fn cache_checked_at(
        &self,
        registry_id: i64,
        repository: &str,
        tag: &str,
    ) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT checked_at FROM cache_checks \
             WHERE registry_id = $1 AND repository = $2 AND tag = $3",
        )
        .bind(registry_id)
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| r.try_get("checked_at")).transpose()?)
    }

    /// Notes that a cached tag was found current on its upstream now.
    pub async fn cache_checked(&self, registry_id: i64, repository: &str, tag: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO cache_checks (registry_id, repository, tag, checked_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (registry_id, repository, tag) \
             DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(registry_id)
        .bind(repository)
        .bind(tag)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

impl Meta {
    /// The manifests of a repository that reference blob `digest` and whose blobs are now all
    /// in the repository: cached images this blob completed.
    pub async fn manifests_completed_by(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             JOIN manifest_references mr ON mr.manifest_id = m.id \
             AND mr.kind = 'blob' AND mr.digest = $3 \
             WHERE r.registry_id = $1 AND r.name = $2 AND NOT EXISTS ( \
               SELECT 1 FROM manifest_references x WHERE x.manifest_id = m.id \
               AND x.kind = 'blob' AND NOT EXISTS ( \
                 SELECT 1 FROM repository_blobs rb \
                 WHERE rb.repository_id = m.repository_id AND rb.digest = x.digest))",
        )
        .bind(registry_id)
        .bind(repository)
        .bind(digest)
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("digest")?))
            .collect()
    }
}
