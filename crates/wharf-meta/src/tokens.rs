use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_millis, Meta, MetaError, Result};

/// A robot token as stored, with its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub registry_id: i64,
    pub name: String,
    pub secret_hash: String,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub scopes: Vec<ScopeRecord>,
}

impl TokenRecord {
    /// Enabled and not past its expiry.
    pub fn usable(&self, now: i64) -> bool {
        self.enabled && self.expires_at.is_none_or(|e| e > now)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRecord {
    pub id: i64,
    pub kind: String,
    pub path: String,
    /// Space-separated actions.
    pub actions: String,
}

/// A scope to store: kind, path, space-separated actions.
pub type NewScope<'a> = (&'a str, &'a str, String);

/// How long an expired token's name is remembered.
const EXPIRED_KEPT_MS: i64 = 30 * 24 * 3600 * 1000;

const TOKEN_COLUMNS: &str = "id, registry_id, name, secret_hash, enabled, expires_at, created_at";

fn token(r: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        registry_id: r.try_get("registry_id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        scopes: Vec::new(),
    })
}

impl Meta {
    async fn with_scopes(&self, mut t: TokenRecord) -> Result<TokenRecord> {
        let rows = sqlx::query(
            "SELECT id, kind, path, actions FROM token_scopes WHERE token_id = $1 ORDER BY id",
        )
        .bind(t.id)
        .fetch_all(&self.read)
        .await?;
        t.scopes = rows
            .iter()
            .map(|r| {
                Ok(ScopeRecord {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    path: r.try_get("path")?,
                    actions: r.try_get("actions")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(t)
    }

    /// Creates a token with its scopes; a taken name is [`MetaError::Conflict`].
    pub async fn create_token(
        &self,
        registry_id: i64,
        name: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
        scopes: &[NewScope<'_>],
    ) -> Result<TokenRecord> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO tokens (registry_id, name, secret_hash, enabled, expires_at, created_at) \
             VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (registry_id, name) DO NOTHING \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(registry_id)
        .bind(name)
        .bind(secret_hash)
        .bind(expires_at)
        .bind(now_millis())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            MetaError::Conflict(format!("the registry already has a token named {name:?}"))
        })?;
        let t = token(&row)?;
        sqlx::query("DELETE FROM expired_tokens WHERE registry_id = $1 AND name = $2")
            .bind(registry_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for (kind, path, actions) in scopes {
            insert_scope(&mut tx, t.id, kind, path, actions).await?;
        }
        tx.commit().await?;
        self.token_by_id(t.id)
            .await?
            .ok_or_else(|| MetaError::Conflict("token vanished while being created".into()))
    }

    pub async fn token(&self, registry_id: i64, name: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE registry_id = $1 AND name = $2"
        ))
        .bind(registry_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        match row {
            Some(r) => Ok(Some(self.with_scopes(token(&r)?).await?)),
            None => Ok(None),
        }
    }

    pub async fn token_by_id(&self, id: i64) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) => Ok(Some(self.with_scopes(token(&r)?).await?)),
            None => Ok(None),
        }
    }

