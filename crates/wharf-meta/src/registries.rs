use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, ListPage, Meta, MetaError, Result};

/// A registry (tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub id: i64,
    pub name: String,
    pub location: String,
    pub scanning: bool,
    /// The garbage-collection schedule as the API stores it (JSON), if any.
    pub gc_schedule: Option<String>,
    pub created_at: i64,
    /// Requests per second each of its tokens may make; `None` takes the server's setting,
    /// 0 is unlimited.
    pub rate_limit: Option<i64>,
    /// Maintenance mode: writes are refused, reads go on.
    pub read_only: bool,
    /// The id of the registry's own master key, if it has one (else the instance's wraps its
    /// data keys).
    pub key_id: Option<String>,
    /// Whether collections remove manifests nothing refers to.
    pub gc_untagged: bool,
    /// When the GC schedule next falls (milliseconds).
    pub gc_next_run: Option<i64>,
    /// Bytes the registry may store; `None`: no quota.
    pub quota_bytes: Option<i64>,
}

/// Usage figures of a registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub repositories: i64,
    pub artifacts: i64,
    /// Bytes of distinct blobs linked by its repositories plus its manifests.
    pub storage_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct NewRegistry<'a> {
    pub name: &'a str,
    pub location: &'a str,
    pub scanning: bool,
    pub gc_schedule: Option<&'a str>,
}

/// Changes to a registry: each field that is `Some` is set (`Some(None)` clears it).
#[derive(Debug, Clone, Default)]
pub struct RegistryChanges<'a> {
    pub scanning: Option<bool>,
    pub read_only: Option<bool>,
    /// The schedule as the API stores it (JSON).
    pub gc_schedule: Option<Option<&'a str>>,
    pub gc_next_run: Option<Option<i64>>,
    pub gc_untagged: Option<bool>,
    pub rate_limit: Option<Option<i64>>,
    pub quota_bytes: Option<Option<i64>>,
}

/// A repository with its usage figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub name: String,
    pub created_at: i64,
    pub artifacts: i64,
    pub tags: i64,
    pub storage_bytes: i64,
    pub public: bool,
}

const REGISTRY_COLUMNS: &str = "id, name, location, scanning, gc_schedule, created_at, \
     rate_limit, read_only, key_id, gc_untagged, gc_next_run, quota_bytes";

fn registry(r: &AnyRow) -> Result<Registry> {
    Ok(Registry {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        location: r.try_get("location")?,
        scanning: r.try_get::<i64, _>("scanning")? != 0,
        gc_schedule: r.try_get("gc_schedule")?,
        created_at: r.try_get("created_at")?,
        rate_limit: r.try_get("rate_limit")?,
        read_only: r.try_get::<i64, _>("read_only")? != 0,
        key_id: r.try_get("key_id")?,
        gc_untagged: r.try_get::<i64, _>("gc_untagged")? != 0,
        gc_next_run: r.try_get("gc_next_run")?,
        quota_bytes: r.try_get("quota_bytes")?,
    })
}

/// The bytes the registry whose id is `registry` (an SQL expression) stores: its distinct
/// linked blobs (one shared by its repositories counts once) plus its manifests.
fn storage_of(registry: &str) -> String {
    format!(
        "CAST((SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN \
           (SELECT rb.digest FROM repository_blobs rb \
            JOIN repositories r ON r.id = rb.repository_id WHERE r.registry_id = {registry})) \
         + (SELECT COALESCE(SUM(m.size), 0) FROM manifests m \
            JOIN repositories r ON r.id = m.repository_id WHERE r.registry_id = {registry}) \
         AS BIGINT)"
    )
}

