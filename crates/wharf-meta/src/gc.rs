//! Garbage collection's bookkeeping: what is garbage, taken away in batches that re-check
//! under row locks what was marked, and the record of each run.
//!
//! A collection goes in three phases, each a loop of *mark* (a plain read of candidates) and
//! *sweep* (one transaction that locks the marked rows, checks them again and removes or
//! claims those still garbage):
//! 1. manifests of the registry that no tag, no index and no present subject refers to;
//! 2. blob links of its repositories that no manifest of the repository references;
//! 3. stored blob objects (of any registry) that nothing links: claimed, then deleted from the
//!    content store by the caller, then forgotten ([`Meta::forget_object`]).
//!
//! Whatever makes a row live again (a tag, a manifest referencing a blob, an upload or mount
//! linking one) takes the same row first (`FOR SHARE` or an update on PostgreSQL; SQLite
//! runs one writer at a time), so a sweep sees it when it checks again, or the writer sees the
//! row gone and fails without storing a dangling reference. Everything younger than the grace
//! period (`cutoff`) is left alone.

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::{now_millis, Backend, Meta, MetaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcPhase {
    Manifests,
    Links,
    Objects,
}

impl GcPhase {
    pub fn name(self) -> &'static str {
        match self {
            GcPhase::Manifests => "manifests",
            GcPhase::Links => "links",
            GcPhase::Objects => "blobs",
        }
    }
}

/// Something a collection marked, and then freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    Manifest {
        id: i64,
        repository: String,
        digest: String,
        size: i64,
    },
    Link {
        repository_id: i64,
        repository: String,
        digest: String,
    },
    Object {
        scope: String,
        digest: String,
        size: i64,
    },
}

/// A manifest `m` of repository... that nothing keeps: no tag on it, no index of its repository
/// listing it, and no subject present in its repository (a referrer lives with its subject).
const MANIFEST_GARBAGE: &str = "NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) \
     AND NOT EXISTS (SELECT 1 FROM manifest_references mr \
         JOIN manifests p ON p.id = mr.manifest_id \
         WHERE mr.kind = 'manifest' AND mr.digest = m.digest AND p.repository_id = m.repository_id) \
     AND (m.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifests s \
         WHERE s.repository_id = m.repository_id AND s.digest = m.subject))";

/// A link `rb` that no manifest of its repository references.
const LINK_GARBAGE: &str = "NOT EXISTS (SELECT 1 FROM manifest_references mr \
     JOIN manifests m ON m.id = mr.manifest_id \
     WHERE mr.digest = rb.digest AND mr.kind = 'blob' AND m.repository_id = rb.repository_id)";

/// An object `o` that no repository of its scope links.
const OBJECT_GARBAGE: &str = "o.deleting_since IS NULL AND NOT EXISTS (SELECT 1 \
     FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
     JOIN registries g ON g.id = r.registry_id \
     WHERE rb.digest = o.digest AND COALESCE(g.key_id, '') = o.scope)";

/// `$first, $first+1, ...`: `n` placeholders for an IN list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One collection's view of the database: reads and sweeps of a real run go to the pools
/// (each sweep its own transaction); a dry run does everything in one transaction that is
/// rolled back at the end, so that it lists exactly what a run would free and frees nothing.
pub struct Collector {
    meta: Meta,
    dry: Option<Transaction<'static, Any>>,
    registry_id: i64,
    cutoff: i64,
}

impl Meta {
    /// A collection of registry `registry_id` that leaves alone whatever was pushed, linked or
    /// pinned at or after `cutoff` (milliseconds).
    pub async fn collector(
        &self,
        registry_id: i64,
        cutoff: i64,
        dry_run: bool,
    ) -> Result<Collector> {
        let dry = match dry_run {
            true => Some(self.begin_write().await?),
            false => None,
        };
        Ok(Collector {
            meta: self.clone(),
            dry,
            registry_id,
            cutoff,
        })
    }

