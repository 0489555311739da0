use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_auth::Permission;
use wharf_meta::{NewRegistry, Registry, RegistryChanges};
use wharf_oci::{RegistryName, RepositoryName};

use super::auth::Admin;
use super::problem::{ApiJson, ApiQuery, Problem};
use super::{page_limit, rfc3339};
use crate::AppState;

/// A registry (tenant) with its properties and usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistryView {
    pub name: String,
    pub location: String,
    /// The host name its clients push to and pull from.
    pub hostname: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    pub scanning: bool,
    pub gc_schedule: Option<GcSchedule>,
    /// When the garbage-collection schedule next falls (RFC 3339, UTC).
    pub gc_next_run: Option<String>,
    /// Whether garbage collection removes manifests that no tag, no index and no present
    /// subject refers to (on by default).
    pub gc_untagged: bool,
    /// Bytes of distinct blobs its repositories link plus its manifests (a blob shared by
    /// several of its repositories counts once).
    pub storage_bytes: i64,
    /// Storage the registry may use, in bytes; pushes beyond it are refused. `null`: no quota.
    pub quota_bytes: Option<i64>,
    pub repository_count: i64,
    pub artifact_count: i64,
    /// Requests per second each of its tokens may make (0: no limit); `null` takes the
    /// server's setting.
    pub rate_limit: Option<i64>,
    /// Maintenance mode: pushes and deletes are refused, pulls go on.
    pub read_only: bool,
    /// The id of the registry's own master key; `null` where the instance's key wraps its data
    /// keys.
    pub own_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// When garbage collection runs: weekdays plus a UTC time of day, or a cron expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GcSchedule {
    Weekly(WeeklySchedule),
    Cron(CronSchedule),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeeklySchedule {
    #[schema(min_items = 1)]
    pub weekdays: Vec<Weekday>,
    /// `HH:MM`, 24-hour, UTC.
    #[schema(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronSchedule {
    /// Five fields (minute hour day-of-month month day-of-week), UTC.
    #[schema(pattern = r"^[0-9*,/-]+( [0-9*,/-]+){4}$")]
    pub cron: String,
}

impl GcSchedule {
    /// The schedule as a cron expression (a weekly one is one too).
    fn cron(&self) -> String {
        match self {
            GcSchedule::Cron(CronSchedule { cron }) => cron.clone(),
            GcSchedule::Weekly(WeeklySchedule { weekdays, time }) => {
                let (hour, minute) = time.split_once(':').unwrap_or(("0", "0"));
                let days: Vec<String> = weekdays
                    .iter()
                    .map(|d| (*d as u8 + 1).rem_euclid(7).to_string())
                    .collect();
                format!("{minute} {hour} * * {}", days.join(","))
            }
        }
    }

