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

const REGISTRY_COLUMNS: &str =
    "id, name, location, scanning, gc_schedule, created_at, rate_limit, read_only, key_id";

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
    })
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
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM repositories WHERE registry_id = $1) AS repositories, \
               (SELECT COUNT(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id \
                  WHERE r.registry_id = $1) AS artifacts, \
               CAST((SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN \
                  (SELECT rb.digest FROM repository_blobs rb \
                   JOIN repositories r ON r.id = rb.repository_id WHERE r.registry_id = $1)) \
               + (SELECT COALESCE(SUM(m.size), 0) FROM manifests m \
                  JOIN repositories r ON r.id = m.repository_id WHERE r.registry_id = $1) \
               AS BIGINT) AS storage",
        )
        .bind(registry_id)
        .fetch_one(&self.read)
        .await?;
        Ok(RegistryStats {
            repositories: row.try_get("repositories")?,
            artifacts: row.try_get("artifacts")?,
            storage_bytes: row.try_get("storage")?,
        })
    }

    /// Switches scanning on, sets the GC schedule and/or the rate limit (`Some(None)` clears
    /// either), and switches maintenance mode (read-only) on or off.
    pub async fn update_registry(
        &self,
        id: i64,
        scanning: Option<bool>,
        gc_schedule: Option<Option<&str>>,
        rate_limit: Option<Option<i64>>,
        read_only: Option<bool>,
    ) -> Result<()> {
        if let Some(read_only) = read_only {
            sqlx::query("UPDATE registries SET read_only = $1 WHERE id = $2")
                .bind(i64::from(read_only))
                .bind(id)
                .execute(&self.write)
                .await?;
        }
        if let Some(scanning) = scanning {
            sqlx::query("UPDATE registries SET scanning = $1 WHERE id = $2")
                .bind(i64::from(scanning))
                .bind(id)
                .execute(&self.write)
                .await?;
        }
        if let Some(schedule) = gc_schedule {
            sqlx::query("UPDATE registries SET gc_schedule = $1 WHERE id = $2")
                .bind(schedule)
                .bind(id)
                .execute(&self.write)
                .await?;
        }
        if let Some(limit) = rate_limit {
            sqlx::query("UPDATE registries SET rate_limit = $1 WHERE id = $2")
                .bind(limit)
                .bind(id)
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    /// Deletes a registry with everything it holds. Returns the digests of blobs no other
    /// registry links, whose content the caller then removes; `None` if there was no such
    /// registry.
    pub async fn delete_registry(&self, name: &str) -> Result<Option<Vec<String>>> {
        let mut tx = self.write.begin().await?;
        let Some(row) = sqlx::query("SELECT id FROM registries WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let rows = sqlx::query(
            "SELECT DISTINCT rb.digest FROM repository_blobs rb \
             JOIN repositories r ON r.id = rb.repository_id \
             WHERE r.registry_id = $1 AND NOT EXISTS ( \
               SELECT 1 FROM repository_blobs o JOIN repositories orr ON orr.id = o.repository_id \
               WHERE o.digest = rb.digest AND orr.registry_id <> $1)",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let freed = rows
            .iter()
            .map(|r| r.try_get::<String, _>("digest"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM registries WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for digest in &freed {
            sqlx::query("DELETE FROM blobs WHERE digest = $1")
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(freed))
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
        let done = sqlx::query("DELETE FROM repositories WHERE registry_id = $1 AND name = $2")
            .bind(registry_id)
            .bind(name)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// Finds or creates a repository inside a transaction, returning its id.
pub(crate) async fn ensure_repository(
    tx: &mut sqlx::AnyConnection,
    registry_id: i64,
    name: &str,
) -> Result<i64> {
    sqlx::query(
        "INSERT INTO repositories (registry_id, name, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (registry_id, name) DO NOTHING",
    )
    .bind(registry_id)
    .bind(name)
    .bind(now_millis())
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query("SELECT id FROM repositories WHERE registry_id = $1 AND name = $2")
        .bind(registry_id)
        .bind(name)
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