    /// `FOR UPDATE` / `FOR SHARE` where the database has row locks; SQLite runs one writer at
    /// a time and needs none.
    pub(crate) fn lock(&self, strength: &str) -> String {
        match self.backend() {
            Backend::Postgres => format!(" FOR {strength}"),
            Backend::Sqlite => String::new(),
        }
    }
}

impl Collector {
    async fn fetch(&mut self, sql: &str, binds: Binds) -> Result<Vec<AnyRow>> {
        let query = binds.apply(sqlx::query(sql));
        Ok(match &mut self.dry {
            Some(tx) => query.fetch_all(&mut **tx).await?,
            None => query.fetch_all(&self.meta.read).await?,
        })
    }

    /// Up to `limit` candidates of `phase` after `after` (the last one of the previous mark,
    /// in the phase's order), read without locks. Marks go forward through the phase's rows,
    /// so that rows a sweep kept are not read again in the same pass.
    pub async fn mark(
        &mut self,
        phase: GcPhase,
        after: Option<&Garbage>,
        limit: i64,
    ) -> Result<Vec<Garbage>> {
        let (registry, cutoff) = (self.registry_id, self.cutoff);
        let (sql, binds, read): (String, Vec<Bind>, ReadRow) = match phase {
            GcPhase::Manifests => {
                let after = match after {
                    Some(Garbage::Manifest { id, .. }) => *id,
                    _ => 0,
                };
                (
                    format!(
                        "SELECT m.id, r.name, m.digest, m.size FROM manifests m \
                         JOIN repositories r ON r.id = m.repository_id \
                         WHERE r.registry_id = $1 AND m.pushed_at < $2 AND m.id > $3 \
                         AND {MANIFEST_GARBAGE} ORDER BY m.id LIMIT $4"
                    ),
                    vec![registry.into(), cutoff.into(), after.into(), limit.into()],
                    manifest_garbage,
                )
            }
            GcPhase::Links => {
                let (repository, digest) = match after {
                    Some(Garbage::Link {
                        repository_id,
                        digest,
                        ..
                    }) => (*repository_id, digest.as_str()),
                    _ => (0, ""),
                };
                (
                    format!(
                        "SELECT rb.repository_id, r.name, rb.digest FROM repository_blobs rb \
                         JOIN repositories r ON r.id = rb.repository_id \
                         WHERE r.registry_id = $1 AND rb.created_at < $2 \
                         AND (rb.repository_id > $3 OR (rb.repository_id = $3 AND rb.digest > $4)) \
                         AND {LINK_GARBAGE} ORDER BY rb.repository_id, rb.digest LIMIT $5"
                    ),
                    vec![
                        registry.into(),
                        cutoff.into(),
                        repository.into(),
                        digest.into(),
                        limit.into(),
                    ],
                    link_garbage,
                )
            }
            GcPhase::Objects => {
                let (scope, digest) = match after {
                    Some(Garbage::Object { scope, digest, .. }) => {
                        (scope.as_str(), digest.as_str())
                    }
                    _ => ("", ""),
                };
                (
                    format!(
                        "SELECT o.scope, o.digest, o.size FROM blob_objects o \
                         WHERE o.pinned_at < $1 \
                         AND (o.scope > $2 OR (o.scope = $2 AND o.digest > $3)) \
                         AND {OBJECT_GARBAGE} ORDER BY o.scope, o.digest LIMIT $4"
                    ),
                    vec![cutoff.into(), scope.into(), digest.into(), limit.into()],
                    object_garbage,
                )
            }
        };
        let rows = self.fetch(&sql, Binds(binds)).await?;
        rows.iter().map(read).collect()
    }

    /// Removes (manifests, links) or claims for deletion (objects) those of `marked` that are
    /// still garbage once their rows are locked, in one transaction; returns them. A real run's
    /// sweep is run again when PostgreSQL made it a deadlock's victim (a push locking the same
    /// rows in another order) or the database blinked; a dry run's one transaction cannot be.
    pub async fn sweep(&mut self, marked: &[Garbage]) -> Result<Vec<Garbage>> {
        let (meta, registry, cutoff) = (&self.meta, self.registry_id, self.cutoff);
        match &mut self.dry {
            Some(tx) => sweep(meta, tx, registry, cutoff, marked).await,
            None => {
                let retried = |e: &MetaError| e.is_conflict_retry() || e.is_unavailable();
                crate::retry(retried, || async {
                    let mut tx = meta.begin_write().await?;
                    let freed = sweep(meta, &mut tx, registry, cutoff, marked).await?;
                    tx.commit().await?;
                    Ok(freed)
                })
                .await
            }
        }
    }