    /// When the schedule next falls after `now`, in milliseconds.
    pub(crate) fn next_after(&self, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
        let cron: croner::Cron = self.cron().parse().ok()?;
        let next = cron.find_next_occurrence(&now, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// A stored schedule (JSON), if it reads as one.
    pub(crate) fn stored(text: &str) -> Option<GcSchedule> {
        serde_json::from_str(text).ok()
    }

    fn validate(&self) -> Result<(), Problem> {
        let bad = |m: &str| Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m));
        match self {
            GcSchedule::Cron(CronSchedule { cron }) => {
                if cron.split_whitespace().count() != 5 {
                    return bad("gc_schedule.cron must have five fields: minute hour day-of-month month day-of-week (UTC), e.g. 30 3 * * sun");
                }
                match cron.parse::<croner::Cron>() {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("gc_schedule.cron {cron:?} is not a valid cron expression: {e}"),
                    )),
                }
            }
            GcSchedule::Weekly(WeeklySchedule { weekdays, time }) => {
                if weekdays.is_empty() {
                    return bad("gc_schedule.weekdays must name at least one day");
                }
                let b = time.as_bytes();
                let valid_time = b.len() == 5
                    && b[2] == b':'
                    && b.iter()
                        .enumerate()
                        .all(|(i, c)| i == 2 || c.is_ascii_digit())
                    && time[..2].parse::<u8>().is_ok_and(|h| h < 24)
                    && time[3..].parse::<u8>().is_ok_and(|m| m < 60);
                if valid_time {
                    Ok(())
                } else {
                    bad("gc_schedule.time must be HH:MM in 24-hour UTC, e.g. 03:30")
                }
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRegistry {
    /// 3–63 characters of a-z, 0-9 and '-', starting with a letter, ending with a letter or
    /// digit. Fixed for the registry's life.
    #[schema(pattern = "^[a-z][a-z0-9-]{1,61}[a-z0-9]$")]
    pub name: String,
    /// One of the locations the server offers; fixed at creation. May be left out when the
    /// server offers only one.
    #[serde(default)]
    pub location: Option<String>,
    /// Scan every pushed image for vulnerabilities. Once on, it cannot be switched off.
    #[serde(default)]
    pub scanning: bool,
    #[serde(default)]
    pub gc_schedule: Option<GcSchedule>,
    /// A master key of the registry's own, so that its content and secrets are wrapped under a
    /// key no other registry shares, and deleting the registry destroys it: `generate`, or the
    /// key itself as 64 hex digits. Left out, the instance's key wraps them. Fixed at creation.
    #[serde(default)]
    pub own_key: Option<String>,
}

/// Changes to a registry. Absent fields stay as they are; `gc_schedule: null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRegistry {
    #[serde(default)]
    pub scanning: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<GcSchedule>)]
    pub gc_schedule: Option<Option<GcSchedule>>,
    /// Requests per second each of the registry's tokens may make, answered with 429 beyond
    /// it; 0 for no limit, `null` for the server's setting.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1000000)]
    pub rate_limit: Option<Option<i64>>,
    /// Maintenance mode: `true` refuses pushes and deletes (pulls go on), `false` ends it.
    pub read_only: Option<bool>,
    /// Whether garbage collection removes manifests nothing refers to.
    pub gc_untagged: Option<bool>,
    /// Storage the registry may use in bytes (at least 1); `null` removes the quota.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub quota_bytes: Option<Option<i64>>,
}

/// Tells a field sent as `null` (Some(None)) from one left out (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegistryPage {
    pub items: Vec<RegistryView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Start after this name.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryView {
    pub name: String,
    pub created_at: String,
    pub artifact_count: i64,
    pub tag_count: i64,
    pub storage_bytes: i64,
    /// Anyone may pull it without credentials.
    pub public: bool,
    /// The most recently pushed artifact (referrers such as signatures aside) and its scan;
    /// absent in an empty repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_artifact: Option<LatestArtifact>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatestArtifact {
    pub digest: String,
    /// Its scan (an index's: its images' together), with the highest severity found.
    pub scan: super::scans::ScanView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRepository {
    /// Allow anonymous pulls (off by default).
    pub public: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryPage {
    pub items: Vec<RepositoryView>,
    pub next: Option<String>,
}

fn parse_name(name: &str) -> Result<RegistryName, Problem> {
    RegistryName::parse(name).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("registry name {name:?} is invalid: {e}"),
        )
    })
}

/// The registry and repository a `/registries/{name}/repositories/{repository}` path names.
async fn repository_path(
    state: &AppState,
    name: &str,
    repository: &str,
) -> Result<(Registry, RepositoryName), Problem> {
    let repository =
        RepositoryName::parse(repository).map_err(|e| Problem::bad_request(e.to_string()))?;
    Ok((find(state, name).await?, repository))
}

fn no_repository(registry: &str, repository: &RepositoryName) -> Problem {
    Problem::not_found(format!(
        "registry {registry:?} has no repository {:?}",
        repository.as_str()
    ))
}

