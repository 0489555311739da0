//! The vulnerability database: its state and scheduled imports
//! (`/api/v1/system/vulndb[/imports]`), and what it knows of one vulnerability
//! (`/api/v1/vulnerabilities/{id}`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use wharf_auth::Permission;
use wharf_meta::{Meta, MetaError, SourceStatus, VulnDbState};
use wharf_scan::advisory::{Advisory, Score};

use super::auth::Admin;
use super::{rfc3339, Problem};
use crate::vulndb::RunReport;
use crate::AppState;

/// The vulnerability database scans match against.
#[derive(Debug, Serialize, ToSchema)]
pub struct VulnDbView {
    /// Moves on with every import that changes something; results matched against an older
    /// version are matched again.
    pub version: i64,
    /// When an import last changed it; absent if none ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    pub advisories: i64,
    /// CVSS scores (of the NVD and vulnrichment tables).
    pub scores: i64,
    /// What was imported, per source.
    pub sources: Vec<SourceView>,
    pub schedule: ScheduleView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    /// The source records are stored under (a file's name without its extensions).
    pub source: String,
    /// `osv`, `alpine-secdb` or `scores`.
    pub kind: String,
    /// The file or URL last imported.
    pub location: String,
    pub records: i64,
    /// The newest modification date among the source's advisories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
    pub imported_at: String,
}

impl SourceView {
    pub fn of(s: SourceStatus) -> SourceView {
        SourceView {
            source: s.source,
            kind: s.kind,
            location: s.file,
            records: s.records,
            newest: s.newest,
            imported_at: rfc3339(s.imported_at),
        }
    }
}

/// Scheduled imports: the sources this server is configured with and the last run (of any
/// node).
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Files, directories and URLs imported on the schedule (`--vulndb-source`); empty: imports
    /// are left to `wharf vulndb import`.
    pub sources: Vec<String>,
    pub interval_seconds: u64,
    /// A node is importing now.
    pub running: bool,
    /// An import was asked for ahead of the schedule at this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRunView>,
    /// When the next run is due; absent without sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastRunView {
    pub started_at: String,
    /// Absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Whether it changed the database.
    pub changed: bool,
    /// What each file or URL gave.
    pub files: Vec<crate::vulndb::FileReport>,
}

/// The database's state and the schedule, as `wharf vulndb status` and the API show them.
pub async fn status(
    meta: &Meta,
    configured: &[String],
    interval: std::time::Duration,
) -> Result<VulnDbView, MetaError> {
    let state: VulnDbState = meta.vuln_db_state().await?;
    let sources = meta.vuln_sources().await?;
    let report: Option<RunReport> = state
        .run_report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    // A claim not refreshed for that long belongs to a node that stopped: nothing runs.
    let stale_before = wharf_meta::now_millis() - crate::vulndb::RUN_STALE.as_millis() as i64;
    let running = state.run_claimed_at.is_some_and(|c| c >= stale_before);
    let last_run = state.run_started_at.map(|started| {
        // The report belongs to the run that started last only once it finished.
        let finished = state.run_finished_at.filter(|f| *f >= started && !running);
        let report = finished.and(report).unwrap_or_default();
        LastRunView {
            started_at: rfc3339(started),
            finished_at: finished.map(rfc3339),
            changed: report.changed,
            files: report.files,
        }
    });
    let requested = state
        .run_requested_at
        .filter(|r| state.run_started_at.is_none_or(|s| *r >= s));
    let next_run_at = (!configured.is_empty()).then(|| {
        let due = state
            .run_started_at
            .map_or(0, |s| s + interval.as_millis() as i64);
        let now = wharf_meta::now_millis();
        rfc3339(if requested.is_some() {
            now
        } else {
            due.max(now)
        })
    });
    Ok(VulnDbView {
        version: state.version,
        changed_at: (state.changed_at > 0).then(|| rfc3339(state.changed_at)),
        advisories: state.advisories,
        scores: state.scores,
        sources: sources.into_iter().map(SourceView::of).collect(),
        schedule: ScheduleView {
            sources: configured.to_vec(),
            interval_seconds: interval.as_secs(),
            running,
            requested_at: requested.map(rfc3339),
            last_run,
            next_run_at,
        },
    })
}