    /// Ends the collection; a dry run's changes are rolled back.
    pub async fn end(self) -> Result<()> {
        if let Some(tx) = self.dry {
            tx.rollback().await?;
        }
        Ok(())
    }
}

/// Reads one kind of garbage from a row.
type ReadRow = fn(&AnyRow) -> Result<Garbage>;

/// Values to bind, in order.
struct Binds(Vec<Bind>);

#[derive(Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

impl From<i64> for Bind {
    fn from(v: i64) -> Bind {
        Bind::Int(v)
    }
}

impl From<&str> for Bind {
    fn from(v: &str) -> Bind {
        Bind::Text(v.to_string())
    }
}

impl Binds {
    fn apply<'q>(
        self,
        mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        for b in self.0 {
            query = match b {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        query
    }
}

async fn rows(conn: &mut AnyConnection, sql: &str, binds: Binds) -> Result<Vec<AnyRow>> {
    Ok(binds.apply(sqlx::query(sql)).fetch_all(conn).await?)
}

fn manifest_garbage(r: &AnyRow) -> Result<Garbage> {
    Ok(Garbage::Manifest {
        id: r.try_get("id")?,
        repository: r.try_get("name")?,
        digest: r.try_get("digest")?,
        size: r.try_get("size")?,
    })
}

fn link_garbage(r: &AnyRow) -> Result<Garbage> {
    Ok(Garbage::Link {
        repository_id: r.try_get("repository_id")?,
        repository: r.try_get("name")?,
        digest: r.try_get("digest")?,
    })
}

fn object_garbage(r: &AnyRow) -> Result<Garbage> {
    Ok(Garbage::Object {
        scope: r.try_get("scope")?,
        digest: r.try_get("digest")?,
        size: r.try_get("size")?,
    })
}

/// Groups `marked` by owner (the registry for manifests, a repository's id for links, an
/// object's scope), keeping the ids or digests.
fn grouped(marked: &[Garbage], registry: i64) -> Vec<(Bind, Vec<Bind>)> {
    let mut groups: Vec<(String, Bind, Vec<Bind>)> = Vec::new();
    for g in marked {
        let (key, owner, item): (String, Bind, Bind) = match g {
            Garbage::Manifest { id, .. } => (String::new(), Bind::Int(registry), Bind::Int(*id)),
            Garbage::Link {
                repository_id,
                digest,
                ..
            } => (
                repository_id.to_string(),
                Bind::Int(*repository_id),
                digest.as_str().into(),
            ),
            Garbage::Object { scope, digest, .. } => {
                (scope.clone(), scope.as_str().into(), digest.as_str().into())
            }
        };
        match groups.iter_mut().find(|(k, ..)| *k == key) {
            Some((.., items)) => items.push(item),
            None => groups.push((key, owner, vec![item])),
        }
    }
    groups.into_iter().map(|(_, o, i)| (o, i)).collect()
}

/// Runs `sql`, whose `{in}` stands for an IN list of `items` bound after `leading`.
async fn with_list(
    tx: &mut AnyConnection,
    sql: &str,
    leading: &[Bind],
    items: &[Bind],
) -> Result<Vec<AnyRow>> {
    let sql = sql.replace("{in}", &placeholders(leading.len() + 1, items.len()));
    rows(tx, &sql, Binds([leading, items].concat())).await
}

/// What a sweep does with one kind of garbage: the rows to lock (`$1`: their owner), the
/// check that they are still garbage (`$1` owner, `$2` cutoff: its rows are what is freed),
/// and what frees them (`$1` owner; `$2` now where a claim records it), each over an IN list
/// of ids or digests.
struct SweepSql {
    lock: &'static str,
    check: String,
    free: &'static str,
    read: ReadRow,
}

fn sweep_sql(kind: &Garbage) -> SweepSql {
    match kind {
        Garbage::Manifest { .. } => SweepSql {
            // No join: `FOR UPDATE` would lock the repositories' rows too, holding up pushes
            // into them until the sweep commits.
            lock: "SELECT id FROM manifests WHERE repository_id IN \
                   (SELECT id FROM repositories WHERE registry_id = $1) AND id IN ({in})",
            check: format!(
                "SELECT m.id, r.name, m.digest, m.size FROM manifests m \
                 JOIN repositories r ON r.id = m.repository_id \
                 WHERE r.registry_id = $1 AND m.pushed_at < $2 AND m.id IN ({{in}}) \
                 AND {MANIFEST_GARBAGE}"
            ),
            free: "DELETE FROM manifests WHERE repository_id IN \
                   (SELECT id FROM repositories WHERE registry_id = $1) AND id IN ({in})",
            read: manifest_garbage,
        },
        Garbage::Link { .. } => SweepSql {
            lock: "SELECT digest FROM repository_blobs WHERE repository_id = $1 \
                   AND digest IN ({in})",
            check: format!(
                "SELECT rb.repository_id, r.name, rb.digest FROM repository_blobs rb \
                 JOIN repositories r ON r.id = rb.repository_id \
                 WHERE rb.repository_id = $1 AND rb.created_at < $2 \
                 AND rb.digest IN ({{in}}) AND {LINK_GARBAGE}"
            ),
            free: "DELETE FROM repository_blobs WHERE repository_id = $1 AND digest IN ({in})",
            read: link_garbage,
        },
        Garbage::Object { .. } => SweepSql {
            lock: "SELECT digest FROM blob_objects WHERE scope = $1 AND digest IN ({in})",
            check: format!(
                "SELECT o.scope, o.digest, o.size FROM blob_objects o \
                 WHERE o.scope = $1 AND o.pinned_at < $2 AND o.digest IN ({{in}}) \
                 AND {OBJECT_GARBAGE}"
            ),
            free: "UPDATE blob_objects SET deleting_since = $2 WHERE scope = $1 \
                   AND digest IN ({in})",
            read: object_garbage,
        },
    }
}

async fn sweep(
    meta: &Meta,
    tx: &mut AnyConnection,
    registry: i64,
    cutoff: i64,
    marked: &[Garbage],
) -> Result<Vec<Garbage>> {
    let Some(kind) = marked.first() else {
        return Ok(Vec::new());
    };
    let sql = sweep_sql(kind);
    let lock = format!("{}{}", sql.lock, meta.lock("UPDATE"));
    let mut freed = Vec::new();
    for (owner, items) in grouped(marked, registry) {
        with_list(tx, &lock, std::slice::from_ref(&owner), &items).await?;
        let garbage = with_list(tx, &sql.check, &[owner.clone(), cutoff.into()], &items)
            .await?
            .iter()
            .map(sql.read)
            .collect::<Result<Vec<_>>>()?;
        if garbage.is_empty() {
            continue;
        }
        let keys: Vec<Bind> = garbage
            .iter()
            .map(|g| match g {
                Garbage::Manifest { id, .. } => Bind::Int(*id),
                Garbage::Link { digest, .. } | Garbage::Object { digest, .. } => {
                    digest.as_str().into()
                }
            })
            .collect();
        let leading = match kind {
            Garbage::Object { .. } => vec![owner, now_millis().into()],
            _ => vec![owner],
        };
        with_list(tx, sql.free, &leading, &keys).await?;
        freed.extend(garbage);
    }
    Ok(freed)
}

/// How linking a blob's stored object went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Its object is live and protected for the grace period from now.
    Pinned,
    /// A collection claimed it for deletion at this time (milliseconds): it is about to go.
    Deleting(i64),
}

