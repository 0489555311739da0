//! Data keys of encryption at rest, each wrapped by a master key (see `wharf_store::seal`).

use sqlx::Row;

use crate::{now_millis, Meta, Result};

impl Meta {
    /// Records new data keys wrapped by `master_key` (ids and wrapped keys), in one
    /// transaction: one durable write for many keys, before any of them seals anything.
    pub async fn insert_data_keys(
        &self,
        keys: &[(String, Vec<u8>)],
        master_key: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = now_millis();
        for (id, wrapped) in keys {
            sqlx::query(
                "INSERT INTO data_keys (id, wrapped, master_key, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(wrapped.clone())
            .bind(master_key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a data key whose object is gone (none by that id is fine).
    pub async fn delete_data_key(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM data_keys WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A data key as stored (wrapped), if there is one by that id.
    pub async fn data_key(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT wrapped FROM data_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.try_get("wrapped")).transpose()?)
    }

    /// Up to `limit` data keys after id `after`, in id order, wrapped by another master key
    /// than `current` (what a rotation still has to rewrap): their ids and wrapped keys.
    pub async fn data_keys_to_rewrap(
        &self,
        current: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT id, wrapped FROM data_keys WHERE master_key <> $1 AND id > $2 \
             AND master_key NOT LIKE 'r-%' ORDER BY id LIMIT $3",
        )
        .bind(current)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("wrapped")?)))
            .collect()
    }

    /// Replaces data key `id`, as wrapped by `from`, with the same key wrapped by `to`; false
    /// when another node rewrapped it first.
    pub async fn rewrap_data_key(
        &self,
        id: &str,
        from: &str,
        wrapped: Vec<u8>,
        to: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE data_keys SET wrapped = $1, master_key = $2 WHERE id = $3 AND master_key = $4",
        )
        .bind(wrapped)
        .bind(to)
        .bind(id)
        .bind(from)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many data keys each master key wraps.
    pub async fn data_key_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT master_key, COUNT(*) AS n FROM data_keys GROUP BY master_key ORDER BY master_key",
        )
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("master_key")?, r.try_get("n")?)))
            .collect()
    }

    /// Up to `limit` blobs after digest `after`, in digest order: digests and sizes.
    pub async fn blobs_after(&self, after: &str, limit: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT digest, size FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("digest")?, r.try_get("size")?)))
            .collect()
    }

    /// Up to `limit` manifests after row `after`, in row order: ids, digests, stored content
    /// and annotations.
    pub async fn manifests_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, Vec<u8>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT id, digest, content, annotations FROM manifests WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("digest")?,
                    r.try_get("content")?,
                    r.try_get("annotations")?,
                ))
            })
            .collect()
    }

    /// Up to `limit` manifests after row `after`, in row order, whose annotations are sealed
    /// (`sealed:` and base64) while the data key they name is not recorded with them: sealed
    /// before the manifests' keys were recorded, on SQLite, whose migration could not read
    /// base64. Ids and the annotations.
    pub async fn sealed_annotations_without_key(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT id, annotations FROM manifests WHERE id > $1 AND annotations_key IS NULL \
             AND annotations LIKE 'sealed:%' ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("annotations")?)))
            .collect()
    }

    /// Records `key` as the data key of manifest row `id`'s `annotations`, so that it goes with
    /// the manifest; false when the row changed or went meanwhile.
    pub async fn record_annotations_key(
        &self,
        id: i64,
        annotations: &str,
        key: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE manifests SET annotations_key = $1 \
             WHERE id = $2 AND annotations = $3 AND annotations_key IS NULL",
        )
        .bind(key)
        .bind(id)
        .bind(annotations)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces manifest row `id`'s stored content (as it was: `from`) and annotations with
    /// sealed ones, and records the data keys they are sealed under (`[content, annotations]`);
    /// false when it changed meanwhile.
    pub async fn reseal_manifest(
        &self,
        id: i64,
        from: &[u8],
        content: Vec<u8>,
        annotations: Option<String>,
        [content_key, annotations_key]: [Option<String>; 2],
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE manifests SET content = $1, annotations = $2, content_key = $3, \
             annotations_key = $4 WHERE id = $5 AND content = $6",
        )
        .bind(content)
        .bind(annotations)
        .bind(content_key)
        .bind(annotations_key)
        .bind(id)
        .bind(from.to_vec())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Rewrites the database so that rows replaced by sealed ones leave no copy in the clear
    /// behind (SQLite keeps old pages in its file and write-ahead log; PostgreSQL keeps dead
    /// row versions until a vacuum).
    pub async fn compact(&self) -> Result<()> {
        match self.backend() {
            crate::Backend::Sqlite => {
                sqlx::query("VACUUM").execute(&self.write).await?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&self.write)
                    .await?;
            }
            crate::Backend::Postgres => {
                sqlx::query("VACUUM manifests").execute(&self.write).await?;
            }
        }
        Ok(())
    }

    /// Gives registry `id` a master key of its own (`wrapped` by the instance's); only while it
    /// holds no content, since what it stored before stays under the instance's key.
    pub async fn set_registry_key(&self, id: i64, key_id: &str, wrapped: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE registries SET key_id = $1, wrapped_key = $2 WHERE id = $3 AND key_id IS NULL \
             AND NOT EXISTS (SELECT 1 FROM repositories WHERE registry_id = $3)",
        )
        .bind(key_id)
        .bind(wrapped.to_vec())
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A registry's own master key as stored (wrapped), by its id.
    pub async fn registry_key(&self, key_id: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT wrapped_key FROM registries WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<Vec<u8>>, _>("wrapped_key"))
            .transpose()?
            .flatten())
    }

    /// Every registry's own master key: ids and wrapped keys.
    pub async fn registry_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT key_id, wrapped_key FROM registries WHERE key_id IS NOT NULL ORDER BY key_id",
        )
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_id")?, r.try_get("wrapped_key")?)))
            .collect()
    }

    /// Replaces registry key `key_id` as stored (`from`) with `to` (the same key, wrapped by
    /// the new instance master key); false when it changed meanwhile.
    pub async fn rewrap_registry_key(
        &self,
        key_id: &str,
        from: &[u8],
        to: Vec<u8>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE registries SET wrapped_key = $1 WHERE key_id = $2 AND wrapped_key = $3",
        )
        .bind(to)
        .bind(key_id)
        .bind(from.to_vec())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes the data keys a master key wraps (a deleted registry's): what they sealed can
    /// no longer be opened.
    pub async fn delete_data_keys_of(&self, master_key: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM data_keys WHERE master_key = $1")
            .bind(master_key)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }
}
