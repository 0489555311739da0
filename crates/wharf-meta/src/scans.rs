//! Scans of images inside the registry: the queue (a pending row per image and content scope),
//! the results and findings the views read, and the vulnerability database's version that
//! tells which results a newer database must match again.

use sqlx::any::AnyArguments;
use sqlx::Row;

use crate::vulndb::{bind, values};
use crate::{now_millis, Meta, Result};

/// Rows per multi-row INSERT of findings (11 columns: well under PostgreSQL's bind limit).
const FINDING_ROWS: usize = 200;

/// Candidates read per claim attempt; one of them is taken.
const CANDIDATES: i64 = 8;

/// A repository name a scan accepts: 2 to 255 characters.
pub const SCANNABLE_NAME: std::ops::RangeInclusive<usize> = 2..=255;

/// What a worker was given to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanJob {
    pub scope: String,
    pub digest: String,
    /// Read the layers (a pending scan), or only match the stored inventory again (a result
    /// behind the database's version).
    pub rematch: bool,
    /// Claims so far, this one included.
    pub attempts: i64,
}

/// One finding as stored; `doc` is the whole finding as the scanner reported it (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRow {
    pub vuln_id: String,
    pub package: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub severity: String,
    /// Higher is more severe: lists sort by it.
    pub rank: i64,
    pub score: Option<f64>,
    /// The ID and its aliases.
    pub ids: Vec<String>,
    pub doc: String,
}

/// A scan's outcome, as written by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOutcome {
    /// `scanned` or `unknown`.
    pub status: String,
    pub reason: Option<String>,
    pub db_version: i64,
    pub os: Option<String>,
    pub packages: Option<i64>,
    pub partial: bool,
    /// The highest severity among the findings, none when there are none.
    pub highest: Option<String>,
    /// Findings per severity, as a JSON object.
    pub summary: Option<String>,
    pub findings: Vec<FindingRow>,
}

/// A scan as the views show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRecord {
    pub scope: String,
    pub digest: String,
    /// `pending`, `scanned` or `unknown`.
    pub status: String,
    pub reason: Option<String>,
    pub queued_at: i64,
    pub scanned_at: Option<i64>,
    pub db_version: i64,
    pub os: Option<String>,
    pub packages: Option<i64>,
    pub partial: bool,
    pub highest: Option<String>,
    pub summary: Option<String>,
}

const SCAN_COLUMNS: &str = "scope, digest, status, reason, queued_at, scanned_at, db_version, \
     os, packages, partial, highest, summary";

fn scan_record(r: &sqlx::any::AnyRow) -> Result<ScanRecord> {
    Ok(ScanRecord {
        scope: r.try_get(0)?,
        digest: r.try_get(1)?,
        status: r.try_get(2)?,
        reason: r.try_get(3)?,
        queued_at: r.try_get(4)?,
        scanned_at: r.try_get(5)?,
        db_version: r.try_get(6)?,
        os: r.try_get(7)?,
        packages: r.try_get(8)?,
        partial: r.try_get::<i64, _>(9)? != 0,
        highest: r.try_get(10)?,
        summary: r.try_get(11)?,
    })
}

/// Filters of a findings listing.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    /// Only these severities (any, when empty).
    pub severities: Vec<String>,
    /// Only findings with a fixed version.
    pub fixable: bool,
}

/// Where a findings page starts: after this (rank, ID, package, installed version).
pub type FindingCursor = (i64, String, String, String);

/// The manifests of every registry whose content is in `scope`: the join the queries below
/// share (`m` manifests, `r` repositories, `g` registries).
const IN_SCOPE: &str = "manifests m JOIN repositories r ON r.id = m.repository_id \
     JOIN registries g ON g.id = r.registry_id";