    /// Tokens of a registry in name order after `after`, at most `limit`, and whether more follow.
    pub async fn list_tokens(
        &self,
        registry_id: i64,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<TokenRecord>, bool)> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE registry_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(registry_id)
        .bind(after.unwrap_or(""))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        let (records, more) = crate::page(&rows, limit, token)?;
        let mut list = Vec::with_capacity(records.len());
        for t in records {
            list.push(self.with_scopes(t).await?);
        }
        Ok((list, more))
    }

    pub async fn set_token_enabled(&self, id: i64, enabled: bool) -> Result<()> {
        sqlx::query("UPDATE tokens SET enabled = $1 WHERE id = $2")
            .bind(i64::from(enabled))
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn delete_token(&self, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn add_token_scope(&self, token_id: i64, scope: &NewScope<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert_scope(&mut tx, token_id, scope.0, scope.1, &scope.2).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_token_scope(&self, token_id: i64, scope_id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM token_scopes WHERE id = $1 AND token_id = $2")
            .bind(scope_id)
            .bind(token_id)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes tokens whose expiry has passed; returns (registry name, token name) of each.
    pub async fn delete_expired_tokens(&self, now: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= $1 \
             RETURNING registry_id, name",
        )
        .bind(now)
        .fetch_all(&self.write)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let registry_id: i64 = r.try_get("registry_id")?;
            let name: String = r.try_get("name")?;
            sqlx::query(
                "INSERT INTO expired_tokens (registry_id, name, expired_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (registry_id, name) DO UPDATE SET expired_at = excluded.expired_at",
            )
            .bind(registry_id)
            .bind(&name)
            .bind(now)
            .execute(&self.write)
            .await?;
            let registry = sqlx::query("SELECT name FROM registries WHERE id = $1")
                .bind(registry_id)
                .fetch_optional(&self.read)
                .await?
                .map(|row| row.try_get::<String, _>("name"))
                .transpose()?
                .unwrap_or_default();
            out.push((registry, name));
        }
        // Remembered for 30 days.
        sqlx::query("DELETE FROM expired_tokens WHERE expired_at < $1")
            .bind(now - EXPIRED_KEPT_MS)
            .execute(&self.write)
            .await?;
        Ok(out)
    }

    /// When a token of this name expired (and was deleted), if it did within the last 30 days
    /// and no token has taken the name since.
    pub async fn token_expired_at(&self, registry_id: i64, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT expired_at FROM expired_tokens WHERE registry_id = $1 AND name = $2",
        )
        .bind(registry_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The newest key that signs registry JWTs (its id and stored secret), the first one
    /// created on first use; shared by every node.
    pub async fn signing_key(&self, generate: impl FnOnce() -> Vec<u8>) -> Result<(i64, Vec<u8>)> {
        sqlx::query(
            "INSERT INTO signing_keys (id, secret, created_at) \
             SELECT 1, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM signing_keys) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(generate())
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        self.signing_keys()
            .await?
            .pop()
            .ok_or_else(|| MetaError::Conflict("the signing key vanished".into()))
    }

    /// Every JWT signing key, oldest first: ids and stored secrets (sealed or, from before
    /// encryption, in the clear).
    pub async fn signing_keys(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT id, secret FROM signing_keys ORDER BY id")
            .fetch_all(&self.write)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("secret")?)))
            .collect()
    }

    /// The newest signing key as stored, if any.
    pub async fn stored_signing_key(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.signing_keys().await?.pop().map(|(_, secret)| secret))
    }

    /// Adds signing key `id` (the newest id plus one, which its sealing is bound to); false
    /// when another node added that id first.
    pub async fn add_signing_key(&self, id: i64, secret: Vec<u8>) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO signing_keys (id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(secret)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes the signing keys a newer key replaced at or before `cutoff` (milliseconds):
    /// once no JWT they signed can still be valid.
    pub async fn delete_superseded_signing_keys(&self, cutoff: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM signing_keys WHERE id < \
             (SELECT MAX(id) FROM signing_keys WHERE created_at <= $1)",
        )
        .bind(cutoff)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Replaces signing key `id` as stored (`from`) with `to` (the same key, sealed anew);
    /// false when another node changed it first.
    pub async fn reseal_signing_key(&self, id: i64, from: &[u8], to: Vec<u8>) -> Result<bool> {
        let done = sqlx::query("UPDATE signing_keys SET secret = $1 WHERE id = $2 AND secret = $3")
            .bind(to)
            .bind(id)
            .bind(from.to_vec())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a repository public (anonymous pull) or private; false if it does not exist.
    pub async fn set_repository_public(
        &self,
        registry_id: i64,
        name: &str,
        public: bool,
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE repositories SET public = $1 WHERE registry_id = $2 AND name = $3")
                .bind(i64::from(public))
                .bind(registry_id)
                .bind(name)
                .execute(&self.write)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn repository_is_public(&self, registry_id: i64, name: &str) -> Result<bool> {
        let row =
            sqlx::query("SELECT public FROM repositories WHERE registry_id = $1 AND name = $2")
                .bind(registry_id)
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("public")? != 0,
            None => false,
        })
    }
}

async fn insert_scope(
    tx: &mut sqlx::AnyConnection,
    token_id: i64,
    kind: &str,
    path: &str,
    actions: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO token_scopes (token_id, kind, path, actions) VALUES ($1, $2, $3, $4)")
        .bind(token_id)
        .bind(kind)
        .bind(path)
        .bind(actions)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
