//! Data keys of encryption at rest, each wrapped by a master key (see `wharf_store::seal`).

use sqlx::Row;

use crate::{now_millis, Meta, Result};

impl Meta {
    /// Records a new data key (before it seals anything).
    pub async fn insert_data_key(&self, id: &str, wrapped: &[u8], master_key: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO data_keys (id, wrapped, master_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(wrapped.to_vec())
        .bind(master_key)
        .bind(now_millis())
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
}