/// One run of a collection, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRun {
    pub id: i64,
    pub registry_id: i64,
    /// `manual` or `schedule`.
    pub cause: String,
    pub dry_run: bool,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub phase: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub finished_at: Option<i64>,
    pub manifests_freed: i64,
    pub blobs_freed: i64,
    pub bytes_freed: i64,
    pub error: Option<String>,
    /// What a dry run found (JSON), or what a run freed.
    pub details: Option<String>,
}

const RUN_COLUMNS: &str = "id, registry_id, cause, dry_run, status, phase, started_at, \
     heartbeat_at, finished_at, manifests_freed, blobs_freed, bytes_freed, error, details";

fn gc_run(r: &AnyRow) -> Result<GcRun> {
    Ok(GcRun {
        id: r.try_get("id")?,
        registry_id: r.try_get("registry_id")?,
        cause: r.try_get("cause")?,
        dry_run: r.try_get::<i64, _>("dry_run")? != 0,
        status: r.try_get("status")?,
        phase: r.try_get("phase")?,
        started_at: r.try_get("started_at")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
        finished_at: r.try_get("finished_at")?,
        manifests_freed: r.try_get("manifests_freed")?,
        blobs_freed: r.try_get("blobs_freed")?,
        bytes_freed: r.try_get("bytes_freed")?,
        error: r.try_get("error")?,
        details: r.try_get("details")?,
    })
}