pub(super) async fn find(state: &AppState, name: &str) -> Result<Registry, Problem> {
    state
        .meta
        .registry(name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no registry named {name:?}")))
}

async fn view(state: &AppState, r: Registry) -> Result<RegistryView, Problem> {
    let stats = state.meta.registry_stats(r.id).await?;
    let gc_schedule = match &r.gc_schedule {
        Some(s) => {
            Some(serde_json::from_str(s).map_err(|e| Problem::internal("stored gc schedule", e))?)
        }
        None => None,
    };
    Ok(RegistryView {
        hostname: format!("{}.{}", r.name, state.settings.base_domain),
        name: r.name,
        location: r.location,
        created_at: rfc3339(r.created_at),
        scanning: r.scanning,
        gc_next_run: r
            .gc_next_run
            .filter(|_| gc_schedule.is_some())
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        gc_schedule,
        gc_untagged: r.gc_untagged,
        storage_bytes: stats.storage_bytes,
        quota_bytes: r.quota_bytes,
        repository_count: stats.repositories,
        artifact_count: stats.artifacts,
        rate_limit: r.rate_limit,
        read_only: r.read_only,
        own_key: r.key_id,
    })
}

#[utoipa::path(
    get, path = "/api/v1/registries", tag = "registries", params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RegistryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<RegistryPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let limit = page_limit(q.limit)?;
    let (registries, more) = state
        .meta
        .list_registries(q.after.as_deref(), limit)
        .await?;
    let next = more
        .then(|| registries.last().map(|r| r.name.clone()))
        .flatten();
    let mut items = Vec::with_capacity(registries.len());
    for r in registries {
        items.push(view(&state, r).await?);
    }
    Ok(Json(RegistryPage { items, next }))
}