impl Meta {
    /// Queues a scan of an image manifest unless it is queued or scanned already; true when
    /// queued now.
    pub async fn queue_scan(&self, scope: &str, digest: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO scans (scope, digest, status, queued_at) VALUES ($1, $2, 'pending', $3) \
             ON CONFLICT (scope, digest) DO NOTHING",
        )
        .bind(scope)
        .bind(digest)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Queues every image manifest of a registry not scanned yet (scanning switched on after
    /// pushes); returns how many were queued.
    pub async fn queue_registry_scans(&self, registry_id: i64) -> Result<u64> {
        let sql = format!(
            "INSERT INTO scans (scope, digest, status, queued_at) \
             SELECT DISTINCT COALESCE(g.key_id, ''), m.digest, 'pending', $2 FROM {IN_SCOPE} \
             WHERE g.id = $1 AND m.media_type NOT IN ($3, $4) \
             AND LENGTH(r.name) BETWEEN $5 AND $6 \
             ON CONFLICT (scope, digest) DO NOTHING"
        );
        let done = sqlx::query(&sql)
            .bind(registry_id)
            .bind(now_millis())
            .bind(wharf_oci::media::OCI_INDEX)
            .bind(wharf_oci::media::DOCKER_MANIFEST_LIST)
            .bind(*SCANNABLE_NAME.start() as i64)
            .bind(*SCANNABLE_NAME.end() as i64)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    /// Forgets the scans and findings of images that no registry of their scope holds any more
    /// (deleted manifests, repositories, registries); returns how many scans went. Scans go
    /// before their findings: a push of the same image meanwhile queues a new scan, which
    /// replaces the findings when it ends, and never leaves a scan without its findings.
    pub async fn drop_orphaned_scans(&self) -> Result<u64> {
        let orphan = |table: &str| {
            format!(
                "DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM manifests m \
                 JOIN repositories r ON r.id = m.repository_id \
                 JOIN registries g ON g.id = r.registry_id \
                 WHERE m.digest = {table}.digest AND COALESCE(g.key_id, '') = {table}.scope)"
            )
        };
        let scans = sqlx::query(&orphan("scans")).execute(&self.write).await?;
        sqlx::query(&orphan("scan_findings"))
            .execute(&self.write)
            .await?;
        Ok(scans.rows_affected())
    }

    /// The vulnerability database's version.
    pub async fn vuln_db_version(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT version FROM vuln_db WHERE id = 1")
            .fetch_optional(&self.read)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// Moves the database's version on (an import changed something): results matched against
    /// an older one are matched again.
    pub async fn bump_vuln_db(&self) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE vuln_db SET version = version + 1, changed_at = $1 WHERE id = 1 \
             RETURNING version",
        )
        .bind(now_millis())
        .fetch_one(&self.write)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Claims the next piece of work: the oldest pending scan, else (with `rematch`) a result
    /// matched against another database version than `db_version` of an image pushed or
    /// pulled since `recent`. Claims taken before `stale_before` were abandoned (their node
    /// stopped) and are taken over. Several nodes may ask at once: each row goes to one.
    pub async fn claim_scan(
        &self,
        db_version: i64,
        recent: i64,
        stale_before: i64,
        rematch: bool,
    ) -> Result<Option<ScanJob>> {
        let free = "(s.claimed_at IS NULL OR s.claimed_at < $1)";
        let pending = format!(
            "SELECT s.scope, s.digest FROM scans s WHERE s.status = 'pending' AND {free} \
             ORDER BY s.queued_at, s.digest LIMIT {CANDIDATES}"
        );
        let rematches = format!(
            "SELECT s.scope, s.digest FROM scans s WHERE s.status = 'scanned' \
             AND s.db_version <> $2 AND {free} AND EXISTS (SELECT 1 FROM {IN_SCOPE} \
             WHERE m.digest = s.digest AND COALESCE(g.key_id, '') = s.scope \
             AND (m.pushed_at >= $3 OR m.pulled_at >= $3)) LIMIT {CANDIDATES}"
        );
        let mut searches = vec![(pending, false)];
        if rematch {
            searches.push((rematches, true));
        }
        for (sql, is_rematch) in searches {
            let mut q = sqlx::query(&sql).bind(stale_before);
            if is_rematch {
                q = q.bind(db_version).bind(recent);
            }
            let rows = q.fetch_all(&self.read).await?;
            for r in rows {
                let (scope, digest): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let condition = if is_rematch {
                    "status = 'scanned' AND db_version <> $5"
                } else {
                    "status = 'pending'"
                };
                let sql = format!(
                    "UPDATE scans SET claimed_at = $1, attempts = attempts + 1 \
                     WHERE scope = $2 AND digest = $3 AND {condition} \
                     AND (claimed_at IS NULL OR claimed_at < $4) RETURNING attempts"
                );
                let mut q = sqlx::query(&sql)
                    .bind(now_millis())
                    .bind(&scope)
                    .bind(&digest)
                    .bind(stale_before);
                if is_rematch {
                    q = q.bind(db_version);
                }
                let claimed = q.fetch_optional(&self.write).await?;
                if let Some(row) = claimed {
                    return Ok(Some(ScanJob {
                        scope,
                        digest,
                        rematch: is_rematch,
                        attempts: row.try_get(0)?,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// A stored copy of the manifest a scan is about (sealed as stored) with its media type,
    /// from any repository of the scope that holds it; `None` when none does any more.
    pub async fn scan_manifest(
        &self,
        scope: &str,
        digest: &str,
    ) -> Result<Option<(Vec<u8>, String)>> {
        let sql = format!(
            "SELECT m.content, m.media_type FROM {IN_SCOPE} \
             WHERE m.digest = $1 AND COALESCE(g.key_id, '') = $2 LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(digest)
            .bind(scope)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Forgets a scan and its findings (its image is gone).
    pub async fn drop_scan(&self, scope: &str, digest: &str) -> Result<()> {
        let (scope, digest) = (scope.to_string(), digest.to_string());
        self.transaction(move |tx| {
            Box::pin(async move {
                for table in ["scan_findings", "scans"] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE scope = $1 AND digest = $2"
                    ))
                    .bind(&scope)
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Gives a claimed scan back to the queue (its node could not finish it for now).
    pub async fn release_scan(&self, scope: &str, digest: &str) -> Result<()> {
        sqlx::query("UPDATE scans SET claimed_at = NULL WHERE scope = $1 AND digest = $2")
            .bind(scope)
            .bind(digest)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Writes a scan's outcome: its findings replace the previous ones, and the claim ends.
    pub async fn finish_scan(&self, scope: &str, digest: &str, outcome: ScanOutcome) -> Result<()> {
        let (scope, digest) = (scope.to_string(), digest.to_string());
        self.transaction(move |tx| {
            Box::pin(async move {
                sqlx::query("DELETE FROM scan_findings WHERE scope = $1 AND digest = $2")
                    .bind(&scope)
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await?;
                // One finding per (ID, package, installed version): a package found twice (two
                // paths) is reported once.
                let mut seen = std::collections::HashSet::new();
                let findings: Vec<&FindingRow> = outcome
                    .findings
                    .iter()
                    .filter(|f| seen.insert((&f.vuln_id, &f.package, &f.installed)))
                    .collect();
                for chunk in findings.chunks(FINDING_ROWS) {
                    let mut args = AnyArguments::default();
                    for f in chunk {
                        bind(&mut args, scope.clone());
                        bind(&mut args, digest.clone());
                        bind(&mut args, f.vuln_id.clone());
                        bind(&mut args, f.package.clone());
                        bind(&mut args, f.installed.clone());
                        bind(&mut args, f.fixed.clone());
                        bind(&mut args, f.severity.clone());
                        bind(&mut args, f.rank);
                        bind(&mut args, f.score);
                        bind(&mut args, format!(" {} ", f.ids.join(" ")));
                        bind(&mut args, f.doc.clone());
                    }
                    let sql = format!(
                        "INSERT INTO scan_findings (scope, digest, vuln_id, package, installed, \
                         fixed, severity, rank, score, ids, doc) VALUES {}",
                        values(chunk.len(), 11)
                    );
                    sqlx::query_with(&sql, args).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "UPDATE scans SET status = $3, reason = $4, scanned_at = $5, db_version = $6, \
                     os = $7, packages = $8, partial = $9, highest = $10, summary = $11, \
                     claimed_at = NULL WHERE scope = $1 AND digest = $2",
                )
                .bind(&scope)
                .bind(&digest)
                .bind(&outcome.status)
                .bind(&outcome.reason)
                .bind(now_millis())
                .bind(outcome.db_version)
                .bind(&outcome.os)
                .bind(outcome.packages)
                .bind(i64::from(outcome.partial))
                .bind(&outcome.highest)
                .bind(&outcome.summary)
                .execute(&mut *tx)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The scans of these digests in a scope.
    pub async fn scans_of(&self, scope: &str, digests: &[String]) -> Result<Vec<ScanRecord>> {
        let mut out = Vec::new();
        for chunk in digests.chunks(200) {
            let mut args = AnyArguments::default();
            bind(&mut args, scope.to_string());
            for d in chunk {
                bind(&mut args, d.clone());
            }
            let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {SCAN_COLUMNS} FROM scans WHERE scope = $1 AND digest IN ({})",
                list.join(", ")
            );
            for r in sqlx::query_with(&sql, args).fetch_all(&self.read).await? {
                out.push(scan_record(&r)?);
            }
        }
        Ok(out)
    }

    /// One page of a scan's findings, most severe first; and whether more follow.
    pub async fn scan_findings(
        &self,
        scope: &str,
        digest: &str,
        filter: &FindingFilter,
        after: Option<&FindingCursor>,
        limit: i64,
    ) -> Result<(Vec<FindingRow>, bool)> {
        let mut args = AnyArguments::default();
        bind(&mut args, scope.to_string());
        bind(&mut args, digest.to_string());
        let mut sql = String::from(
            "SELECT vuln_id, package, installed, fixed, severity, rank, score, ids, doc \
             FROM scan_findings WHERE scope = $1 AND digest = $2",
        );
        let mut n = 2;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if !filter.severities.is_empty() {
            let list: Vec<String> = filter
                .severities
                .iter()
                .map(|s| {
                    bind(&mut args, s.clone());
                    param()
                })
                .collect();
            sql.push_str(&format!(" AND severity IN ({})", list.join(", ")));
        }
        if filter.fixable {
            sql.push_str(" AND fixed IS NOT NULL");
        }
        if let Some((rank, id, package, installed)) = after {
            bind(&mut args, *rank);
            bind(&mut args, id.clone());
            bind(&mut args, package.clone());
            bind(&mut args, installed.clone());
            let (r, i, p, v) = (param(), param(), param(), param());
            sql.push_str(&format!(
                " AND (rank < {r} OR (rank = {r} AND (vuln_id > {i} OR (vuln_id = {i} \
                 AND (package > {p} OR (package = {p} AND installed > {v}))))))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY rank DESC, vuln_id, package, installed LIMIT {}",
            limit + 1
        ));
        let rows = sqlx::query_with(&sql, args).fetch_all(&self.read).await?;
        crate::page(&rows, limit, finding_row)
    }
}

fn finding_row(r: &sqlx::any::AnyRow) -> Result<FindingRow> {
    let ids: String = r.try_get(7)?;
    Ok(FindingRow {
        vuln_id: r.try_get(0)?,
        package: r.try_get(1)?,
        installed: r.try_get(2)?,
        fixed: r.try_get(3)?,
        severity: r.try_get(4)?,
        rank: r.try_get(5)?,
        score: r.try_get(6)?,
        ids: ids.split_whitespace().map(str::to_string).collect(),
        doc: r.try_get(8)?,
    })
}

/// A manifest `m` that no index of its repository lists: images of an index are shown under it.
const NOT_A_CHILD: &str = "NOT EXISTS (SELECT 1 FROM manifest_references mr \
     JOIN manifests p ON p.id = mr.manifest_id WHERE p.repository_id = m.repository_id \
     AND mr.kind = 'manifest' AND mr.digest = m.digest)";

/// An artifact of a repository, as its listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactInfo {
    pub id: i64,
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: i64,
    pub pushed_at: i64,
    pub pulled_at: Option<i64>,
    pub tags: Vec<String>,
    /// For an index: the digests of its images.
    pub children: Vec<String>,
}

/// An artifact a vulnerability was found in.
#[derive(Debug, Clone, PartialEq)]
pub struct AffectedArtifact {
    pub repository: String,
    pub digest: String,
    pub package: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub severity: String,
    pub vuln_id: String,
}

impl Meta {
    /// Whether a registry has a repository of this name.
    pub async fn repository_exists(&self, registry_id: i64, name: &str) -> Result<bool> {
        Ok(
            crate::registries::repository_id(&self.read, registry_id, name)
                .await?
                .is_some(),
        )
    }

    /// One page of a repository's artifacts, newest first (by id; `after` is the last id of
    /// the page before). Images of an index are not listed on their own: their index is.
    pub async fn list_artifacts(
        &self,
        registry_id: i64,
        repository: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<ArtifactInfo>, bool)> {
        let sql = format!(
            "SELECT m.id, m.digest, m.media_type, m.artifact_type, m.size, m.pushed_at, \
             m.pulled_at FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.registry_id = $1 AND r.name = $2 AND m.id < $3 AND {NOT_A_CHILD} \
             ORDER BY m.id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(registry_id)
            .bind(repository)
            .bind(after.unwrap_or(i64::MAX))
            .bind(limit.saturating_add(1))
            .fetch_all(&self.read)
            .await?;
        let (mut items, more) = crate::page(&rows, limit, |r| {
            Ok(ArtifactInfo {
                id: r.try_get(0)?,
                digest: r.try_get(1)?,
                media_type: r.try_get(2)?,
                artifact_type: r.try_get(3)?,
                size: r.try_get(4)?,
                pushed_at: r.try_get(5)?,
                pulled_at: r.try_get(6)?,
                tags: Vec::new(),
                children: Vec::new(),
            })
        })?;
        if items.is_empty() {
            return Ok((items, more));
        }
        let ids: Vec<i64> = items.iter().map(|a| a.id).collect();
        let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let list = list.join(", ");
        for (sql, is_tag) in [
            (
                format!("SELECT manifest_id, name FROM tags WHERE manifest_id IN ({list}) ORDER BY name"),
                true,
            ),
            (
                format!(
                    "SELECT manifest_id, digest FROM manifest_references \
                     WHERE kind = 'manifest' AND manifest_id IN ({list}) ORDER BY digest"
                ),
                false,
            ),
        ] {
            let mut args = AnyArguments::default();
            for id in &ids {
                bind(&mut args, *id);
            }
            for r in sqlx::query_with(&sql, args).fetch_all(&self.read).await? {
                let (id, value): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
                if let Some(a) = items.iter_mut().find(|a| a.id == id) {
                    if is_tag {
                        a.tags.push(value);
                    } else {
                        a.children.push(value);
                    }
                }
            }
        }
        Ok((items, more))
    }

    /// The most recently pushed artifact of each repository named (no referrers: a signature
    /// pushed after an image is not the image), with its images if it is an index.
    pub async fn latest_artifacts(
        &self,
        registry_id: i64,
        repositories: &[String],
    ) -> Result<Vec<(String, String, Vec<String>)>> {
        let mut out = Vec::new();
        for name in repositories {
            let sql = format!(
                "SELECT m.id, m.digest FROM manifests m JOIN repositories r \
                 ON r.id = m.repository_id WHERE r.registry_id = $1 AND r.name = $2 \
                 AND m.subject IS NULL AND {NOT_A_CHILD} \
                 ORDER BY m.pushed_at DESC, m.id DESC LIMIT 1"
            );
            let row = sqlx::query(&sql)
                .bind(registry_id)
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
            let Some(row) = row else { continue };
            let (id, digest): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            let children = sqlx::query(
                "SELECT digest FROM manifest_references WHERE manifest_id = $1 \
                 AND kind = 'manifest' ORDER BY digest",
            )
            .bind(id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<Vec<String>, _>>()?;
            out.push((name.clone(), digest, children));
        }
        Ok(out)
    }

    /// Where a vulnerability (by its ID or any alias) was found in a registry's images, one
    /// row per (repository, image, package); `offset` rows skipped, and whether more follow.
    pub async fn affected_artifacts(
        &self,
        registry_id: i64,
        scope: &str,
        id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AffectedArtifact>, bool)> {
        let rows = sqlx::query(
            "SELECT r.name, m.digest, f.package, f.installed, f.fixed, f.severity, f.vuln_id \
             FROM scan_findings f JOIN manifests m ON m.digest = f.digest \
             JOIN repositories r ON r.id = m.repository_id \
             WHERE f.scope = $1 AND r.registry_id = $2 AND (f.vuln_id = $3 OR f.ids LIKE $4 ESCAPE '\\') \
             ORDER BY r.name, m.digest, f.package, f.installed LIMIT $5 OFFSET $6",
        )
        .bind(scope)
        .bind(registry_id)
        .bind(id)
        .bind(format!(
            "% {} %",
            id.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
        ))
        .bind(limit.saturating_add(1))
        .bind(offset)
        .fetch_all(&self.read)
        .await?;
        crate::page(&rows, limit, |r| {
            Ok(AffectedArtifact {
                repository: r.try_get(0)?,
                digest: r.try_get(1)?,
                package: r.try_get(2)?,
                installed: r.try_get(3)?,
                fixed: r.try_get(4)?,
                severity: r.try_get(5)?,
                vuln_id: r.try_get(6)?,
            })
        })
    }
}