/// What a run has freed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcCounts {
    pub manifests: i64,
    pub blobs: i64,
    pub bytes: i64,
}

impl Meta {
    /// Records the start of a collection of the registry, unless one is running: then that one
    /// comes back as the error. A run whose node has not been heard of since `stale_before`
    /// is marked failed first (its node stopped), so that a new one can start.
    pub async fn start_gc_run(
        &self,
        registry_id: i64,
        cause: &str,
        dry_run: bool,
        stale_before: i64,
    ) -> Result<std::result::Result<GcRun, GcRun>> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE gc_runs SET status = 'failed', finished_at = $1, \
             error = 'the node running it stopped before it finished' \
             WHERE registry_id = $2 AND status = 'running' AND heartbeat_at < $3",
        )
        .bind(now)
        .bind(registry_id)
        .bind(stale_before)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO gc_runs (registry_id, cause, dry_run, status, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, 'running', $4, $4) RETURNING {RUN_COLUMNS}"
        ))
        .bind(registry_id)
        .bind(cause)
        .bind(i64::from(dry_run))
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(row) => {
                let run = gc_run(&row)?;
                tx.commit().await?;
                Ok(Ok(run))
            }
            // The unique index of running runs: another is running (or just started).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                let row = sqlx::query(&format!(
                    "SELECT {RUN_COLUMNS} FROM gc_runs WHERE registry_id = $1 \
                     AND status = 'running'"
                ))
                .bind(registry_id)
                .fetch_optional(&self.write)
                .await?;
                match row {
                    Some(r) => Ok(Err(gc_run(&r)?)),
                    None => Err(MetaError::Conflict(
                        "another collection of this registry just ended; try again".into(),
                    )),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a running collection's phase and counts, and that its node is alive.
    pub async fn gc_progress(&self, run_id: i64, phase: &str, counts: GcCounts) -> Result<()> {
        sqlx::query(
            "UPDATE gc_runs SET phase = $1, manifests_freed = $2, blobs_freed = $3, \
             bytes_freed = $4, heartbeat_at = $5 WHERE id = $6 AND status = 'running'",
        )
        .bind(phase)
        .bind(counts.manifests)
        .bind(counts.blobs)
        .bind(counts.bytes)
        .bind(now_millis())
        .bind(run_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Records how a collection ended: `error` is `None` when it succeeded.
    pub async fn finish_gc_run(
        &self,
        run_id: i64,
        counts: GcCounts,
        error: Option<&str>,
        details: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE gc_runs SET status = $1, phase = '', manifests_freed = $2, blobs_freed = $3, \
             bytes_freed = $4, finished_at = $5, heartbeat_at = $5, error = $6, details = $7 \
             WHERE id = $8",
        )
        .bind(if error.is_some() {
            "failed"
        } else {
            "succeeded"
        })
        .bind(counts.manifests)
        .bind(counts.blobs)
        .bind(counts.bytes)
        .bind(now_millis())
        .bind(error)
        .bind(details)
        .bind(run_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A registry's collections, newest first, before run `before`, at most `limit`.
    pub async fn gc_runs(
        &self,
        registry_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<GcRun>, bool)> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM gc_runs WHERE registry_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(registry_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit.saturating_add(1))
        .fetch_all(&self.read)
        .await?;
        crate::page(&rows, limit, gc_run)
    }

    pub async fn gc_run(&self, registry_id: i64, id: i64) -> Result<Option<GcRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM gc_runs WHERE registry_id = $1 AND id = $2"
        ))
        .bind(registry_id)
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(gc_run).transpose()
    }

    /// Protects a blob's stored object from collection for the grace period from now,
    /// recording it (with its size) if it is new. An object a collection has claimed cannot be
    /// pinned: it must be gone before it is stored again.
    pub async fn pin_object(&self, scope: &str, digest: &str, size: i64) -> Result<Pin> {
        let (scope, digest) = (scope.to_string(), digest.to_string());
        self.transaction(move |conn| {
            Box::pin(async move {
                let now = now_millis();
                sqlx::query(
                    "INSERT INTO blob_objects (scope, digest, size, pinned_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (scope, digest) \
                     DO UPDATE SET pinned_at = excluded.pinned_at \
                     WHERE blob_objects.deleting_since IS NULL",
                )
                .bind(&scope)
                .bind(&digest)
                .bind(size)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                let row = sqlx::query(
                    "SELECT deleting_since FROM blob_objects WHERE scope = $1 AND digest = $2",
                )
                .bind(&scope)
                .bind(&digest)
                .fetch_one(&mut *conn)
                .await?;
                Ok(match row.try_get::<Option<i64>, _>("deleting_since")? {
                    Some(since) => Pin::Deleting(since),
                    None => Pin::Pinned,
                })
            })
        })
        .await
    }

    /// Objects claimed for deletion before `before` whose collection did not finish (its node
    /// stopped): whoever finds them completes the deletion.
    pub async fn stale_objects(&self, before: i64, limit: i64) -> Result<Vec<Garbage>> {
        let rows = sqlx::query(
            "SELECT scope, digest, size FROM blob_objects \
             WHERE deleting_since IS NOT NULL AND deleting_since < $1 LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(object_garbage).collect()
    }

    /// Forgets claimed objects of a scope once their content is deleted, and each blob itself
    /// once no object of it is left and nothing links it.
    pub async fn forget_objects(&self, scope: &str, digests: &[String]) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let items: Vec<Bind> = digests.iter().map(|d| d.as_str().into()).collect();
        let mut conn = self.write.acquire().await?;
        with_list(
            &mut conn,
            "DELETE FROM blob_objects WHERE scope = $1 AND deleting_since IS NOT NULL \
             AND digest IN ({in})",
            &[scope.into()],
            &items,
        )
        .await?;
        // A link made meanwhile (in another scope) keeps the blob's row; on PostgreSQL a
        // link being made right now fails this delete instead, which is as good.
        let forgotten = with_list(
            &mut conn,
            "DELETE FROM blobs WHERE digest IN ({in}) \
             AND NOT EXISTS (SELECT 1 FROM blob_objects o WHERE o.digest = blobs.digest) \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest)",
            &[],
            &items,
        )
        .await;
        if let Err(e) = forgotten {
            tracing::debug!(error = %e, "blob rows kept");
        }
        Ok(())
    }

    /// [`Meta::forget_objects`] of one object.
    pub async fn forget_object(&self, scope: &str, digest: &str) -> Result<()> {
        self.forget_objects(scope, &[digest.to_string()]).await
    }

    /// Bytes of every stored blob object: the instance's physical total.
    pub async fn stored_bytes(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM blob_objects")
                .fetch_one(&self.read)
                .await?
                .try_get("bytes")?,
        )
    }
}
