//! What scans found, per artifact: `/api/v1/registries/{name}/artifacts/{repository}` lists a
//! repository's artifacts, `.../{repository}/-/{reference}` is one of them. Repository names
//! may hold '/', so the reference follows `/-/`, which no repository name contains (a path
//! component starts with a letter or digit).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_auth::Permission;
use wharf_meta::{FindingCursor, FindingFilter, Registry, ScanRecord, StoredManifest};
use wharf_oci::{Manifest, Reference, RepositoryName};
use wharf_scan::cvss::Severity;
use wharf_scan::matcher::Finding;

use super::auth::Admin;
use super::problem::ApiQuery;
use super::registries::find;
use super::{page_limit, rfc3339, Problem};
use crate::AppState;

/// Where a scan stands, as the views show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScanView {
    /// `pending`, `scanned` or `unknown`.
    pub status: String,
    /// Why the status is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the image was last scanned or matched; absent while a scan is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned_at: Option<String>,
    /// The highest severity among the findings; absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest_severity: Option<String>,
    /// Findings per severity.
    pub summary: BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<i64>,
    /// Some layer or file could not be read: the package list may be incomplete.
    pub partial: bool,
}

impl ScanView {
    fn of(status: &str, reason: Option<String>) -> ScanView {
        ScanView {
            status: status.into(),
            reason,
            scanned_at: None,
            highest_severity: None,
            summary: BTreeMap::new(),
            os: None,
            packages: None,
            partial: false,
        }
    }

    fn from_record(r: &ScanRecord) -> ScanView {
        ScanView {
            status: r.status.clone(),
            reason: r.reason.clone(),
            scanned_at: (r.status != "pending")
                .then_some(r.scanned_at)
                .flatten()
                .map(rfc3339),
            highest_severity: r.highest.clone(),
            summary: r
                .summary
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default(),
            os: r.os.clone(),
            packages: r.packages,
            partial: r.partial,
        }
    }

    /// An index's view: what its images' scans say together.
    fn combined(children: &[&ScanView]) -> ScanView {
        let status = if children.iter().any(|c| c.status == "pending") {
            "pending"
        } else if children.iter().any(|c| c.status == "scanned") {
            "scanned"
        } else {
            "unknown"
        };
        let mut view = ScanView::of(status, None);
        if status == "unknown" {
            view.reason = Some(match children.first().and_then(|c| c.reason.clone()) {
                Some(r) if children.len() == 1 => r,
                _ => "none of the index's images could be scanned".into(),
            });
        }
        for c in children {
            for (s, n) in &c.summary {
                *view.summary.entry(s.clone()).or_default() += n;
            }
            view.partial |= c.partial;
        }
        view.highest_severity = children
            .iter()
            .filter_map(|c| c.highest_severity.as_deref())
            .filter_map(|s| s.parse::<Severity>().ok())
            .max()
            .map(|s| s.as_str().to_string());
        if status != "pending" {
            view.scanned_at = children.iter().filter_map(|c| c.scanned_at.clone()).max();
        }
        view
    }
}

/// One image of an index.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformView {
    pub digest: String,
    /// `os/architecture[/variant]`, when the index says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub scan: ScanView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactView {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    /// For an index: the scan of all its images together.
    pub scan: ScanView,
    /// For an index: its images, each with its scan.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformView>,
    /// Manifests whose subject it is: signatures, SBOMs, attestations.
    pub referrers: Vec<ReferrerView>,
}

/// A manifest that refers to an artifact (its subject).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferrerView {
    pub digest: String,
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub size: i64,
}