#[utoipa::path(
    post, path = "/api/v1/registries", tag = "registries", request_body = CreateRegistry,
    security(("bearer" = [])),
    responses(
        (status = 201, body = RegistryView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The name is taken"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateRegistry>,
) -> Result<Response, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let name = parse_name(&body.name)?;
    let offered = &state.settings.locations;
    let location = match (&body.location, offered.as_slice()) {
        (Some(l), _) if offered.contains(l) => l.clone(),
        (None, [only]) => only.clone(),
        (Some(l), _) => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "location {l:?} is not offered; choose one of: {}",
                    offered.join(", ")
                ),
            ))
        }
        (None, _) => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "this server offers several locations; choose one of: {}",
                    offered.join(", ")
                ),
            ))
        }
    };
    let schedule = match &body.gc_schedule {
        Some(s) => {
            s.validate()?;
            Some(serde_json::to_string(s).map_err(|e| Problem::internal("encoding schedule", e))?)
        }
        None => None,
    };
    let next_run = body
        .gc_schedule
        .as_ref()
        .and_then(|s| s.next_after(chrono::Utc::now()));
    // The key is made (or checked) before the registry, so that a bad one creates nothing.
    let own_key = match body.own_key.as_deref() {
        None => None,
        Some(given) => {
            let keys = state.content_keys.as_ref().ok_or_else(|| {
                Problem::conflict("encryption at rest is off: a registry cannot have its own key")
            })?;
            let given = (given != "generate").then_some(given);
            Some(keys.new_registry_key(given).map_err(|e| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("own_key: {e}, or \"generate\""),
                )
            })?)
        }
    };
    let registry = state
        .meta
        .create_registry(&NewRegistry {
            name: name.as_str(),
            location: &location,
            scanning: body.scanning,
            gc_schedule: schedule.as_deref(),
        })
        .await?;
    if next_run.is_some() {
        let changes = RegistryChanges {
            gc_next_run: Some(next_run),
            ..Default::default()
        };
        state.meta.update_registry(registry.id, &changes).await?;
    }
    let registry = match own_key {
        Some((key_id, wrapped)) => {
            if !state
                .meta
                .set_registry_key(registry.id, &key_id, &wrapped)
                .await?
            {
                return Err(Problem::conflict(
                    "the registry changed while its key was being set",
                ));
            }
            find(&state, name.as_str()).await?
        }
        None if next_run.is_some() => find(&state, name.as_str()).await?,
        None => registry,
    };
    super::audit_change(
        &state,
        &admin,
        "registry.create",
        Some(name.as_str()),
        None,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(&state, registry).await?)).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}", tag = "registries",
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RegistryView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<RegistryView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    Ok(Json(view(&state, registry).await?))
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}", tag = "registries", request_body = UpdateRegistry,
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RegistryView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Scanning cannot be switched off"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateRegistry>,
) -> Result<Json<RegistryView>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    if registry.scanning && body.scanning == Some(false) {
        return Err(Problem::conflict(
            "vulnerability scanning cannot be switched off once it is on",
        ));
    }
    let schedule = match &body.gc_schedule {
        Some(Some(s)) => {
            s.validate()?;
            Some(Some(
                serde_json::to_string(s).map_err(|e| Problem::internal("encoding schedule", e))?,
            ))
        }
        Some(None) => Some(None),
        None => None,
    };
    if let Some(Some(limit)) = body.rate_limit {
        if !(0..=1_000_000).contains(&limit) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "rate_limit must be 0 (no limit) to 1000000 requests per second, not {limit}"
                ),
            ));
        }
    }
    if let Some(Some(quota)) = body.quota_bytes {
        if quota < 1 {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "quota_bytes must be at least 1 byte, not {quota} (null removes the quota)"
                ),
            ));
        }
    }
    let changes = RegistryChanges {
        scanning: body.scanning,
        read_only: body.read_only,
        gc_schedule: schedule.as_ref().map(|s| s.as_deref()),
        gc_next_run: body
            .gc_schedule
            .as_ref()
            .map(|s| s.as_ref().and_then(|s| s.next_after(chrono::Utc::now()))),
        gc_untagged: body.gc_untagged,
        rate_limit: body.rate_limit,
        quota_bytes: body.quota_bytes,
    };
    state.meta.update_registry(registry.id, &changes).await?;
    // This node applies the new limit at once; the others within their cache's second.
    state.forget_registry_ref(&name);
    if body.scanning == Some(true) {
        crate::scanning::queue_registry(&state, registry.id).await?;
    }
    super::audit_change(&state, &admin, "registry.update", Some(&name), None, None).await;
    let registry = find(&state, &name).await?;
    Ok(Json(view(&state, registry).await?))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}", tag = "registries",
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted with all its repositories, tokens and data"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryDelete)?;
    if !state.service().delete_registry(&name).await? {
        return Err(Problem::not_found(format!("no registry named {name:?}")));
    }
    super::audit_change(&state, &admin, "registry.delete", Some(&name), None, None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/repositories", tag = "registries",
    params(("name" = String, Path, description = "Registry name"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RepositoryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_repositories(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<RepositoryPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let limit = page_limit(q.limit)?;
    let registry = find(&state, &name).await?;
    let (repos, more) = state
        .meta
        .list_repository_info(registry.id, q.after.as_deref(), limit)
        .await?;
    let next = more.then(|| repos.last().map(|r| r.name.clone())).flatten();
    let names: Vec<String> = repos.iter().map(|r| r.name.clone()).collect();
    let mut latest = std::collections::HashMap::new();
    for (repo, digest, children) in state.meta.latest_artifacts(registry.id, &names).await? {
        let scans =
            super::scans::artifact_scans(&state, &registry, &repo, &[(digest.clone(), children)])
                .await?;
        if let Some(scan) = scans.into_iter().next() {
            latest.insert(repo, LatestArtifact { digest, scan });
        }
    }
    let items = repos
        .into_iter()
        .map(|r| RepositoryView {
            latest_artifact: latest.remove(&r.name),
            name: r.name,
            created_at: rfc3339(r.created_at),
            artifact_count: r.artifacts,
            tag_count: r.tags,
            storage_bytes: r.storage_bytes,
            public: r.public,
        })
        .collect();
    Ok(Json(RepositoryPage { items, next }))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/repositories/{repository}", tag = "registries",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'",
            pattern = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted with its manifests and tags"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_repository(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, repository)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryDelete)?;
    let (registry, repository) = repository_path(&state, &name, &repository).await?;
    if !state
        .service()
        .delete_repository(registry.id, repository.as_str())
        .await?
    {
        return Err(no_repository(&name, &repository));
    }
    super::audit_change(
        &state,
        &admin,
        "repository.delete",
        Some(&name),
        Some(repository.as_str()),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}/repositories/{repository}", tag = "registries",
    request_body = UpdateRepository,
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'",
            pattern = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Changed"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_repository(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, repository)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateRepository>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let (registry, repository) = repository_path(&state, &name, &repository).await?;
    if !state
        .meta
        .set_repository_public(registry.id, repository.as_str(), body.public)
        .await?
    {
        return Err(no_repository(&name, &repository));
    }
    let action = if body.public {
        "repository.public"
    } else {
        "repository.private"
    };
    super::audit_change(
        &state,
        &admin,
        action,
        Some(&name),
        Some(repository.as_str()),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn schedules_validate_with_a_cron_parser_and_tell_their_next_run() {
        // Friday 2026-11-27 10:00 UTC.
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 10, 0, 0)
            .unwrap();
        let weekly = GcSchedule::Weekly(WeeklySchedule {
            weekdays: vec![Weekday::Sun, Weekday::Wed],
            time: "03:30".into(),
        });
        assert!(weekly.validate().is_ok());
        let at = |y, mo, d, h, mi| {
            chrono::Utc
                .with_ymd_and_hms(y, mo, d, h, mi, 0)
                .unwrap()
                .timestamp_millis()
        };
        assert_eq!(weekly.next_after(now), Some(at(2026, 11, 29, 3, 30)));
        let cron = |c: &str| GcSchedule::Cron(CronSchedule { cron: c.into() });
        assert_eq!(
            cron("0 12 * * 5").next_after(now),
            Some(at(2026, 11, 27, 12, 0))
        );
        for bad in [
            "99 99 99 99 99",
            "* * * *",
            "0 0 * * * *",
            "every day",
            "0 25 * * *",
        ] {
            assert!(cron(bad).validate().is_err(), "{bad}");
        }
        assert!(cron("*/15 2-4 1,15 * mon-fri").validate().is_ok());
    }
}

/// One sample of a registry's storage.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageSample {
    /// RFC 3339: the start of the sampling interval.
    pub at: String,
    pub bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StorageHistory {
    /// Oldest first, sampled every `interval_seconds`; the last is the storage now.
    pub samples: Vec<StorageSample>,
    pub interval_seconds: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many days back, 1–400 (default 30).
    #[param(minimum = 1, maximum = 400)]
    pub days: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/storage", tag = "registries",
    params(("name" = String, Path, description = "Registry name"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = StorageHistory),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
/// The registry's storage over time, as sampled, ending with the storage now.
pub async fn storage_history(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<StorageHistory>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let days = q.days.unwrap_or(30);
    if !(1..=400).contains(&days) {
        return Err(Problem::bad_request(format!(
            "days must be between 1 and 400, not {days}"
        )));
    }
    let registry = find(&state, &name).await?;
    let now = wharf_meta::now_millis();
    let since = now - days * 24 * 3600 * 1000;
    let mut samples: Vec<StorageSample> = state
        .meta
        .storage_history(registry.id, since)
        .await?
        .into_iter()
        .map(|(at, bytes)| StorageSample {
            at: rfc3339(at),
            bytes,
        })
        .collect();
    samples.push(StorageSample {
        at: rfc3339(now),
        bytes: state.meta.registry_stats(registry.id).await?.storage_bytes,
    });
    Ok(Json(StorageHistory {
        samples,
        interval_seconds: state.settings.storage_sample_interval.as_secs(),
    }))
}