impl Meta {
    /// Returns the registry named `name`, creating it in `location` (scanning off) if needed.
    pub async fn ensure_registry(&self, name: &str, location: &str) -> Result<Registry> {
        sqlx::query(
            "INSERT INTO registries (name, location, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(location)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registries WHERE name = $1"
        ))
        .bind(name)
        .fetch_one(&self.write)
        .await?;
        registry(&row)
    }

    /// Creates a registry; a taken name is [`MetaError::Conflict`].
    pub async fn create_registry(&self, new: &NewRegistry<'_>) -> Result<Registry> {
        let row = sqlx::query(&format!(
            "INSERT INTO registries (name, location, scanning, gc_schedule, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING {REGISTRY_COLUMNS}"
        ))
        .bind(new.name)
        .bind(new.location)
        .bind(i64::from(new.scanning))
        .bind(new.gc_schedule)
        .bind(now_millis())
        .fetch_optional(&self.write)
        .await?;
        match row {
            Some(r) => registry(&r),
            None => Err(MetaError::Conflict(format!(
                "a registry named {:?} already exists",
                new.name
            ))),
        }
    }

    pub async fn registry(&self, name: &str) -> Result<Option<Registry>> {
        let row = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registries WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(registry).transpose()
    }

    pub async fn registry_by_id(&self, id: i64) -> Result<Option<Registry>> {
        let row = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(registry).transpose()
    }

    /// Registries in name order after `after`, at most `limit`, and whether more follow.
    pub async fn list_registries(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Registry>, bool)> {
        let rows = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registries WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        crate::page(&rows, limit, registry)
    }

    pub async fn registry_stats(&self, registry_id: i64) -> Result<RegistryStats> {
        let row = sqlx::query(&format!(
            "SELECT \
               (SELECT COUNT(*) FROM repositories WHERE registry_id = $1) AS repositories, \
               (SELECT COUNT(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id \
                  WHERE r.registry_id = $1) AS artifacts, \
               {} AS storage",
            storage_of("$1")
        ))
        .bind(registry_id)
        .fetch_one(&self.read)
        .await?;
        Ok(RegistryStats {
            repositories: row.try_get("repositories")?,
            artifacts: row.try_get("artifacts")?,
            storage_bytes: row.try_get("storage")?,
        })
    }

    /// Records every registry's storage (as [`Meta::registry_stats`] counts it) at `at`, the
    /// start of a sampling interval; a registry sampled at `at` already keeps its sample (another
    /// node took it). Returns how many samples were written.
    pub async fn sample_storage(&self, at: i64) -> Result<u64> {
        let taken = sqlx::query("SELECT 1 AS found FROM storage_samples WHERE at = $1 LIMIT 1")
            .bind(at)
            .fetch_optional(&self.read)
            .await?;
        if taken.is_some() {
            return Ok(0);
        }
        let done = sqlx::query(&format!(
            "INSERT INTO storage_samples (registry_id, at, bytes) \
             SELECT g.id, $1, {} FROM registries g WHERE 1 = 1 \
             ON CONFLICT (registry_id, at) DO NOTHING",
            storage_of("g.id")
        ))
        .bind(at)
        .execute(&self.write)
        .await?;
        // (`WHERE 1 = 1`: without it SQLite reads ON CONFLICT as the join's ON.)
        // A year and a month of history is kept.
        sqlx::query("DELETE FROM storage_samples WHERE at < $1")
            .bind(at - 400 * 24 * 3600 * 1000)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    /// A registry's storage samples since `since` (milliseconds), oldest first: (at, bytes).
    pub async fn storage_history(&self, registry_id: i64, since: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT at, bytes FROM storage_samples WHERE registry_id = $1 AND at >= $2 \
             ORDER BY at",
        )
        .bind(registry_id)
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("at")?, r.try_get("bytes")?)))
            .collect()
    }

    /// Applies `changes` (the fields that are `Some`) in one statement.
    pub async fn update_registry(&self, id: i64, changes: &RegistryChanges<'_>) -> Result<()> {
        enum Value<'v> {
            Int(Option<i64>),
            Text(Option<&'v str>),
        }
        let c = changes;
        let fields = [
            (
                "scanning",
                c.scanning.map(|v| Value::Int(Some(i64::from(v)))),
            ),
            (
                "read_only",
                c.read_only.map(|v| Value::Int(Some(i64::from(v)))),
            ),
            ("gc_schedule", c.gc_schedule.map(Value::Text)),
            ("gc_next_run", c.gc_next_run.map(Value::Int)),
            (
                "gc_untagged",
                c.gc_untagged.map(|v| Value::Int(Some(i64::from(v)))),
            ),
            ("rate_limit", c.rate_limit.map(Value::Int)),
            ("quota_bytes", c.quota_bytes.map(Value::Int)),
        ];
        let set: Vec<(&str, Value)> = fields
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name, v)))
            .collect();
        if set.is_empty() {
            return Ok(());
        }
        let assignments: Vec<String> = set
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("{name} = ${}", i + 1))
            .collect();
        let sql = format!(
            "UPDATE registries SET {} WHERE id = ${}",
            assignments.join(", "),
            set.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for (_, value) in set {
            query = match value {
                Value::Int(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
            };
        }
        query.bind(id).execute(&self.write).await?;
        Ok(())
    }

    /// Registries whose GC schedule fell due at or before `now` (milliseconds).
    pub async fn due_gc(&self, now: i64) -> Result<Vec<Registry>> {
        let rows = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registries \
             WHERE gc_next_run IS NOT NULL AND gc_next_run <= $1 ORDER BY id"
        ))
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(registry).collect()
    }

    /// Moves a registry's next scheduled collection from `from` to `to`; false when another
    /// node moved it first (and runs that collection).
    pub async fn advance_gc(&self, id: i64, from: i64, to: Option<i64>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE registries SET gc_next_run = $1 WHERE id = $2 AND gc_next_run = $3",
        )
        .bind(to)
        .bind(id)
        .bind(from)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a registry with everything it holds; false if there was no such registry. Its
    /// content is left to garbage collection, like a deleted repository's: a push elsewhere
    /// may be linking the same blobs at this moment.
    pub async fn delete_registry(&self, name: &str) -> Result<bool> {
        // Its cascade takes rows in another order than a push into the registry: PostgreSQL may
        // make it a deadlock's victim.
        crate::retry(MetaError::is_conflict_retry, || {
            self.delete_registry_once(name)
        })
        .await
    }

    async fn delete_registry_once(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM registries WHERE name = $1 RETURNING id")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = done else {
            return Ok(false);
        };
        // Its collections' history goes with it (runs name registries without a foreign key:
        // the instance's runs are registry 0).
        sqlx::query("DELETE FROM gc_runs WHERE registry_id = $1")
            .bind(row.try_get::<i64, _>("id")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Repository names of a registry in lexical order, after `last`, at most `limit`; only
    /// the public ones when `public_only`.
    pub async fn list_repositories(
        &self,
        registry_id: i64,
        last: Option<&str>,
        limit: i64,
        public_only: bool,
    ) -> Result<ListPage> {
        let sql = if public_only {
            "SELECT name FROM repositories WHERE registry_id = $1 AND name > $2 \
             AND public <> 0 ORDER BY name LIMIT $3"
        } else {
            "SELECT name FROM repositories WHERE registry_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        };
        ListPage::fetch(&self.read, sql, registry_id, last, limit).await
    }

    /// Repositories with their usage figures, in name order after `after`.
    pub async fn list_repository_info(
        &self,
        registry_id: i64,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<RepositoryInfo>, bool)> {
        let rows = sqlx::query(
            "SELECT r.name, r.created_at, r.public, \
               (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id) AS artifacts, \
               (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id) AS tags, \
               CAST((SELECT COALESCE(SUM(b.size), 0) FROM repository_blobs rb \
                  JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = r.id) \
               + (SELECT COALESCE(SUM(m.size), 0) FROM manifests m WHERE m.repository_id = r.id) \
               AS BIGINT) AS storage \
             FROM repositories r WHERE r.registry_id = $1 AND r.name > $2 \
             ORDER BY r.name LIMIT $3",
        )
        .bind(registry_id)
        .bind(after.unwrap_or(""))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        crate::page(&rows, limit, |r| {
            Ok(RepositoryInfo {
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                artifacts: r.try_get("artifacts")?,
                tags: r.try_get("tags")?,
                storage_bytes: r.try_get("storage")?,
                public: r.try_get::<i64, _>("public")? != 0,
            })
        })
    }

    /// Deletes a repository with its manifests and tags; its blobs wait for garbage collection.
    pub async fn delete_repository(&self, registry_id: i64, name: &str) -> Result<bool> {
        crate::retry(MetaError::is_conflict_retry, || async {
            let done = sqlx::query("DELETE FROM repositories WHERE registry_id = $1 AND name = $2")
                .bind(registry_id)
                .bind(name)
                .execute(&self.write)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }
}

/// Finds or creates a repository inside a transaction, returning its id. The upsert holds the
/// row (on PostgreSQL) until the transaction ends, so that a concurrent deletion of the
/// repository waits for it instead of removing the row it is about to reference; one that
/// committed first makes the upsert create the repository anew.
pub(crate) async fn ensure_repository(
    tx: &mut sqlx::AnyConnection,
    registry_id: i64,
    name: &str,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO repositories (registry_id, name, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (registry_id, name) DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind(registry_id)
    .bind(name)
    .bind(now_millis())
    .fetch_one(&mut *tx)
    .await?;
    Ok(row.try_get("id")?)
}

pub(crate) async fn repository_id(
    pool: &sqlx::AnyPool,
    registry_id: i64,
    name: &str,
) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT id FROM repositories WHERE registry_id = $1 AND name = $2")
        .bind(registry_id)
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("id")?),
        None => None,
    })
}
