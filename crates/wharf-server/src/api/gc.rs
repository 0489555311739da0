//! Garbage collection of a registry: runs on demand (or a dry run), and their history.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_auth::Permission;
use wharf_meta::GcRun;

use super::auth::Admin;
use super::problem::{ApiJson, ApiQuery, Problem};
use super::registries::find;
use super::{page_limit, path_id, rfc3339};
use crate::gc::Target;
use crate::AppState;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// List what would be freed, freeing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A garbage-collection run and its report.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: i64,
    /// `manual` (API or CLI) or `schedule`.
    pub cause: String,
    pub dry_run: bool,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// While running: `manifests`, `links` or `blobs`.
    pub phase: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Seconds from start to end (or to now, while running).
    pub duration_seconds: f64,
    /// Manifests removed (a dry run: that would be).
    pub manifests_freed: i64,
    /// Stored blobs deleted (a dry run: that would be).
    pub blobs_freed: i64,
    pub bytes_freed: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// A dry run's findings: the manifests (`repository`, `digest`, `size`) and blobs
    /// (`digest`, `size`) it would free, the first 1000 of each.
    #[schema(value_type = Option<Object>)]
    pub findings: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunView>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Runs older than this run id.
    pub before: Option<i64>,
}

fn view(run: GcRun) -> RunView {
    let end = run.finished_at.unwrap_or_else(wharf_meta::now_millis);
    RunView {
        id: run.id,
        cause: run.cause,
        dry_run: run.dry_run,
        phase: (run.status == "running" && !run.phase.is_empty()).then_some(run.phase),
        status: run.status,
        started_at: rfc3339(run.started_at),
        finished_at: run.finished_at.map(rfc3339),
        duration_seconds: (end - run.started_at).max(0) as f64 / 1000.0,
        manifests_freed: run.manifests_freed,
        blobs_freed: run.blobs_freed,
        bytes_freed: run.bytes_freed,
        error: run.error,
        findings: run.details.and_then(|d| serde_json::from_str(&d).ok()),
    }
}

/// The run `target` (a registry, or the instance) starts on request.
async fn start_run(
    state: &Arc<AppState>,
    admin: &Admin,
    target: Target,
    dry_run: bool,
) -> Result<(StatusCode, Json<RunView>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = (target.id != Target::INSTANCE).then(|| target.name.clone());
    let name = target.describe();
    match state.start_gc(target, "manual", dry_run).await? {
        Ok(run) => {
            let detail = serde_json::json!({ "run": run.id, "dry_run": dry_run });
            super::audit_change(
                state,
                admin,
                "gc.run",
                registry.as_deref(),
                None,
                Some(detail),
            )
            .await;
            Ok((StatusCode::ACCEPTED, Json(view(run))))
        }
        Err(running) => Err(Problem::conflict(format!(
            "garbage collection run {} of {name} is still going (started {}); wait for it to end",
            running.id,
            rfc3339(running.started_at)
        ))),
    }
}

async fn list_runs(state: &AppState, target: i64, q: RunQuery) -> Result<Json<RunPage>, Problem> {
    let limit = page_limit(q.limit)?;
    let (runs, more) = state.meta.gc_runs(target, q.before, limit).await?;
    let next = more.then(|| runs.last().map(|r| r.id)).flatten();
    Ok(Json(RunPage {
        items: runs.into_iter().map(view).collect(),
        next,
    }))
}

async fn show_run(state: &AppState, target: &Target, id: &str) -> Result<Json<RunView>, Problem> {
    let id = path_id("run", id)?;
    let run = state
        .meta
        .gc_run(target.id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("{} has no run {id}", target.describe())))?;
    Ok(Json(view(run)))
}

async fn registry_target(state: &AppState, name: &str) -> Result<Target, Problem> {
    Ok(Target::registry(&find(state, name).await?))
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/gc", tag = "registries", request_body = StartRun,
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 202, body = RunView, description = "Started; follow it at .../gc/runs/{id}"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "A run of this registry is going"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn start(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<(StatusCode, Json<RunView>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let target = registry_target(&state, &name).await?;
    start_run(&state, &admin, target, body.dry_run).await
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/gc/runs", tag = "registries",
    params(("name" = String, Path, description = "Registry name"), RunQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RunPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<RunPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let target = registry_target(&state, &name).await?;
    list_runs(&state, target.id, q).await
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/gc/runs/{id}", tag = "registries",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("id" = i64, Path, description = "Run id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RunView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<RunView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let target = registry_target(&state, &name).await?;
    show_run(&state, &target, &id).await
}

#[utoipa::path(
    post, path = "/api/v1/system/gc", tag = "system", request_body = StartRun,
    security(("bearer" = [])),
    responses(
        (status = 202, body = RunView, description = "Started; follow it at /api/v1/system/gc/runs/{id}"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "An instance run is going"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Frees the stored blobs nothing links any more in any registry: what deleted registries and
/// repositories left behind (every registry's run does this too).
pub async fn start_instance(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<(StatusCode, Json<RunView>), Problem> {
    start_run(&state, &admin, Target::instance(), body.dry_run).await
}

#[utoipa::path(
    get, path = "/api/v1/system/gc/runs", tag = "system", params(RunQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RunPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_instance(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<RunPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    list_runs(&state, Target::INSTANCE, q).await
}

#[utoipa::path(
    get, path = "/api/v1/system/gc/runs/{id}", tag = "system",
    params(("id" = i64, Path, description = "Run id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RunView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show_instance(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<RunView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    show_run(&state, &Target::instance(), &id).await
}
