use sqlx::Row;

use crate::db::Durability;
use crate::registries::ensure_repository;
use crate::{now_millis, Meta, MetaError, Result};

/// The size of a blob linked into a repository: $1 registry id, $2 repository name, $3 digest.
const REPOSITORY_BLOB_SIZE: &str = "SELECT b.size FROM repository_blobs rb \
     JOIN repositories r ON r.id = rb.repository_id \
     JOIN blobs b ON b.digest = rb.digest \
     WHERE r.registry_id = $1 AND r.name = $2 AND rb.digest = $3";

/// An upload session. Its bytes live in the content store under `id`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub repository: String,
    /// Bytes received and durable so far.
    pub size: i64,
    /// The running hash of those bytes, as the server saved it; `None` for an empty upload.
    pub hash_state: Option<Vec<u8>>,
    /// The content store's parts holding those bytes, in order.
    pub parts: Vec<String>,
}

/// Parts are kept as one text column, one name per line (names hold no newline).
fn parts_of(text: &str) -> Vec<String> {
    text.lines().map(String::from).collect()
}

impl Meta {
    /// Opens an upload session unless the repository already has `max_open` of them; returns
    /// whether it was opened. Concurrent opens on PostgreSQL may pass the cap by a few (each
    /// counts before the others commit): it bounds what a client can hold, not an exact quota.
    pub async fn create_upload(
        &self,
        registry_id: i64,
        repository: &str,
        id: &str,
        max_open: i64,
    ) -> Result<bool> {
        let (repository, id) = (repository.to_string(), id.to_string());
        self.transaction(move |conn| {
            Box::pin(async move {
                let now = now_millis();
                let open: i64 = sqlx::query(
                    "SELECT COUNT(*) AS n FROM uploads WHERE registry_id = $1 AND repository = $2",
                )
                .bind(registry_id)
                .bind(&repository)
                .fetch_one(&mut *conn)
                .await?
                .try_get("n")?;
                if open >= max_open {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO uploads (id, registry_id, repository, size, created_at, updated_at) \
                     VALUES ($1, $2, $3, 0, $4, $4)",
                )
                .bind(id)
                .bind(registry_id)
                .bind(repository)
                .bind(now)
                .execute(conn)
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// Whether an upload session `id` is open (in any registry).
    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 AS one FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .is_some())
    }

    /// Upload sessions open across all nodes.
    pub async fn count_uploads(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM uploads")
            .fetch_one(&self.read)
            .await?
            .try_get("n")?)
    }

    /// Closes every upload session untouched since `before` (milliseconds) and returns their
    /// ids with their saved hash states: the caller removes their bytes and the data keys the
    /// states were sealed under. Each session is returned to exactly one caller, so any number
    /// of nodes may run this at once.
    pub async fn expire_uploads(&self, before: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let rows =
            sqlx::query("DELETE FROM uploads WHERE updated_at < $1 RETURNING id, hash_state")
                .bind(before)
                .fetch_all(&self.write)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("hash_state")?)))
            .collect()
    }

    /// The upload `id` if it belongs to this registry and repository.
    pub async fn get_upload(
        &self,
        registry_id: i64,
        repository: &str,
        id: &str,
    ) -> Result<Option<Upload>> {
        let row = sqlx::query(
            "SELECT id, repository, size, hash_state, parts FROM uploads \
             WHERE id = $1 AND registry_id = $2 AND repository = $3",
        )
        .bind(id)
        .bind(registry_id)
        .bind(repository)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(Upload {
                id: r.try_get("id")?,
                repository: r.try_get("repository")?,
                size: r.try_get("size")?,
                hash_state: r.try_get("hash_state")?,
                parts: parts_of(&r.try_get::<String, _>("parts")?),
            })
        })
        .transpose()
    }

    /// Records that the upload grew from `from` to `to` bytes, with the running hash of all of
    /// them and the part that holds the new ones. Returns false when another request moved it
    /// first (the caller's view was stale): then nothing changes. `retire` names the data key
    /// the replaced hash state was sealed under: each sealed object has a key of its own, so
    /// it goes with that state, in the same transaction (else every chunk left a key behind).
    pub async fn advance_upload(
        &self,
        id: &str,
        from: i64,
        to: i64,
        hash_state: Vec<u8>,
        part: Option<&str>,
        retire: Option<&str>,
    ) -> Result<bool> {
        let id = id.to_string();
        let part = part.map(|p| format!("{p}\n")).unwrap_or_default();
        let retire = retire.map(str::to_string);
        // Recorded durably by the upload's end, not at each chunk: the chunk's bytes are not
        // synced at this point either, and the commit of the blob syncs both. A crash may
        // lose the newest chunks' record; the client then resumes from the recorded size (the
        // upload's status says it), and bytes stored past it are never read.
        self.transaction_as(Durability::Later, move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE uploads SET size = $1, updated_at = $2, hash_state = $3, \
                     parts = parts || $4 WHERE id = $5 AND size = $6",
                )
                .bind(to)
                .bind(now_millis())
                .bind(hash_state)
                .bind(part)
                .bind(id)
                .bind(from)
                .execute(&mut *conn)
                .await?;
                let advanced = done.rows_affected() == 1;
                if advanced {
                    retire_key(conn, retire).await?;
                }
                Ok(advanced)
            })
        })
        .await
    }

    /// Drops the upload `id`; its saved hash state, if it had one (`None`: no such upload).
    pub async fn delete_upload(&self, id: &str) -> Result<Option<Option<Vec<u8>>>> {
        let row = sqlx::query("DELETE FROM uploads WHERE id = $1 RETURNING hash_state")
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.map(|r| r.try_get("hash_state")).transpose()?)
    }

    /// Makes a verified, durable blob visible in a repository, creating the repository on first
    /// push, and closes the upload session it came from, all in one transaction. `scope` names
    /// where its object is stored ('' or the registry's own key id): the object must have been
    /// pinned ([`Meta::pin_object`]) before it was stored, and a collection that claimed it
    /// since (the grace period ran out meanwhile) fails this with [`MetaError::Collected`].
    /// `upload` is the session's id and the size recorded for it when the request began: the
    /// final request's bytes are not recorded separately (one durable write fewer per blob). If
    /// the session has moved on or is gone, nothing changes and `false` comes back. The
    /// session's third item names the data key of its saved hash state, retired with it (see
    /// [`Meta::advance_upload`]).
    pub async fn commit_blob(
        &self,
        registry_id: i64,
        scope: &str,
        repository: &str,
        digest: &str,
        size: i64,
        upload: Option<(&str, i64, Option<&str>)>,
    ) -> Result<bool> {
        let (scope, repository, digest) = (
            scope.to_string(),
            repository.to_string(),
            digest.to_string(),
        );
        let upload = upload
            .map(|(id, recorded, retire)| (id.to_string(), recorded, retire.map(str::to_string)));
        self.transaction(move |conn| {
            Box::pin(async move {
                let now = now_millis();
                if let Some((id, recorded, retire)) = upload {
                    let closed = sqlx::query("DELETE FROM uploads WHERE id = $1 AND size = $2")
                        .bind(id)
                        .bind(recorded)
                        .execute(&mut *conn)
                        .await?;
                    if closed.rows_affected() != 1 {
                        return Ok(false);
                    }
                    retire_key(conn, retire).await?;
                }
                if !repin(conn, &scope, &digest, now).await? {
                    return Err(MetaError::Collected(digest));
                }
                sqlx::query(
                    "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (digest) DO NOTHING",
                )
                .bind(&digest)
                .bind(size)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                let repo_id = ensure_repository(conn, registry_id, &repository).await?;
                link_blob(conn, repo_id, &digest, now).await?;
                Ok(true)
            })
        })
        .await
    }

    /// The size of `digest` if the repository links it.
    pub async fn repository_blob(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
    ) -> Result<Option<i64>> {
        let row = sqlx::query(REPOSITORY_BLOB_SIZE)
            .bind(registry_id)
            .bind(repository)
            .bind(digest)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("size")?),
            None => None,
        })
    }

    /// Links `digest` into `repository` if `from` (same registry, objects stored in `scope`)
    /// links it and a collection has not claimed its object; returns its size.
    pub async fn mount_blob(
        &self,
        registry_id: i64,
        scope: &str,
        from: &str,
        repository: &str,
        digest: &str,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(REPOSITORY_BLOB_SIZE)
            .bind(registry_id)
            .bind(from)
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let size: i64 = row.try_get("size")?;
        let now = now_millis();
        if !repin(&mut tx, scope, digest, now).await? {
            return Ok(None);
        }
        let repo_id = ensure_repository(&mut tx, registry_id, repository).await?;
        link_blob(&mut tx, repo_id, digest, now).await?;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Removes a blob from a repository. The content stays until garbage collection.
    pub async fn unlink_blob(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $1 AND repository_id = \
             (SELECT id FROM repositories WHERE registry_id = $2 AND name = $3)",
        )
        .bind(digest)
        .bind(registry_id)
        .bind(repository)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// Deletes a data key whose only object is gone or was never kept (a closed or replaced hash
/// state, a manifest pushed again), if there is one.
pub(crate) async fn retire_key(conn: &mut sqlx::AnyConnection, key: Option<String>) -> Result<()> {
    if let Some(key) = key {
        sqlx::query("DELETE FROM data_keys WHERE id = $1")
            .bind(key)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Pins a blob's object again inside a transaction that links it: the update holds its row
/// (on PostgreSQL) until the link is committed, so a collection waiting to claim it sees the
/// link. False when a collection has claimed it (or it was never stored in this scope).
async fn repin(
    conn: &mut sqlx::AnyConnection,
    scope: &str,
    digest: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE blob_objects SET pinned_at = $1 WHERE scope = $2 AND digest = $3 \
         AND deleting_since IS NULL",
    )
    .bind(now)
    .bind(scope)
    .bind(digest)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Links a blob into a repository; a link made again is young again (the grace period
/// protects it from its last upload or mount).
async fn link_blob(
    tx: &mut sqlx::AnyConnection,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repo_id)
    .bind(digest)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