#[utoipa::path(
    get, path = "/api/v1/system/vulndb", tag = "scanning",
    security(("bearer" = [])),
    responses(
        (status = 200, body = VulnDbView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
/// The vulnerability database: version, counts, imported sources and the scheduled imports.
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<VulnDbView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let configured: Vec<String> = state
        .settings
        .vulndb_sources
        .iter()
        .map(|s| s.as_str())
        .collect();
    Ok(Json(
        status(&state.meta, &configured, state.settings.vulndb_interval).await?,
    ))
}

/// An import asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRequested {
    pub requested_at: String,
}

#[utoipa::path(
    post, path = "/api/v1/system/vulndb/imports", tag = "scanning",
    security(("bearer" = [])),
    responses(
        (status = 202, body = ImportRequested, description = "Asked for; follow it at /api/v1/system/vulndb"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "No sources are configured"),
    )
)]
/// Imports the configured sources now instead of at the next scheduled time (after the run
/// going on, if one is).
pub async fn import(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<(StatusCode, Json<ImportRequested>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    if state.settings.vulndb_sources.is_empty() {
        return Err(Problem::conflict(
            "no vulnerability sources are configured: start wharf serve with --vulndb-source \
             (files, directories or http(s) URLs), or import with `wharf vulndb import`",
        ));
    }
    let at = state.meta.request_vuln_import().await?;
    state.vulndb_wakeup.notify_waiters();
    super::audit_change(&state, &admin, "vulndb.import", None, None, None).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(ImportRequested {
            requested_at: rfc3339(at),
        }),
    ))
}

