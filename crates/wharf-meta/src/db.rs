use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::{MetaError, Result};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The metadata store. Cheap to clone.
#[derive(Clone)]
pub struct Meta {
    pub(crate) read: AnyPool,
    // SQLite allows one writer at a time; funnelling writes through a single connection turns
    // lock contention into queueing instead of SQLITE_BUSY errors. On PostgreSQL it is the same
    // pool as `read`.
    pub(crate) write: AnyPool,
    /// SQLite only: the group committer behind [`Meta::transaction`].
    group: Option<mpsc::Sender<Job>>,
    backend: Backend,
}

impl Meta {
    /// Connects to `url` (`sqlite:PATH` or `postgres://...`), creating the database if it does
    /// not exist yet, and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Meta> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(MetaError::UnsupportedUrl(url.to_string()));
        };
        if !Any::database_exists(url).await? {
            Any::create_database(url).await?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let meta = match backend {
            Backend::Sqlite => {
                let pool = |max| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                // FULL sync makes every commit durable before it is acknowledged.
                                conn.execute(
                                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                                     PRAGMA synchronous = FULL;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = pool(1).connect_with(options.clone()).await?;
                write.execute("PRAGMA journal_mode = WAL;").await?;
                SQLITE_MIGRATIONS.run(&write).await?;
                let read = pool(8).connect_with(options).await?;
                Meta {
                    read,
                    group: Some(group_committer(write.clone())),
                    write,
                    backend,
                }
            }
            Backend::Postgres => {
                // A database that is down fails requests (503) within seconds instead of
                // holding them while the pool retries connecting.
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(8))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Meta {
                    read: pool.clone(),
                    write: pool,
                    group: None,
                    backend,
                }
            }
        };
        Ok(meta)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// Runs `work` in a transaction of its own: its changes land together once they are
    /// durable, or not at all when it fails. On SQLite, where every commit waits for its own
    /// fsync and writers queue behind one connection, concurrent transactions are committed in
    /// groups: each runs in a savepoint of one shared transaction, and one durable commit
    /// answers them all (nothing is visible before that commit). PostgreSQL groups concurrent
    /// commits' WAL flushes by itself.
    pub(crate) async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.transaction_as(Durability::Now, work).await
    }

    /// [`Meta::transaction`], durable as `durability` says.
    pub(crate) async fn transaction_as<T, F>(&self, durability: Durability, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let Some(group) = &self.group else {
            let mut tx = self.begin_write().await?;
            if durability == Durability::Later {
                // Only this transaction's commit skips waiting for its WAL flush.
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
            }
            let value = work(&mut tx).await?;
            tx.commit().await?;
            return Ok(value);
        };
        let (reply, answer) = oneshot::channel();
        let run: JobWork = Box::new(move |conn: &mut AnyConnection, alone: bool| {
            Box::pin(async move {
                // Alone in its group, the work needs no savepoint of its own: when it fails,
                // the group's transaction (its own) is rolled back.
                let (clean, outcome) = if alone {
                    let outcome = work(conn).await;
                    (outcome.is_ok(), outcome)
                } else {
                    in_savepoint(conn, work).await
                };
                // Work that failed answers with its own error, whatever became of the group.
                let deliver: Deliver =
                    Box::new(move |committed: std::result::Result<(), String>| {
                        let _ = reply.send(
                            outcome.and_then(|v| committed.map_err(MetaError::Commit).map(|_| v)),
                        );
                    });
                (clean, deliver)
            })
        });
        group
            .send(Job { durability, run })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Opens a write transaction. On SQLite it takes the write lock at once: a deferred
    /// transaction that reads first cannot take it later if another process (`wharf vulndb
    /// import` beside `wharf serve`) committed meanwhile, and fails at once with "database is
    /// locked" instead of waiting its turn.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.write.begin_with(SQLITE_BEGIN_WRITE).await?,
            Backend::Postgres => self.write.begin().await?,
        })
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// When a transaction's changes must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Before the transaction is answered.
    Now,
    /// With the next durable commit, or soon after by the database's own schedule (SQLite's
    /// next checkpoint, PostgreSQL's WAL writer): a crash may lose the change, never tear it.
    /// For records that a client can find out about and redo, such as an upload's progress.
    Later,
}

