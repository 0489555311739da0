use sqlx::Row;

use crate::registries::{ensure_repository, repository_id};
use crate::{now_millis, Meta, MetaError, Result};

/// A manifest ready to be stored, with what it references already extracted.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    /// The manifest's annotations as a JSON object, for the referrers API.
    pub annotations: Option<String>,
    /// The manifest's bytes as stored (sealed where encryption is on).
    pub content: Vec<u8>,
    /// Its length as clients see it.
    pub size: i64,
    pub blobs: Vec<String>,
    pub manifests: Vec<String>,
    /// The data keys `content` and `annotations` are sealed under: deleting the manifest
    /// deletes them. A manifest pushed again keeps the copy already stored, so the new copy's
    /// keys are deleted at once (nothing else used them).
    pub content_key: Option<String>,
    pub annotations_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest whose `subject` is the digest asked for.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// One page of a listing, and whether more entries follow it.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<String>,
    pub more: bool,
}

impl ListPage {
    /// One page of names. `select` yields `name` in order for the parameters $1 (the owner's
    /// id), $2 (the name to start after) and $3 (how many). The page comes back as one row,
    /// the names joined by commas (which no repository or tag name may hold): decoding
    /// thousands of rows one by one through sqlx's Any driver took longer than the query.
    /// One name more than `limit` is asked for: its presence tells that another page follows.
    pub(crate) async fn fetch(
        pool: &sqlx::AnyPool,
        select: &str,
        owner: i64,
        last: Option<&str>,
        limit: i64,
    ) -> Result<ListPage> {
        let sql =
            format!("SELECT string_agg(name, ',' ORDER BY name) AS names FROM ({select}) AS page");
        let names: Option<String> = sqlx::query(&sql)
            .bind(owner)
            .bind(last.unwrap_or(""))
            .bind(limit.saturating_add(1))
            .fetch_one(pool)
            .await?
            .try_get("names")?;
        let mut items: Vec<String> = names
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(|n| n.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let more = items.len() as i64 > limit;
        items.truncate(limit.max(0) as usize);
        Ok(ListPage { items, more })
    }
}

impl Meta {
    /// Stores a manifest (and points `tag` at it) once every blob and child manifest it needs is
    /// present in the repository; otherwise nothing changes and the missing digests are returned
    /// as [`MetaError::MissingReferences`].
    pub async fn put_manifest(
        &self,
        registry_id: i64,
        repository: &str,
        manifest: NewManifest,
        tag: Option<&str>,
    ) -> Result<()> {
        self.store_manifest(registry_id, repository, manifest, tag, true)
            .await
    }

    /// Stores a manifest fetched from an upstream (a pull-through cache) and points `tag` at it:
    /// what it references is fetched when first pulled, so it need not be present yet.
    pub async fn put_cached_manifest(
        &self,
        registry_id: i64,
        repository: &str,
        manifest: NewManifest,
        tag: Option<&str>,
    ) -> Result<()> {
        self.store_manifest(registry_id, repository, manifest, tag, false)
            .await
    }

    async fn store_manifest(
        &self,
        registry_id: i64,
        repository: &str,
        manifest: NewManifest,
        tag: Option<&str>,
        complete: bool,
    ) -> Result<()> {
        let repository = repository.to_string();
        let tag = tag.map(str::to_string);
        let share = self.lock("SHARE");
        self.transaction(move |conn| {
            Box::pin(store_manifest(
                conn,
                registry_id,
                repository,
                manifest,
                tag,
                share,
                complete,
            ))
        })
        .await
    }

    pub async fn manifest_by_tag(
        &self,
        registry_id: i64,
        repository: &str,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM tags t \
             JOIN repositories r ON r.id = t.repository_id \
             JOIN manifests m ON m.id = t.manifest_id \
             WHERE r.registry_id = $1 AND r.name = $2 AND t.name = $3",
        )
        .bind(registry_id)
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        row.map(stored_manifest).transpose()
    }