/// What the database knows of one vulnerability, from every source.
#[derive(Debug, Serialize, ToSchema)]
pub struct VulnerabilityView {
    /// The ID asked for.
    pub id: String,
    /// The other IDs it is known by (CVE, GHSA, distribution advisories...).
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// The severity findings of it get: the highest CVSS v3/v4 score of any source (v2 where
    /// there is no other).
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Scores by source, with their vectors.
    pub scores: Vec<ScoreView>,
    pub references: Vec<String>,
    /// The affected packages and the versions that fix them, per source.
    pub affected: Vec<AffectedView>,
    /// Where this comes from: each source with the advisory ID it gives.
    pub sources: Vec<AttributionView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreView {
    /// `nvd`, `vulnrichment`, or the advisory source that carries the vector.
    pub source: String,
    /// The ID scored (the vulnerability or one of its aliases).
    pub id: String,
    /// CVSS version: 2.0, 3.0, 3.1 or 4.0.
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub severity: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AffectedView {
    pub source: String,
    pub ecosystem: String,
    pub package: String,
    /// Versions that fix it; empty: no fix yet.
    pub fixed: Vec<String>,
    /// Versions named affected one by one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttributionView {
    pub source: String,
    /// `osv`, `alpine-secdb` or `scores`.
    pub kind: String,
    /// The ID the source gives it.
    pub advisory: String,
    /// Where the source was imported from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
}

/// Builds the view of `id` (an ID or an alias); `None` when no source knows it.
pub async fn vulnerability(meta: &Meta, id: &str) -> Result<Option<VulnerabilityView>, Problem> {
    let mut advisories = Vec::new();
    for (_, doc) in meta.advisories_named(id).await? {
        let a: Advisory = serde_json::from_str(&doc)
            .map_err(|e| Problem::internal("stored advisory is unreadable", e))?;
        advisories.push(a);
    }
    // Every name it goes by, the one asked for first.
    let mut names: Vec<String> = vec![id.to_string()];
    for a in &advisories {
        for n in std::iter::once(&a.id).chain(&a.aliases) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let stored = meta.scores_for(&names).await?;
    if advisories.is_empty() && stored.is_empty() {
        return Ok(None);
    }
    let kinds: BTreeMap<String, SourceStatus> = meta
        .vuln_sources()
        .await?
        .into_iter()
        .map(|s| (s.source.clone(), s))
        .collect();
    let scores: Vec<Score> = stored.into_iter().map(crate::scanning::score_of).collect();
    let vectors: Vec<String> = advisories.iter().flat_map(|a| a.cvss.clone()).collect();
    let (score, severity) = wharf_scan::matcher::rate(&names, &vectors, &scores);
    let mut score_views: Vec<ScoreView> = advisories
        .iter()
        .flat_map(|a| {
            a.cvss.iter().map(|v| {
                let score = wharf_scan::cvss::base_score(v).ok();
                ScoreView {
                    source: a.source.clone(),
                    id: a.id.clone(),
                    version: v.get(5..8).unwrap_or("").to_string(),
                    vector: Some(v.clone()),
                    score,
                    severity: wharf_scan::cvss::Severity::from_score(score)
                        .as_str()
                        .to_string(),
                }
            })
        })
        .collect();
    score_views.extend(scores.iter().map(|s| {
        ScoreView {
            source: s.source.clone(),
            id: s.cve.clone(),
            version: s.version.clone(),
            vector: s.vector.clone(),
            score: Some(s.score),
            severity: wharf_scan::cvss::Severity::from_score(Some(s.score))
                .as_str()
                .to_string(),
        }
    }));
    let first = |f: fn(&Advisory) -> Option<&String>| advisories.iter().find_map(f).cloned();
    let references: BTreeSet<String> = advisories
        .iter()
        .flat_map(|a| a.references.iter().cloned())
        .collect();
    let affected = advisories
        .iter()
        .flat_map(|a| {
            a.affected.iter().map(|aff| AffectedView {
                source: a.source.clone(),
                ecosystem: aff.ecosystem.clone(),
                package: aff.package.clone(),
                fixed: aff
                    .ranges
                    .iter()
                    .flat_map(|r| r.events.iter().filter_map(|e| e.fixed.clone()))
                    .collect(),
                versions: aff.versions.clone(),
            })
        })
        .collect();
    let mut sources: Vec<AttributionView> = advisories
        .iter()
        .map(|a| AttributionView {
            source: a.source.clone(),
            kind: kinds
                .get(&a.source)
                .map_or("osv".to_string(), |s| s.kind.clone()),
            advisory: a.id.clone(),
            location: kinds.get(&a.source).map(|s| s.file.clone()),
            withdrawn: a.withdrawn.clone(),
        })
        .collect();
    let scorers: BTreeSet<(&str, &str)> = scores
        .iter()
        .map(|s| (s.source.as_str(), s.cve.as_str()))
        .collect();
    sources.extend(scorers.into_iter().map(|(source, cve)| AttributionView {
        source: source.to_string(),
        kind: "scores".to_string(),
        advisory: cve.to_string(),
        location: kinds.get(source).map(|s| s.file.clone()),
        withdrawn: None,
    }));
    Ok(Some(VulnerabilityView {
        id: id.to_string(),
        aliases: names.into_iter().skip(1).collect(),
        summary: first(|a| a.summary.as_ref()),
        description: first(|a| a.details.as_ref()),
        published: first(|a| a.published.as_ref()),
        modified: advisories
            .iter()
            .map(|a| &a.modified)
            .filter(|m| !m.is_empty())
            .max()
            .cloned(),
        severity: severity.as_str().to_string(),
        score,
        scores: score_views,
        references: references.into_iter().collect(),
        affected,
        sources,
    }))
}

#[utoipa::path(
    get, path = "/api/v1/vulnerabilities/{id}", tag = "scanning",
    params(("id" = String, Path, description = "A vulnerability ID or alias, e.g. CVE-2024-3094 or GHSA-...")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = VulnerabilityView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
/// A vulnerability's details: description, aliases, scores by source with their vectors,
/// references, fixed versions, and the sources they come from.
pub async fn details(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<VulnerabilityView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let id = super::scans::check_vulnerability_id(&id)?;
    match vulnerability(&state.meta, id).await? {
        Some(v) => Ok(Json(v)),
        None => Err(Problem::not_found(format!(
            "no imported source knows vulnerability {id:?}"
        ))),
    }
}
