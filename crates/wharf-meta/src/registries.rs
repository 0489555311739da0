use sqlx::Row;

use crate::{now_millis, ListPage, Meta, Result};

#[derive(Debug, Clone)]
pub struct Registry {
    pub id: i64,
    pub name: String,
}

impl Meta {
    /// Returns the registry named `name`, creating it if needed.
    pub async fn ensure_registry(&self, name: &str) -> Result<Registry> {
        sqlx::query(
            "INSERT INTO registries (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        let row = sqlx::query("SELECT id, name FROM registries WHERE name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await?;
        Ok(Registry {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
        })
    }

    /// Repository names of a registry in lexical order after `last`, at most `limit`.
    pub async fn list_repositories(
        &self,
        registry_id: i64,
        last: Option<&str>,
        limit: i64,
    ) -> Result<ListPage> {
        let rows = sqlx::query(
            "SELECT name FROM repositories WHERE registry_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3",
        )
        .bind(registry_id)
        .bind(last.unwrap_or(""))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        ListPage::from_rows(rows, limit)
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