    pub async fn manifest_by_digest(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM manifests m \
             JOIN repositories r ON r.id = m.repository_id \
             WHERE r.registry_id = $1 AND r.name = $2 AND m.digest = $3",
        )
        .bind(registry_id)
        .bind(repository)
        .bind(digest)
        .fetch_optional(&self.read)
        .await?;
        row.map(stored_manifest).transpose()
    }

    /// Deletes a manifest and every tag that points at it.
    pub async fn delete_manifest(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM manifests WHERE digest = $1 AND repository_id = \
             (SELECT id FROM repositories WHERE registry_id = $2 AND name = $3)",
        )
        .bind(digest)
        .bind(registry_id)
        .bind(repository)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a tag; the manifest it pointed at stays.
    pub async fn delete_tag(&self, registry_id: i64, repository: &str, tag: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM tags WHERE name = $1 AND repository_id = \
             (SELECT id FROM repositories WHERE registry_id = $2 AND name = $3)",
        )
        .bind(tag)
        .bind(registry_id)
        .bind(repository)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Tags of a repository in lexical order after `last`, at most `limit`; `None` when the
    /// repository does not exist.
    pub async fn list_tags(
        &self,
        registry_id: i64,
        repository: &str,
        last: Option<&str>,
        limit: i64,
    ) -> Result<Option<ListPage>> {
        let Some(repo_id) = repository_id(&self.read, registry_id, repository).await? else {
            return Ok(None);
        };
        ListPage::fetch(
            &self.read,
            "SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            repo_id,
            last,
            limit,
        )
        .await
        .map(Some)
    }

    /// Manifests in the repository whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        registry_id: i64,
        repository: &str,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let mut sql = String::from(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations \
             FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.registry_id = $1 AND r.name = $2 AND m.subject = $3",
        );
        if artifact_type.is_some() {
            sql.push_str(" AND m.artifact_type = $4");
        }
        sql.push_str(" ORDER BY m.id");
        let mut query = sqlx::query(&sql)
            .bind(registry_id)
            .bind(repository)
            .bind(subject);
        if let Some(t) = artifact_type {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.into_iter()
            .map(|r| {
                Ok(Referrer {
                    digest: r.try_get("digest")?,
                    media_type: r.try_get("media_type")?,
                    size: r.try_get("size")?,
                    artifact_type: r.try_get("artifact_type")?,
                    annotations: r.try_get("annotations")?,
                })
            })
            .collect()
    }
}

fn stored_manifest(r: sqlx::any::AnyRow) -> Result<StoredManifest> {
    Ok(StoredManifest {
        digest: r.try_get("digest")?,
        media_type: r.try_get("media_type")?,
        content: r.try_get("content")?,
    })
}

/// The body of [`Meta::put_manifest`], inside its transaction. `share` locks (on PostgreSQL)
/// what the manifest references until it is committed, so that garbage collection, which
/// locks before it checks again, sees the new references (or this sees the content gone).
/// Without `complete`, references need not be present (a cached manifest's come later).
async fn store_manifest(
    tx: &mut sqlx::AnyConnection,
    registry_id: i64,
    repository: String,
    manifest: NewManifest,
    tag: Option<String>,
    share: String,
    complete: bool,
) -> Result<()> {
    let now = now_millis();
    let repo_id = ensure_repository(tx, registry_id, &repository).await?;

    let mut missing = Vec::new();
    let present = [
        (
            format!(
                "SELECT 1 AS found FROM repository_blobs WHERE repository_id = $1 \
                 AND digest = $2{share}"
            ),
            &manifest.blobs,
        ),
        (
            format!(
                "SELECT 1 AS found FROM manifests WHERE repository_id = $1 AND digest = $2{share}"
            ),
            &manifest.manifests,
        ),
    ];
    for (sql, digests) in present.iter().filter(|_| complete) {
        for digest in *digests {
            let found = sqlx::query(sql)
                .bind(repo_id)
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                missing.push(digest.to_string());
            }
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(MetaError::MissingReferences(missing));
    }

    // A manifest pushed again is young again. A collection may delete it between the insert
    // (which found it) and the update (which then finds nothing): insert it once more.
    let mut found = None;
    for _ in 0..3 {
        let inserted = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, \
             annotations, size, content, created_at, pushed_at, content_key, annotations_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11) \
             ON CONFLICT (repository_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(&manifest.digest)
        .bind(&manifest.media_type)
        .bind(&manifest.artifact_type)
        .bind(&manifest.subject)
        .bind(manifest.annotations.as_deref())
        .bind(manifest.size)
        .bind(&manifest.content)
        .bind(now)
        .bind(&manifest.content_key)
        .bind(&manifest.annotations_key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(
            "UPDATE manifests SET pushed_at = $1 WHERE repository_id = $2 AND digest = $3 \
             RETURNING id",
        )
        .bind(now)
        .bind(repo_id)
        .bind(&manifest.digest)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            found = Some((row.try_get::<i64, _>("id")?, inserted));
            break;
        }
    }
    let Some((manifest_id, inserted)) = found else {
        return Err(MetaError::Conflict(format!(
            "manifest {} was deleted while it was being pushed; push it again",
            manifest.digest
        )));
    };
    if inserted {
        let refs = manifest
            .blobs
            .iter()
            .map(|d| ("blob", d.as_str()))
            .chain(manifest.manifests.iter().map(|d| ("manifest", d.as_str())));
        for (kind, digest) in refs {
            sqlx::query(
                "INSERT INTO manifest_references (manifest_id, digest, kind) VALUES ($1, $2, $3) \
                     ON CONFLICT (manifest_id, kind, digest) DO NOTHING",
            )
            .bind(manifest_id)
            .bind(digest)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        }
    } else {
        for key in [&manifest.content_key, &manifest.annotations_key] {
            crate::uploads::retire_key(&mut *tx, key.clone()).await?;
        }
    }
    if let Some(tag) = tag {
        sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_id, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (repository_id, name) \
                 DO UPDATE SET manifest_id = excluded.manifest_id, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(manifest_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