/// One transaction's work for the group committer. It runs its work in a savepoint (or, alone
/// in its group, straight in the group's transaction) and returns whether the group may still
/// commit, and how to answer its caller once the group's commit has succeeded or failed.
type JobWork =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection, bool) -> BoxFuture<'c, (bool, Deliver)> + Send>;
type Deliver = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

struct Job {
    durability: Durability,
    run: JobWork,
}

/// How SQLite write transactions begin (see [`Meta::begin_write`]).
const SQLITE_BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Transactions waiting beyond this many start the next group.
const GROUP_LIMIT: usize = 64;

fn stopped() -> MetaError {
    MetaError::Commit("the database writer is unavailable (see the server log)".into())
}

/// `work` inside a savepoint of the open transaction: released when it succeeds, rolled back
/// (leaving the rest of the group untouched) when it fails. The flag is false when the
/// savepoint itself could not be opened or closed: the work's changes may then still be in the
/// shared transaction, which must not be committed.
async fn in_savepoint<T, F>(conn: &mut AnyConnection, work: F) -> (bool, Result<T>)
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>>,
{
    let mut savepoint = match conn.begin().await {
        Ok(s) => s,
        Err(e) => return (false, Err(e.into())),
    };
    match work(&mut savepoint).await {
        Ok(value) => match savepoint.commit().await {
            Ok(()) => (true, Ok(value)),
            Err(e) => (false, Err(e.into())),
        },
        Err(e) => (savepoint.rollback().await.is_ok(), Err(e)),
    }
}

/// Starts the task that commits SQLite transactions in groups: whatever has queued while the
/// previous group was committing goes into the next one.
fn group_committer(write: AnyPool) -> mpsc::Sender<Job> {
    let (sender, mut queue) = mpsc::channel::<Job>(GROUP_LIMIT * 4);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(GROUP_LIMIT);
        // The write connection's `synchronous` setting as this task last set it: whether it
        // skips syncing the WAL. Unknown (`None`) after any failed group, a failed PRAGMA
        // included: a connection opened anew starts on FULL, and the next group sets what it
        // needs.
        let mut relaxed: Option<bool> = None;
        while queue.recv_many(&mut jobs, GROUP_LIMIT).await > 0 {
            let mut delivers = Vec::with_capacity(jobs.len());
            let committed = async {
                let mut conn = write.acquire().await.map_err(|e| e.to_string())?;
                // A group whose every transaction may wait commits without syncing the WAL; the
                // next synced commit makes it durable with everything before it. Every group
                // runs on the setting it needs, set only when it differs from the last one.
                let later = jobs.iter().all(|j| j.durability == Durability::Later);
                if relaxed != Some(later) {
                    let sync = if later {
                        "PRAGMA synchronous = NORMAL"
                    } else {
                        "PRAGMA synchronous = FULL"
                    };
                    sqlx::query(sync)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    relaxed = Some(later);
                }
                let mut tx = conn
                    .begin_with(SQLITE_BEGIN_WRITE)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut clean = true;
                let alone = jobs.len() == 1;
                for job in jobs.drain(..) {
                    let (ok, deliver) = (job.run)(&mut tx, alone).await;
                    clean &= ok;
                    delivers.push(deliver);
                }
                if clean {
                    tx.commit().await.map_err(|e| e.to_string())
                } else if alone {
                    // The lone job's work failed: its transaction ends, and it answers with
                    // its own error.
                    tx.rollback().await.map_err(|e| e.to_string())
                } else {
                    let _ = tx.rollback().await;
                    Err("a savepoint could not be closed; the group was rolled back".to_string())
                }
            }
            .await
            .inspect_err(|e| tracing::error!(error = %e, "group commit failed"));
            if committed.is_err() {
                relaxed = None;
            }
            // Jobs never run (no connection, or BEGIN failed) drop their replies: their callers
            // get `stopped()`, the cause is in the log line above.
            jobs.clear();
            for deliver in delivers {
                deliver(committed.clone());
            }
        }
    });
    sender
}
