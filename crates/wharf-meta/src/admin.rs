use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, Meta, Result};

/// An administrator's API key as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub id: i64,
    pub name: String,
    /// The first characters of the key, so that people can tell their keys apart.
    pub prefix: String,
    /// Space-separated permission names.
    pub permissions: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub registry: Option<&'a str>,
    pub repository: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// Extra facts as a JSON object.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub registry: Option<String>,
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub detail: Option<String>,
}

const KEY_COLUMNS: &str = "id, name, prefix, permissions, created_at, created_by, revoked_at";

fn admin_key(r: &AnyRow) -> Result<AdminKey> {
    Ok(AdminKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        permissions: r.try_get("permissions")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Meta {
    pub async fn create_admin_key(
        &self,
        name: &str,
        key_hash: &str,
        prefix: &str,
        permissions: &str,
        created_by: Option<&str>,
    ) -> Result<AdminKey> {
        let row = sqlx::query(&format!(
            "INSERT INTO admin_keys (name, key_hash, prefix, permissions, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
        ))
        .bind(name)
        .bind(key_hash)
        .bind(prefix)
        .bind(permissions)
        .bind(now_millis())
        .bind(created_by)
        .fetch_one(&self.write)
        .await?;
        admin_key(&row)
    }

    /// The live (not revoked) key with this hash.
    pub async fn admin_key_by_hash(&self, key_hash: &str) -> Result<Option<AdminKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM admin_keys WHERE key_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(admin_key).transpose()
    }

    /// Keys in id order after `after`, at most `limit`, and whether more follow.
    pub async fn list_admin_keys(
        &self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<AdminKey>, bool)> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM admin_keys WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(0))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        crate::page(&rows, limit, admin_key)
    }

    pub async fn count_admin_keys(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM admin_keys")
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Revokes a live key; returns it, or `None` if there is no such live key.
    pub async fn revoke_admin_key(&self, id: i64) -> Result<Option<AdminKey>> {
        let row = sqlx::query(&format!(
            "UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
             RETURNING {KEY_COLUMNS}"
        ))
        .bind(now_millis())
        .bind(id)
        .fetch_optional(&self.write)
        .await?;
        row.as_ref().map(admin_key).transpose()
    }

    pub async fn audit(&self, entry: &AuditEntry<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, registry, repository, digest, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_millis())
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.registry)
        .bind(entry.repository)
        .bind(entry.digest)
        .bind(entry.detail.as_deref())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Audit records, newest first, older than `before` (an id), optionally of one registry.
    pub async fn list_audit(
        &self,
        registry: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<AuditRecord>, bool)> {
        let mut sql = String::from(
            "SELECT id, at, actor, action, registry, repository, digest, detail FROM audit_log \
             WHERE id < $1",
        );
        if registry.is_some() {
            sql.push_str(" AND registry = $3");
        }
        sql.push_str(" ORDER BY id DESC LIMIT $2");
        let mut q = sqlx::query(&sql)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit.saturating_add(1));
        if let Some(r) = registry {
            q = q.bind(r);
        }
        let rows = q.fetch_all(&self.read).await?;
        crate::page(&rows, limit, |r| {
            Ok(AuditRecord {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                registry: r.try_get("registry")?,
                repository: r.try_get("repository")?,
                digest: r.try_get("digest")?,
                detail: r.try_get("detail")?,
            })
        })
    }
}

/// An audit entry that owns its fields, for entries queued before they are written.
#[derive(Debug, Clone, Default)]
pub struct OwnedAuditEntry {
    pub actor: String,
    pub action: String,
    pub registry_id: i64,
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub detail: Option<String>,
}

impl Meta {
    /// Writes queued entries in one transaction (one commit, one fsync), naming each entry's
    /// registry as it stands; entries of registries deleted meanwhile are dropped.
    pub async fn audit_batch(&self, entries: Vec<OwnedAuditEntry>) -> Result<()> {
        self.transaction(move |tx| Box::pin(insert_audit(tx, entries)))
            .await
    }
}

/// The body of [`Meta::audit_batch`], inside its transaction.
async fn insert_audit(tx: &mut sqlx::AnyConnection, entries: Vec<OwnedAuditEntry>) -> Result<()> {
    /// Rows per statement: one multi-row INSERT costs about what one single-row INSERT does
    /// through sqlx, and a pull-heavy load queues thousands of entries a second.
    const ROWS: usize = 100;
    let now = now_millis();
    for chunk in entries.chunks(ROWS) {
        // VALUES columns are named column1.. on both SQLite and PostgreSQL. The eighth is
        // the entry's place in the batch: SQLite otherwise inserted a chunk in reverse.
        let mut sql = String::from(
            "INSERT INTO audit_log (at, actor, action, registry, repository, digest, detail) \
                 SELECT v.column1, v.column2, v.column3, \
                 (SELECT name FROM registries WHERE id = v.column4), v.column5, v.column6, \
                 v.column7 FROM (VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let params: Vec<String> = (1..=8).map(|k| format!("${}", i * 8 + k)).collect();
            sql.push_str(&format!("({})", params.join(", ")));
        }
        sql.push_str(
            ") AS v WHERE EXISTS (SELECT 1 FROM registries WHERE id = v.column4) \
                 ORDER BY v.column8",
        );
        let mut q = sqlx::query(&sql);
        for (i, e) in chunk.iter().enumerate() {
            q = q
                .bind(now)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(e.registry_id)
                .bind(e.repository.as_deref())
                .bind(e.digest.as_deref())
                .bind(e.detail.as_deref())
                .bind(i as i64);
        }
        q.execute(&mut *tx).await?;
    }
    stamp_pulls(tx, &entries, now).await
}

/// Stamps `pulled_at` on the manifests the batch's pull entries name, at most once a minute
/// each (a busy image is pulled thousands of times a minute): scans match images pulled lately
/// again when the vulnerability database changes, and the views show the last pull.
async fn stamp_pulls(
    tx: &mut sqlx::AnyConnection,
    entries: &[OwnedAuditEntry],
    now: i64,
) -> Result<()> {
    let pulls: std::collections::BTreeSet<(i64, &str, &str)> = entries
        .iter()
        .filter(|e| e.action == "manifest.pull")
        .filter_map(|e| {
            Some((
                e.registry_id,
                e.repository.as_deref()?,
                e.digest.as_deref()?,
            ))
        })
        .collect();
    for (registry, repository, digest) in pulls {
        sqlx::query(
            "UPDATE manifests SET pulled_at = $1 WHERE digest = $4 AND repository_id = \
             (SELECT id FROM repositories WHERE registry_id = $2 AND name = $3) \
             AND (pulled_at IS NULL OR pulled_at < $5)",
        )
        .bind(now)
        .bind(registry)
        .bind(repository)
        .bind(digest)
        .bind(now - 60_000)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
