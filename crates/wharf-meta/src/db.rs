use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::{Any, AnyPool, Executor};

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
                    write,
                    backend,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Meta {
                    read: pool.clone(),
                    write: pool,
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

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}
