//! The vulnerability database: advisories (as documents the scanner reads, keyed by the
//! packages they name), CVSS scores by CVE, what was imported from where, and the package
//! inventories of scanned images.

use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};

use crate::{now_millis, Meta, Result};

/// Rows per multi-row statement: well under PostgreSQL's 65,535 bind parameters.
const BATCH: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct AdvisoryRow {
    pub source: String,
    pub id: String,
    pub modified: String,
    /// A hash of `doc`: unchanged advisories are skipped on re-import.
    pub digest: String,
    pub doc: String,
    /// (ecosystem, package) pairs the advisory is looked up by.
    pub packages: Vec<(String, String)>,
    /// The other IDs it is known by.
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub cve: String,
    pub source: String,
    pub version: String,
    pub vector: Option<String>,
    pub score: f64,
    pub modified: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, o: Self) {
        self.added += o.added;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub source: String,
    pub kind: String,
    pub file: String,
    pub records: i64,
    pub newest: Option<String>,
    pub imported_at: i64,
}

/// The vulnerability database as a whole: its version, when it last changed, how much it
/// holds, and the scheduled imports' last run.
#[derive(Debug, Clone, PartialEq)]
pub struct VulnDbState {
    pub version: i64,
    /// When an import last changed it (milliseconds; 0: never).
    pub changed_at: i64,
    pub advisories: i64,
    pub scores: i64,
    /// A node is importing since (or last said it was alive at) this time.
    pub run_claimed_at: Option<i64>,
    /// An import was asked for ahead of the schedule at this time.
    pub run_requested_at: Option<i64>,
    pub run_started_at: Option<i64>,
    pub run_finished_at: Option<i64>,
    /// The last finished run's report, as the importing node wrote it (JSON).
    pub run_report: Option<String>,
}

/// Counts rows as added, updated or unchanged and returns those to write. `stored` says whether
/// a row is stored already (`Some`) and, if so, whether unchanged (`Some(true)`).
fn sort_out<'r, R>(
    rows: impl Iterator<Item = &'r R>,
    counts: &mut ImportCounts,
    stored: impl Fn(&R) -> Option<bool>,
) -> Vec<&'r R> {
    let mut changed = Vec::new();
    for r in rows {
        match stored(r) {
            Some(true) => counts.unchanged += 1,
            Some(false) => {
                counts.updated += 1;
                changed.push(r);
            }
            None => {
                counts.added += 1;
                changed.push(r);
            }
        }
    }
    changed
}

/// `($1, $2, ...), (...)` for `rows` rows of `cols` columns.
pub(crate) fn values(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn bind<'q, T>(args: &mut AnyArguments<'q>, value: T)
where
    T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    // Adding an argument fails only for types the driver cannot encode, which these are not.
    let _ = args.add(value);
}