/// A vulnerability found in a package of an image.
#[derive(Debug, Serialize, ToSchema)]
pub struct FindingView {
    /// The CVE when there is one, else the advisory's own ID.
    pub id: String,
    pub aliases: Vec<String>,
    pub package: String,
    /// The source package advisories name, when it is not the package itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_package: Option<String>,
    pub installed: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    pub fixable: bool,
    /// The highest CVSS score any source gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub severity: String,
    /// Package manager or language: dpkg, apk, rpm, python, npm, go, cargo.
    pub kind: String,
    pub ecosystem: String,
    /// Where the package was found in the image.
    pub path: String,
    /// The advisory sources that name it.
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FindingPage {
    pub repository: String,
    pub digest: String,
    pub scan: ScanView,
    pub items: Vec<FindingView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingQuery {
    /// Only these severities, comma-separated: critical, high, medium, low, none, unknown.
    pub severity: Option<String>,
    /// Only vulnerabilities with a fixed version.
    pub fixable: Option<bool>,
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
    /// Of an SBOM only (documented there): spdx or cyclonedx.
    #[param(ignore)]
    pub format: Option<String>,
}

/// `GET /api/v1/registries/{name}/artifacts/{path}`: the artifact views, by what follows `/-/`.
pub async fn repository_resource(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, path)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<FindingQuery>,
) -> Result<Response, Problem> {
    admin.require(Permission::RegistryRead)?;
    let no_endpoint = || Problem::not_found("no such API endpoint");
    let split = path
        .split_once("/-/")
        .map(|(repository, rest)| (repository, rest.split('/').collect::<Vec<&str>>()));
    let sbom = matches!(&split, Some((_, parts)) if matches!(parts[..], [_, "sbom"]));
    if q.format.is_some() && !sbom {
        return Err(Problem::bad_request(
            "format= is for an SBOM (.../-/{reference}/sbom) only",
        ));
    }
    let Some((repository, parts)) = split else {
        return Ok(list_artifacts(&state, &name, &path, q)
            .await?
            .into_response());
    };
    match parts.as_slice() {
        [reference] => Ok(artifact(&state, &name, repository, reference)
            .await?
            .into_response()),
        [reference, "sbom"] => {
            if q.severity.is_some() || q.fixable.is_some() || q.limit.is_some() || q.after.is_some()
            {
                return Err(Problem::bad_request(
                    "an SBOM takes only format= (severity, fixable, limit and after are for lists)",
                ));
            }
            let format = super::sbom::parse_format(q.format.as_deref())?;
            super::sbom::export(&state, &name, repository, reference, format).await
        }
        [reference, "vulnerabilities"] => {
            Ok(vulnerabilities(&state, &name, repository, reference, q)
                .await?
                .into_response())
        }
        _ => Err(no_endpoint()),
    }
}

/// The digest and scan of the image `t` names; an index is refused, with its images listed
/// (each has its own scan).
pub(crate) async fn image_scan(
    state: &AppState,
    t: &Target,
) -> Result<(String, ScanView), Problem> {
    let images = children(&t.manifest);
    if !images.is_empty() {
        let list: Vec<String> = images
            .iter()
            .map(|(d, p)| match p {
                Some(p) => format!("{d} ({p})"),
                None => d.clone(),
            })
            .collect();
        return Err(Problem::conflict(format!(
            "{} is an index; ask for one of its images: {}",
            t.manifest.digest,
            list.join(", ")
        )));
    }
    let digest = t.manifest.digest.clone();
    let scan = scan_views(
        state,
        &t.registry,
        t.repository.as_str(),
        std::slice::from_ref(&digest),
    )
    .await?
    .remove(0);
    Ok((digest, scan))
}

/// The registry, repository and manifest a view is about.
pub(crate) struct Target {
    pub registry: Registry,
    pub repository: RepositoryName,
    pub manifest: StoredManifest,
}

pub(crate) async fn target(
    state: &AppState,
    name: &str,
    repository: &str,
    reference: &str,
) -> Result<Target, Problem> {
    let repository =
        RepositoryName::parse(repository).map_err(|e| Problem::bad_request(e.to_string()))?;
    let reference = Reference::parse(reference).map_err(|e| Problem::bad_request(e.to_string()))?;
    let registry = find(state, name).await?;
    let scope = crate::service::Scope {
        registry_id: registry.id,
        key_id: registry.key_id.as_deref(),
        scanning: registry.scanning,
        repository: repository.as_str(),
        actor: String::new(),
    };
    let manifest = state
        .service()
        .manifest(&scope, &reference)
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "repository {:?} of registry {name:?} has no artifact {reference}",
                repository.as_str()
            ))
        })?;
    Ok(Target {
        registry,
        repository,
        manifest,
    })
}

