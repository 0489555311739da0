//! Credentials for external registries ("upstreams"), per registry, one entry per host. The
//! secret arrives here sealed by the server (where encryption is on) and is handed back only to
//! the server, never to API callers.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, Meta, MetaError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRecord {
    pub id: i64,
    pub registry_id: i64,
    /// `host[:port]`, lower case: the entry's key within its registry.
    pub host: String,
    /// `scheme://host[:port]`.
    pub url: String,
    pub username: String,
    /// As stored: sealed where encryption is on.
    pub secret: String,
    pub description: String,
    /// PEM certificates trusted for this upstream besides the system's.
    pub ca_certificate: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub secret_updated_at: i64,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpstreamChanges {
    pub username: Option<String>,
    pub secret: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` removes the custom CA.
    pub ca_certificate: Option<Option<String>>,
}

const COLUMNS: &str = "id, registry_id, host, url, username, secret, description, \
                       ca_certificate, created_at, updated_at, secret_updated_at";

fn record(r: &AnyRow) -> Result<UpstreamRecord> {
    Ok(UpstreamRecord {
        id: r.try_get("id")?,
        registry_id: r.try_get("registry_id")?,
        host: r.try_get("host")?,
        url: r.try_get("url")?,
        username: r.try_get("username")?,
        secret: r.try_get("secret")?,
        description: r.try_get("description")?,
        ca_certificate: r.try_get("ca_certificate")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        secret_updated_at: r.try_get("secret_updated_at")?,
    })
}

impl Meta {
    /// Stores a new upstream; a host the registry has already is [`MetaError::Conflict`].
    pub async fn create_upstream(&self, u: &UpstreamRecord) -> Result<UpstreamRecord> {
        let now = now_millis();
        let row = sqlx::query(&format!(
            "INSERT INTO upstreams (registry_id, host, url, username, secret, description, \
             ca_certificate, created_at, updated_at, secret_updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8) \
             ON CONFLICT (registry_id, host) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(u.registry_id)
        .bind(&u.host)
        .bind(&u.url)
        .bind(&u.username)
        .bind(&u.secret)
        .bind(&u.description)
        .bind(&u.ca_certificate)
        .bind(now)
        // All rows, not the first: on SQLite a statement left unfinished keeps its implicit
        // transaction open, and the insert would not be committed.
        .fetch_all(&self.write)
        .await?
        .pop()
        .ok_or_else(|| {
            MetaError::Conflict(format!(
                "the registry has credentials for {} already; update them instead",
                u.host
            ))
        })?;
        record(&row)
    }

    pub async fn upstreams(&self, registry_id: i64) -> Result<Vec<UpstreamRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM upstreams WHERE registry_id = $1 ORDER BY host"
        ))
        .bind(registry_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(record)
        .collect()
    }

    pub async fn upstream(&self, registry_id: i64, host: &str) -> Result<Option<UpstreamRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM upstreams WHERE registry_id = $1 AND host = $2"
        ))
        .bind(registry_id)
        .bind(host)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(record)
        .transpose()
    }

    /// Applies `changes`; `None` when there is no such upstream.
    pub async fn update_upstream(
        &self,
        registry_id: i64,
        host: &str,
        changes: &UpstreamChanges,
    ) -> Result<Option<UpstreamRecord>> {
        let now = now_millis();
        let (set_ca, ca) = match &changes.ca_certificate {
            Some(ca) => (1i64, ca.clone()),
            None => (0, None),
        };
        let row = sqlx::query(&format!(
            "UPDATE upstreams SET username = COALESCE($3, username), \
             secret = COALESCE($4, secret), description = COALESCE($5, description), \
             ca_certificate = CASE WHEN $6 = 1 THEN $7 ELSE ca_certificate END, \
             updated_at = $8, \
             secret_updated_at = CASE WHEN $4 IS NULL THEN secret_updated_at ELSE $8 END \
             WHERE registry_id = $1 AND host = $2 RETURNING {COLUMNS}"
        ))
        .bind(registry_id)
        .bind(host)
        .bind(&changes.username)
        .bind(&changes.secret)
        .bind(&changes.description)
        .bind(set_ca)
        .bind(ca)
        .bind(now)
        .fetch_all(&self.write)
        .await?
        .pop();
        row.as_ref().map(record).transpose()
    }

    /// Removes an upstream; false when there was none.
    pub async fn delete_upstream(&self, registry_id: i64, host: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM upstreams WHERE registry_id = $1 AND host = $2")
            .bind(registry_id)
            .bind(host)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
