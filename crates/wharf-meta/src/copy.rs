//! Copies all metadata from one store into another, empty one: how a single node on SQLite
//! moves to PostgreSQL (and back). Rows keep their ids, so tokens, keys and audit entries keep
//! their names; identity counters are moved past the copied ids.

use futures_util::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Backend, Meta, MetaError, Result};

/// Every table, parents before children (foreign keys hold at every insert).
const TABLES: &[&str] = &[
    "registries",
    "repositories",
    "blobs",
    "blob_objects",
    "repository_blobs",
    "manifests",
    "manifest_references",
    "tags",
    "uploads",
    "admin_keys",
    "audit_log",
    "tokens",
    "token_scopes",
    "signing_keys",
    "data_keys",
    "vuln_advisories",
    "vuln_packages",
    "vuln_aliases",
    "vuln_scores",
    "vuln_sources",
    "scan_inventories",
    "scans",
    "scan_findings",
    "gc_runs",
    "upstreams",
    "expired_tokens",
    "caches",
    "cache_checks",
    "replication_rules",
    "replication_jobs",
    "storage_samples",
];

/// Tables whose `id` a counter hands out on PostgreSQL.
const IDENTITY_TABLES: &[&str] = &[
    "registries",
    "repositories",
    "manifests",
    "admin_keys",
    "audit_log",
    "tokens",
    "token_scopes",
    "gc_runs",
    "upstreams",
    "caches",
    "replication_rules",
    "replication_jobs",
];

/// Rows per INSERT statement, within PostgreSQL's 65,535 parameters for the widest table.
const BATCH_ROWS: usize = 500;

/// The kinds of column the schema uses, as the target database declares them.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Real,
    Text,
    Bytes,
}

/// One column value, read as the target's kind of that column.
enum Value {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

fn value(row: &AnyRow, i: usize, kind: Kind) -> Result<Value> {
    Ok(match kind {
        Kind::Int => Value::Int(row.try_get(i)?),
        Kind::Real => Value::Real(row.try_get(i)?),
        Kind::Text => Value::Text(row.try_get(i)?),
        Kind::Bytes => Value::Bytes(row.try_get(i)?),
    })
}

/// The kind of each column of `table` in `meta`'s database, by name.
async fn column_kinds(meta: &Meta, table: &str) -> Result<Vec<(String, Kind)>> {
    let sql = match meta.backend() {
        Backend::Postgres => {
            // information_schema names are of type `name`, which the Any driver cannot read.
            "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS type \
             FROM information_schema.columns \
             WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position"
        }
        Backend::Sqlite => "SELECT name, type FROM pragma_table_info($1)",
    };
    let rows = sqlx::query(sql).bind(table).fetch_all(&meta.read).await?;
    rows.iter()
        .map(|r| {
            let declared = r.try_get::<String, _>("type")?.to_ascii_lowercase();
            let kind = if declared.contains("int") {
                Kind::Int
            } else if ["double", "real", "float"]
                .iter()
                .any(|t| declared.contains(t))
            {
                Kind::Real
            } else if declared.contains("bytea") || declared.contains("blob") {
                Kind::Bytes
            } else {
                Kind::Text
            };
            Ok((r.try_get::<String, _>("name")?, kind))
        })
        .collect()
}

impl Meta {
    /// Copies every row of this store into `target`, which must hold no registry, key or token
    /// yet, in one transaction (all or nothing). Calls `progress` with each table's row count.
    pub async fn copy_into(
        &self,
        target: &Meta,
        mut progress: impl FnMut(&str, u64),
    ) -> Result<()> {
        for table in ["registries", "admin_keys", "tokens"] {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&target.read)
                .await?
                .try_get("n")?;
            if n > 0 {
                return Err(MetaError::Conflict(format!(
                    "the target database already holds {table}; copy into an empty one"
                )));
            }
        }
        let mut tx = target.begin_write().await?;
        for table in TABLES {
            let kinds = column_kinds(target, table).await?;
            let columns: Vec<String> = kinds.iter().map(|(name, _)| name.clone()).collect();
            let select = format!("SELECT {} FROM {table}", columns.join(", "));
            let mut rows = sqlx::query(&select).fetch(&self.read);
            let mut batch: Vec<Vec<Value>> = Vec::new();
            let mut copied = 0u64;
            while let Some(row) = rows.try_next().await? {
                let values = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| value(&row, i, *kind))
                    .collect::<Result<_>>()?;
                batch.push(values);
                if batch.len() == BATCH_ROWS {
                    copied += insert(&mut tx, table, &columns, std::mem::take(&mut batch)).await?;
                }
            }
            copied += insert(&mut tx, table, &columns, batch).await?;
            progress(table, copied);
        }
        if target.backend() == Backend::Postgres {
            for table in IDENTITY_TABLES {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                     COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    columns: &[String],
    rows: Vec<Vec<Value>>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for (r, row) in rows.iter().enumerate() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..row.len() {
            n += 1;
            sql.push_str(&if c == 0 {
                format!("${n}")
            } else {
                format!(", ${n}")
            });
        }
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for value in rows.iter().flatten() {
        query = match value {
            Value::Int(v) => query.bind(*v),
            Value::Real(v) => query.bind(*v),
            Value::Text(v) => query.bind(v.clone()),
            Value::Bytes(v) => query.bind(v.clone()),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(rows.len() as u64)
}