impl Meta {
    /// Stores advisories of one source: new ones are added, changed ones (by digest) replaced
    /// together with their package keys, unchanged ones left alone.
    pub async fn upsert_advisories(&self, rows: &[AdvisoryRow]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        // A file may carry one ID twice; the last record wins, as a later re-import would.
        let mut latest = std::collections::HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            latest.insert((&r.source, &r.id), i);
        }
        counts.unchanged += (rows.len() - latest.len()) as u64;
        let rows: Vec<&AdvisoryRow> = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| latest.get(&(&r.source, &r.id)) == Some(i))
            .map(|(_, r)| r)
            .collect();
        let mut tx = self.begin_write().await?;
        for chunk in rows.chunks(BATCH) {
            // What is stored now, for the rows of this chunk.
            let mut args = AnyArguments::default();
            for r in chunk {
                bind(&mut args, r.source.clone());
                bind(&mut args, r.id.clone());
            }
            let sql = format!(
                "SELECT source, id, digest FROM vuln_advisories WHERE (source, id) IN (VALUES {})",
                values(chunk.len(), 2)
            );
            let stored: std::collections::HashMap<(String, String), String> =
                sqlx::query_with(&sql, args)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| -> Result<_> { Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)) })
                    .collect::<Result<_>>()?;
            // Aliases are written for every row, changed or not, so that a database imported
            // before they were kept gets them from the next import.
            write_aliases(&mut tx, chunk).await?;
            let changed = sort_out(chunk.iter().copied(), &mut counts, |r| {
                stored
                    .get(&(r.source.clone(), r.id.clone()))
                    .map(|d| *d == r.digest)
            });
            if changed.is_empty() {
                continue;
            }
            let mut args = AnyArguments::default();
            for r in &changed {
                bind(&mut args, r.source.clone());
                bind(&mut args, r.id.clone());
            }
            let sql = format!(
                "DELETE FROM vuln_packages WHERE (source, id) IN (VALUES {})",
                values(changed.len(), 2)
            );
            sqlx::query_with(&sql, args).execute(&mut *tx).await?;
            let now = now_millis();
            let mut args = AnyArguments::default();
            for r in &changed {
                bind(&mut args, r.source.clone());
                bind(&mut args, r.id.clone());
                bind(&mut args, r.modified.clone());
                bind(&mut args, r.digest.clone());
                bind(&mut args, r.doc.clone());
                bind(&mut args, now);
            }
            let sql = format!(
                "INSERT INTO vuln_advisories (source, id, modified, digest, doc, imported_at) \
                 VALUES {} ON CONFLICT (source, id) DO UPDATE SET modified = excluded.modified, \
                 digest = excluded.digest, doc = excluded.doc, imported_at = excluded.imported_at",
                values(changed.len(), 6)
            );
            sqlx::query_with(&sql, args).execute(&mut *tx).await?;
            let keys: Vec<(&AdvisoryRow, &(String, String))> = changed
                .iter()
                .flat_map(|r| {
                    let mut uniq: Vec<&(String, String)> = r.packages.iter().collect();
                    uniq.sort();
                    uniq.dedup();
                    uniq.into_iter().map(move |k| (*r, k))
                })
                .collect();
            for part in keys.chunks(BATCH) {
                let mut args = AnyArguments::default();
                for (r, (eco, pkg)) in part {
                    bind(&mut args, eco.clone());
                    bind(&mut args, pkg.clone());
                    bind(&mut args, r.source.clone());
                    bind(&mut args, r.id.clone());
                }
                let sql = format!(
                    "INSERT INTO vuln_packages (ecosystem, package, source, id) VALUES {}",
                    values(part.len(), 4)
                );
                sqlx::query_with(&sql, args).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Stores CVSS scores; a score whose `modified` stamp and value are unchanged is left alone.
    pub async fn upsert_scores(&self, rows: &[ScoreRow]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        let mut tx = self.begin_write().await?;
        for chunk in rows.chunks(BATCH) {
            let mut args = AnyArguments::default();
            for r in chunk {
                bind(&mut args, r.cve.clone());
                bind(&mut args, r.source.clone());
                bind(&mut args, r.version.clone());
            }
            let sql = format!(
                "SELECT cve, source, version, vector, score, modified FROM vuln_scores \
                 WHERE (cve, source, version) IN (VALUES {})",
                values(chunk.len(), 3)
            );
            let stored: std::collections::HashMap<(String, String, String), ScoreRow> =
                sqlx::query_with(&sql, args)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| -> Result<_> {
                        let row = score_row(r)?;
                        Ok((
                            (row.cve.clone(), row.source.clone(), row.version.clone()),
                            row,
                        ))
                    })
                    .collect::<Result<_>>()?;
            let changed = sort_out(chunk.iter(), &mut counts, |r| {
                stored
                    .get(&(r.cve.clone(), r.source.clone(), r.version.clone()))
                    .map(|s| s == r)
            });
            if changed.is_empty() {
                continue;
            }
            // A table may list one key twice; the last line wins, as a re-import would.
            let mut last = std::collections::BTreeMap::new();
            for r in changed {
                last.insert((&r.cve, &r.source, &r.version), r);
            }
            let mut args = AnyArguments::default();
            for r in last.values() {
                bind(&mut args, r.cve.clone());
                bind(&mut args, r.source.clone());
                bind(&mut args, r.version.clone());
                bind(&mut args, r.vector.clone());
                bind(&mut args, r.score);
                bind(&mut args, r.modified.clone());
            }
            let sql = format!(
                "INSERT INTO vuln_scores (cve, source, version, vector, score, modified) VALUES {} \
                 ON CONFLICT (cve, source, version) DO UPDATE SET vector = excluded.vector, \
                 score = excluded.score, modified = excluded.modified",
                values(last.len(), 6)
            );
            sqlx::query_with(&sql, args).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Records that `source` was imported from `file`. Advisory sources count their stored
    /// advisories; score tables (whose rows carry the scorer's name) pass `records`.
    pub async fn record_vuln_source(
        &self,
        source: &str,
        kind: &str,
        file: &str,
        newest: Option<&str>,
        records: Option<i64>,
    ) -> Result<()> {
        let records: i64 = match records {
            Some(n) => n,
            None => sqlx::query("SELECT COUNT(*) FROM vuln_advisories WHERE source = $1")
                .bind(source)
                .fetch_one(&self.write)
                .await?
                .try_get(0)?,
        };
        sqlx::query(
            "INSERT INTO vuln_sources (source, kind, file, records, newest, imported_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source) DO UPDATE SET \
             kind = excluded.kind, file = excluded.file, records = excluded.records, \
             newest = excluded.newest, imported_at = excluded.imported_at",
        )
        .bind(source)
        .bind(kind)
        .bind(file)
        .bind(records)
        .bind(newest)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn vuln_sources(&self) -> Result<Vec<SourceStatus>> {
        let rows = sqlx::query(
            "SELECT source, kind, file, records, newest, imported_at FROM vuln_sources \
             ORDER BY source",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SourceStatus {
                    source: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    file: r.try_get(2)?,
                    records: r.try_get(3)?,
                    newest: r.try_get(4)?,
                    imported_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn vuln_db_state(&self) -> Result<VulnDbState> {
        let r = sqlx::query(
            "SELECT version, changed_at, run_claimed_at, run_requested_at, run_started_at, \
             run_finished_at, run_report, (SELECT COUNT(*) FROM vuln_advisories), \
             (SELECT COUNT(*) FROM vuln_scores) FROM vuln_db WHERE id = 1",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(VulnDbState {
            version: r.try_get(0)?,
            changed_at: r.try_get(1)?,
            run_claimed_at: r.try_get(2)?,
            run_requested_at: r.try_get(3)?,
            run_started_at: r.try_get(4)?,
            run_finished_at: r.try_get(5)?,
            run_report: r.try_get(6)?,
            advisories: r.try_get(7)?,
            scores: r.try_get(8)?,
        })
    }

    /// Asks for a scheduled import ahead of its time; the node that claims the next run does it.
    pub async fn request_vuln_import(&self) -> Result<i64> {
        let now = now_millis();
        sqlx::query("UPDATE vuln_db SET run_requested_at = $1 WHERE id = 1")
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(now)
    }

    /// Claims the next scheduled import if one is due: asked for since the last run started,
    /// or the last run started before `due_before` (or never ran). A claim older than
    /// `stale_before` belongs to a node that stopped and is taken over. Of several nodes asking
    /// at once, one gets it.
    pub async fn claim_vuln_import(&self, due_before: i64, stale_before: i64) -> Result<bool> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE vuln_db SET run_claimed_at = $1, run_started_at = $1 WHERE id = 1 \
             AND (run_claimed_at IS NULL OR run_claimed_at < $2) \
             AND (run_started_at IS NULL OR run_started_at < $3 \
                  OR run_requested_at >= run_started_at)",
        )
        .bind(now)
        .bind(stale_before)
        .bind(due_before)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The importing node is still at work (its claim must not go stale).
    pub async fn touch_vuln_import(&self) -> Result<()> {
        sqlx::query(
            "UPDATE vuln_db SET run_claimed_at = $1 WHERE id = 1 AND run_claimed_at IS NOT NULL",
        )
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Ends a claimed run with its report.
    pub async fn finish_vuln_import(&self, report: &str) -> Result<()> {
        sqlx::query(
            "UPDATE vuln_db SET run_claimed_at = NULL, run_finished_at = $1, run_report = $2 \
             WHERE id = 1",
        )
        .bind(now_millis())
        .bind(report)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The newest `modified` stamp among a source's advisories.
    pub async fn newest_advisory(&self, source: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT MAX(modified) FROM vuln_advisories WHERE source = $1")
                .bind(source)
                .fetch_one(&self.read)
                .await?
                .try_get(0)?,
        )
    }

    /// The advisory documents naming any of `packages` in `ecosystem`, with the package each
    /// was found under.
    pub async fn advisories_for(
        &self,
        ecosystem: &str,
        packages: &[String],
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in packages.chunks(BATCH) {
            let mut args = AnyArguments::default();
            bind(&mut args, ecosystem.to_string());
            for p in chunk {
                bind(&mut args, p.clone());
            }
            let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT p.package, a.doc FROM vuln_packages p JOIN vuln_advisories a \
                 ON a.source = p.source AND a.id = p.id \
                 WHERE p.ecosystem = $1 AND p.package IN ({})",
                list.join(", ")
            );
            for r in sqlx::query_with(&sql, args).fetch_all(&self.read).await? {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// The advisories of a vulnerability, found by their own ID or by any alias: (source,
    /// document) of each.
    pub async fn advisories_named(&self, id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT a.source, a.doc FROM vuln_advisories a WHERE a.id = $1 \
             OR EXISTS (SELECT 1 FROM vuln_aliases v WHERE v.alias = $1 \
                 AND v.source = a.source AND v.id = a.id) \
             ORDER BY a.source, a.id",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Every stored score of these CVEs (or other IDs).
    pub async fn scores_for(&self, ids: &[String]) -> Result<Vec<ScoreRow>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(BATCH) {
            let mut args = AnyArguments::default();
            for id in chunk {
                bind(&mut args, id.clone());
            }
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT cve, source, version, vector, score, modified FROM vuln_scores \
                 WHERE cve IN ({})",
                list.join(", ")
            );
            for r in sqlx::query_with(&sql, args).fetch_all(&self.read).await? {
                out.push(score_row(&r)?);
            }
        }
        Ok(out)
    }

    pub async fn save_inventory(
        &self,
        image: &str,
        detector_version: i64,
        doc: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO scan_inventories (image, detector_version, doc, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (image) DO UPDATE SET \
             detector_version = excluded.detector_version, doc = excluded.doc, \
             created_at = excluded.created_at",
        )
        .bind(image)
        .bind(detector_version)
        .bind(doc)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A stored inventory: (detector version, document).
    pub async fn load_inventory(&self, image: &str) -> Result<Option<(i64, String)>> {
        let row =
            sqlx::query("SELECT detector_version, doc FROM scan_inventories WHERE image = $1")
                .bind(image)
                .fetch_optional(&self.read)
                .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }
}

/// Replaces the aliases of these advisories.
async fn write_aliases(tx: &mut sqlx::AnyConnection, rows: &[&AdvisoryRow]) -> Result<()> {
    let mut args = AnyArguments::default();
    for r in rows {
        bind(&mut args, r.source.clone());
        bind(&mut args, r.id.clone());
    }
    let sql = format!(
        "DELETE FROM vuln_aliases WHERE (source, id) IN (VALUES {})",
        values(rows.len(), 2)
    );
    sqlx::query_with(&sql, args).execute(&mut *tx).await?;
    let aliases: Vec<(&str, &AdvisoryRow)> = rows
        .iter()
        .flat_map(|r| r.aliases.iter().map(move |a| (a.as_str(), *r)))
        .collect();
    for part in aliases.chunks(BATCH) {
        let mut args = AnyArguments::default();
        for (alias, r) in part {
            bind(&mut args, alias.to_string());
            bind(&mut args, r.source.clone());
            bind(&mut args, r.id.clone());
        }
        let sql = format!(
            "INSERT INTO vuln_aliases (alias, source, id) VALUES {} \
             ON CONFLICT (alias, source, id) DO NOTHING",
            values(part.len(), 3)
        );
        sqlx::query_with(&sql, args).execute(&mut *tx).await?;
    }
    Ok(())
}

fn score_row(r: &sqlx::any::AnyRow) -> Result<ScoreRow> {
    Ok(ScoreRow {
        cve: r.try_get(0)?,
        source: r.try_get(1)?,
        version: r.try_get(2)?,
        vector: r.try_get(3)?,
        score: r.try_get(4)?,
        modified: r.try_get(5)?,
    })
}