/// The scans of `digests`, as views, in their order; an image with no scan row is pending
/// (queued moments from now) when the registry scans, and `unknown` when it does not.
pub(crate) async fn scan_views(
    state: &AppState,
    registry: &Registry,
    repository: &str,
    digests: &[String],
) -> Result<Vec<ScanView>, Problem> {
    if !registry.scanning {
        let off = || ScanView::of("unknown", Some("scanning is off in this registry".into()));
        return Ok(digests.iter().map(|_| off()).collect());
    }
    if !wharf_meta::SCANNABLE_NAME.contains(&repository.len()) {
        let reason = "the repository name is shorter than 2 or longer than 255 characters";
        return Ok(digests
            .iter()
            .map(|_| ScanView::of("unknown", Some(reason.into())))
            .collect());
    }
    let scope = registry.key_id.clone().unwrap_or_default();
    let records = state.meta.scans_of(&scope, digests).await?;
    Ok(digests
        .iter()
        .map(|d| match records.iter().find(|r| &r.digest == d) {
            Some(r) => ScanView::from_record(r),
            None => ScanView::of("pending", None),
        })
        .collect())
}

fn platform_text(p: &serde_json::Value) -> Option<String> {
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    Some(match p.get("variant").and_then(|v| v.as_str()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// The images of an index (digest and platform); empty for an image.
pub(crate) fn children(m: &StoredManifest) -> Vec<(String, Option<String>)> {
    if !wharf_oci::media::is_index(&m.media_type) {
        return Vec::new();
    }
    Manifest::parse(Some(&m.media_type), &m.content)
        .map(|parsed| {
            parsed
                .manifests
                .iter()
                .map(|d| {
                    (
                        d.digest.to_string(),
                        d.platform.as_ref().and_then(platform_text),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/artifacts/{repository}/-/{reference}",
    tag = "scanning",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'"),
        ("reference" = String, Path, description = "A tag or a digest"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ArtifactView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn artifact(
    state: &AppState,
    name: &str,
    repository: &str,
    reference: &str,
) -> Result<Json<ArtifactView>, Problem> {
    let t = target(state, name, repository, reference).await?;
    let images = children(&t.manifest);
    let (scan, platforms) = if images.is_empty() {
        let mut views = scan_views(
            state,
            &t.registry,
            t.repository.as_str(),
            std::slice::from_ref(&t.manifest.digest),
        )
        .await?;
        (views.remove(0), Vec::new())
    } else {
        let digests: Vec<String> = images.iter().map(|(d, _)| d.clone()).collect();
        let views = scan_views(state, &t.registry, t.repository.as_str(), &digests).await?;
        let combined = ScanView::combined(&views.iter().collect::<Vec<_>>());
        let platforms = images
            .into_iter()
            .zip(views)
            .map(|((digest, platform), scan)| PlatformView {
                digest,
                platform,
                scan,
            })
            .collect();
        (combined, platforms)
    };
    let referrers = state
        .meta
        .referrers(
            t.registry.id,
            t.repository.as_str(),
            &t.manifest.digest,
            None,
        )
        .await?
        .into_iter()
        .map(|r| ReferrerView {
            digest: r.digest,
            media_type: r.media_type,
            artifact_type: r.artifact_type,
            size: r.size,
        })
        .collect();
    Ok(Json(ArtifactView {
        repository: t.repository.as_str().to_string(),
        digest: t.manifest.digest.clone(),
        media_type: t.manifest.media_type.clone(),
        scan,
        platforms,
        referrers,
    }))
}

fn encode_cursor(c: &FindingCursor) -> String {
    B64.encode(serde_json::to_vec(c).unwrap_or_default())
}

/// `after` that no page of this API gave.
fn bad_cursor(after: &str) -> Problem {
    Problem::bad_request(format!(
        "after {after:?} is not a page cursor this API gave"
    ))
}

fn decode_cursor(s: &str) -> Result<FindingCursor, Problem> {
    B64.decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad_cursor(s))
}

/// Parses `critical,high`, naming what is not a severity.
fn severities(list: &str) -> Result<Vec<String>, Problem> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.to_ascii_lowercase()
                .parse::<Severity>()
                .map(|v| v.as_str().to_string())
                .map_err(|_| {
                    Problem::bad_request(format!(
                        "unknown severity {s:?}: use critical, high, medium, low, none or unknown"
                    ))
                })
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/api/v1/registries/{name}/artifacts/{repository}/-/{reference}/vulnerabilities",
    tag = "scanning",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'"),
        ("reference" = String, Path, description = "A tag or a digest of an image (not an index)"),
        FindingQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = FindingPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn vulnerabilities(
    state: &AppState,
    name: &str,
    repository: &str,
    reference: &str,
    q: FindingQuery,
) -> Result<Json<FindingPage>, Problem> {
    let limit = page_limit(q.limit)?;
    let filter = FindingFilter {
        severities: severities(q.severity.as_deref().unwrap_or(""))?,
        fixable: q.fixable.unwrap_or(false),
    };
    let after = q.after.as_deref().map(decode_cursor).transpose()?;
    let t = target(state, name, repository, reference).await?;
    let (digest, scan) = image_scan(state, &t).await?;
    let scope = t.registry.key_id.clone().unwrap_or_default();
    let (rows, more) = if scan.status == "scanned" {
        state
            .meta
            .scan_findings(&scope, &digest, &filter, after.as_ref(), limit)
            .await?
    } else {
        (Vec::new(), false)
    };
    let next = more.then(|| rows.last()).flatten().map(|r| {
        encode_cursor(&(
            r.rank,
            r.vuln_id.clone(),
            r.package.clone(),
            r.installed.clone(),
        ))
    });
    let items = rows
        .into_iter()
        .map(|r| {
            let f: Option<Finding> = serde_json::from_str(&r.doc).ok();
            FindingView {
                id: r.vuln_id,
                aliases: f.as_ref().map(|f| f.aliases.clone()).unwrap_or_default(),
                package: r.package,
                source_package: f.as_ref().and_then(|f| f.source_package.clone()),
                installed: r.installed,
                fixable: r.fixed.is_some(),
                fixed: r.fixed,
                score: r.score,
                severity: r.severity,
                kind: f
                    .as_ref()
                    .map(|f| f.kind.as_str().to_string())
                    .unwrap_or_default(),
                ecosystem: f.as_ref().map(|f| f.ecosystem.clone()).unwrap_or_default(),
                path: f.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
                sources: f.as_ref().map(|f| f.sources.clone()).unwrap_or_default(),
                summary: f.and_then(|f| f.summary),
            }
        })
        .collect();
    Ok(Json(FindingPage {
        repository: t.repository.as_str().to_string(),
        digest,
        scan,
        items,
        next,
    }))
}

/// An artifact as a repository's listing shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactSummary {
    pub digest: String,
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub size: i64,
    pub tags: Vec<String>,
    pub pushed_at: String,
    /// When a client last pulled it (to the minute); absent if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled_at: Option<String>,
    /// For an index: its images' scans together.
    pub scan: ScanView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// The scans of images and indexes (each with its images' digests) of one registry: an image
/// by its own scan, an index by its images' together.
pub(crate) async fn artifact_scans(
    state: &AppState,
    registry: &Registry,
    repository: &str,
    artifacts: &[(String, Vec<String>)],
) -> Result<Vec<ScanView>, Problem> {
    let digests: Vec<String> = artifacts
        .iter()
        .flat_map(|(d, children)| {
            if children.is_empty() {
                vec![d.clone()]
            } else {
                children.clone()
            }
        })
        .collect();
    let views = scan_views(state, registry, repository, &digests).await?;
    let mut at = 0;
    Ok(artifacts
        .iter()
        .map(|(_, children)| {
            let n = children.len().max(1);
            let mine = &views[at..at + n];
            at += n;
            if children.is_empty() {
                mine[0].clone()
            } else {
                ScanView::combined(&mine.iter().collect::<Vec<_>>())
            }
        })
        .collect())
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/artifacts/{repository}",
    tag = "scanning",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'"),
        ("limit" = Option<i64>, Query, description = "Page size, 1–100 (default 50)"),
        ("after" = Option<String>, Query, description = "The `next` of the page before"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ArtifactPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_artifacts(
    state: &AppState,
    name: &str,
    repository: &str,
    q: FindingQuery,
) -> Result<Json<ArtifactPage>, Problem> {
    if q.severity.is_some() || q.fixable.is_some() {
        return Err(Problem::bad_request(
            "severity and fixable filter an artifact's vulnerabilities, not the artifact list",
        ));
    }
    let limit = page_limit(q.limit)?;
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| bad_cursor(a))?),
    };
    let repository =
        RepositoryName::parse(repository).map_err(|e| Problem::bad_request(e.to_string()))?;
    let registry = find(state, name).await?;
    let (items, more) = state
        .meta
        .list_artifacts(registry.id, repository.as_str(), after, limit)
        .await?;
    if items.is_empty()
        && after.is_none()
        && !state
            .meta
            .repository_exists(registry.id, repository.as_str())
            .await?
    {
        return Err(Problem::not_found(format!(
            "registry {name:?} has no repository {:?}",
            repository.as_str()
        )));
    }
    let artifacts: Vec<(String, Vec<String>)> = items
        .iter()
        .map(|a| (a.digest.clone(), a.children.clone()))
        .collect();
    let scans = artifact_scans(state, &registry, repository.as_str(), &artifacts).await?;
    let next = more
        .then(|| items.last().map(|a| a.id.to_string()))
        .flatten();
    let items = items
        .into_iter()
        .zip(scans)
        .map(|(a, scan)| ArtifactSummary {
            digest: a.digest,
            media_type: a.media_type,
            artifact_type: a.artifact_type,
            size: a.size,
            tags: a.tags,
            pushed_at: rfc3339(a.pushed_at),
            pulled_at: a.pulled_at.map(rfc3339),
            scan,
        })
        .collect();
    Ok(Json(ArtifactPage { items, next }))
}

/// An image a vulnerability was found in, with the package.
#[derive(Debug, Serialize, ToSchema)]
pub struct AffectedView {
    pub repository: String,
    pub digest: String,
    pub package: String,
    pub installed: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    pub severity: String,
    /// The ID the finding is reported under (the one asked for may be an alias of it).
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AffectedPage {
    pub items: Vec<AffectedView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AffectedQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// A vulnerability ID or alias as a path gives it, trimmed; refused when it cannot be one.
pub(crate) fn check_vulnerability_id(id: &str) -> Result<&str, Problem> {
    let id = id.trim();
    if id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::bad_request(format!(
            "{id:?} is not a vulnerability ID (such as CVE-2024-1234 or GHSA-xxxx-xxxx-xxxx)"
        )));
    }
    Ok(id)
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/vulnerabilities/{id}", tag = "scanning",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("id" = String, Path, description = "A vulnerability ID (CVE-2024-1234) or any alias of it"),
        AffectedQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AffectedPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn affected(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AffectedQuery>,
) -> Result<Json<AffectedPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let limit = page_limit(q.limit)?;
    let id = check_vulnerability_id(&id)?;
    let offset = match q.after.as_deref() {
        None => 0,
        Some(a) => a
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad_cursor(a))?,
    };
    let registry = find(&state, &name).await?;
    let scope = registry.key_id.clone().unwrap_or_default();
    let (rows, more) = state
        .meta
        .affected_artifacts(registry.id, &scope, id, offset, limit)
        .await?;
    let next = more.then(|| (offset + rows.len() as i64).to_string());
    let items = rows
        .into_iter()
        .map(|r| AffectedView {
            repository: r.repository,
            digest: r.digest,
            package: r.package,
            installed: r.installed,
            fixed: r.fixed,
            severity: r.severity,
            id: r.vuln_id,
        })
        .collect();
    Ok(Json(AffectedPage { items, next }))
}
