//! Push replication rules of a registry (`/api/v1/registries/{name}/replications`), with each
//! rule's status and history.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use wharf_auth::Permission;
use wharf_meta::{Registry, ReplicationJob, ReplicationRule, RuleChanges};
use wharf_oci::{RegistryName, RepositoryName};

use super::auth::Admin;
use super::problem::{ApiJson, ApiQuery};
use super::registries::find;
use super::upstreams::upstream_id;
use super::{page_limit, rfc3339, Problem};
use crate::AppState;

/// The target when none is given: the same repository name on the upstream.
const SAME_NAME: &str = "{name}";

/// A rule's jobs by state.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleStatusView {
    /// Waiting, running or to be retried.
    pub pending: i64,
    pub succeeded: i64,
    /// Given up after the most attempts.
    pub failed: i64,
    pub last_success_at: Option<String>,
    /// The most recent error of any job of the rule.
    pub last_error: Option<String>,
}

/// A replication rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub name: String,
    /// Repositories whose pushes are copied (`*` matches any characters).
    pub repositories: String,
    /// Tags whose pushes are copied (`*` matches any characters); empty: every tag.
    pub tags: String,
    /// The upstream's `host[:port]`.
    pub upstream: String,
    /// The repository on the upstream; `{name}` stands for the pushed repository's name.
    pub target: String,
    pub enabled: bool,
    pub status: RuleStatusView,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub items: Vec<RuleView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// Lower-case letters, digits and single separators, like a registry name; fixed.
    pub name: String,
    pub repositories: String,
    #[serde(default)]
    pub tags: String,
    /// The host (or URL) of one of the registry's upstream credentials, with push rights.
    pub upstream: String,
    /// Default `{name}`.
    pub target: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    /// Refused: a rule's name is fixed.
    #[schema(value_type = Option<String>)]
    pub name: Option<serde_json::Value>,
    pub repositories: Option<String>,
    pub tags: Option<String>,
    pub upstream: Option<String>,
    pub target: Option<String>,
    pub enabled: Option<bool>,
}

/// One copy of one pushed manifest.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When a pending job is (next) tried.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl JobView {
    fn of(j: ReplicationJob) -> JobView {
        let running = j.status == "pending" && j.claimed_at.is_some();
        let pending = j.status == "pending";
        JobView {
            id: j.id,
            repository: j.repository,
            tag: j.tag,
            digest: j.digest,
            status: if running { "running".into() } else { j.status },
            attempts: j.attempts,
            next_attempt_at: (pending && !running).then(|| rfc3339(j.next_at)),
            last_error: j.last_error,
            created_at: rfc3339(j.created_at),
            finished_at: j.finished_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub items: Vec<JobView>,
    /// Pass as `before` to get the next (older) page.
    pub next: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Only jobs older than this id (from `next` of the previous page).
    pub before: Option<i64>,
}

fn check_repositories(pattern: &str) -> Result<(), Problem> {
    wharf_auth::Pattern::parse(pattern)
        .map(|_| ())
        .map_err(|e| Problem::unprocessable(format!("repositories: {e}")))
}

fn check_tags(pattern: &str) -> Result<(), Problem> {
    let ok = pattern.len() <= 128
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'));
    if ok {
        Ok(())
    } else {
        Err(Problem::unprocessable(format!(
            "tags {pattern:?} is not a tag pattern: letters, digits, '_', '.', '-' and '*' (any characters), up to 128"
        )))
    }
}

fn check_target(target: &str) -> Result<(), Problem> {
    RepositoryName::parse(&target.replace(SAME_NAME, "name"))
        .map(|_| ())
        .map_err(|e| {
            Problem::unprocessable(format!(
                "target {target:?} is not a repository name ({{name}} stands for the pushed one's): {e}"
            ))
        })
}

async fn view(state: &AppState, r: ReplicationRule) -> Result<RuleView, Problem> {
    let s = state.meta.replication_status(r.id).await?;
    Ok(RuleView {
        name: r.name,
        repositories: r.repositories,
        tags: r.tags,
        upstream: r.upstream_host,
        target: r.target,
        enabled: r.enabled,
        status: RuleStatusView {
            pending: s.pending,
            succeeded: s.succeeded,
            failed: s.failed,
            last_success_at: s.last_success_at.map(rfc3339),
            last_error: s.last_error,
        },
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

async fn find_rule(
    state: &AppState,
    registry: &Registry,
    name: &str,
) -> Result<ReplicationRule, Problem> {
    state
        .meta
        .replication_rule(registry.id, name)
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "registry {:?} has no replication rule {name:?}",
                registry.name
            ))
        })
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/replications", tag = "replication",
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RuleList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<RuleList>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let mut items = Vec::new();
    for r in state.meta.replication_rules(registry.id).await? {
        items.push(view(&state, r).await?);
    }
    Ok(Json(RuleList { items }))
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/replications", tag = "replication",
    params(("name" = String, Path, description = "Registry name")),
    request_body = CreateRule,
    security(("bearer" = [])),
    responses(
        (status = 201, body = RuleView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The registry has a rule with this name already"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Adds a rule: pushes to matching repositories (and tags) are copied to the upstream.
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateRule>,
) -> Result<(StatusCode, Json<RuleView>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    RegistryName::parse(&body.name).map_err(|e| {
        Problem::unprocessable(format!("rule name {:?} is invalid: {e}", body.name))
    })?;
    check_repositories(&body.repositories)?;
    check_tags(&body.tags)?;
    let target = body.target.unwrap_or_else(|| SAME_NAME.to_string());
    check_target(&target)?;
    let upstream_id = upstream_id(&state, &registry, &body.upstream).await?;
    let stored = state
        .meta
        .create_replication_rule(&ReplicationRule {
            id: 0,
            registry_id: registry.id,
            name: body.name,
            repositories: body.repositories,
            tags: body.tags,
            upstream_id,
            upstream_host: String::new(),
            target,
            enabled: body.enabled.unwrap_or(true),
            created_at: 0,
            updated_at: 0,
        })
        .await?;
    super::audit_change(
        &state,
        &admin,
        "replication.create",
        Some(&registry.name),
        None,
        Some(json!({ "rule": stored.name, "upstream": stored.upstream_host })),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(&state, stored).await?)))
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/replications/{rule}", tag = "replication",
    params(("name" = String, Path, description = "Registry name"), ("rule" = String, Path, description = "Rule name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RuleView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, rule)): Path<(String, String)>,
) -> Result<Json<RuleView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let r = find_rule(&state, &registry, &rule).await?;
    Ok(Json(view(&state, r).await?))
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}/replications/{rule}", tag = "replication",
    params(("name" = String, Path, description = "Registry name"), ("rule" = String, Path, description = "Rule name")),
    request_body = UpdateRule,
    security(("bearer" = [])),
    responses(
        (status = 200, body = RuleView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Changes a rule; pushes after the change follow it (queued copies keep their target).
pub async fn update(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, rule)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateRule>,
) -> Result<Json<RuleView>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_rule(&state, &registry, &rule).await?;
    if body.name.is_some() {
        return Err(Problem::unprocessable(
            "a rule's name is fixed once created; delete it and create another",
        ));
    }
    if let Some(p) = &body.repositories {
        check_repositories(p)?;
    }
    if let Some(t) = &body.tags {
        check_tags(t)?;
    }
    if let Some(t) = &body.target {
        check_target(t)?;
    }
    let upstream_id = match &body.upstream {
        Some(u) => Some(upstream_id(&state, &registry, u).await?),
        None => None,
    };
    let changes = RuleChanges {
        repositories: body.repositories,
        tags: body.tags,
        upstream_id,
        target: body.target,
        enabled: body.enabled,
    };
    let updated = state
        .meta
        .update_replication_rule(registry.id, &current.name, &changes)
        .await?
        .ok_or_else(|| Problem::not_found(format!("rule {rule:?} was deleted meanwhile")))?;
    super::audit_change(
        &state,
        &admin,
        "replication.update",
        Some(&registry.name),
        None,
        Some(json!({
            "rule": updated.name, "repositories": updated.repositories, "tags": updated.tags,
            "upstream": updated.upstream_host, "target": updated.target, "enabled": updated.enabled,
        })),
    )
    .await;
    Ok(Json(view(&state, updated).await?))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/replications/{rule}", tag = "replication",
    params(("name" = String, Path, description = "Registry name"), ("rule" = String, Path, description = "Rule name")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted with its queued copies and history"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, rule)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_rule(&state, &registry, &rule).await?;
    if !state
        .meta
        .delete_replication_rule(registry.id, &current.name)
        .await?
    {
        return Err(Problem::not_found(format!(
            "rule {rule:?} was deleted meanwhile"
        )));
    }
    super::audit_change(
        &state,
        &admin,
        "replication.delete",
        Some(&registry.name),
        None,
        Some(json!({ "rule": current.name })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/replications/{rule}/history", tag = "replication",
    params(("name" = String, Path, description = "Registry name"), ("rule" = String, Path, description = "Rule name"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
/// The rule's copies, newest first: queued, running, retried, done and given up.
pub async fn history(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, rule)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<JobPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let r = find_rule(&state, &registry, &rule).await?;
    let limit = page_limit(q.limit)?;
    let mut jobs = state
        .meta
        .replication_history(r.id, q.before, limit + 1)
        .await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    let next = more.then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(Json(JobPage {
        items: jobs.into_iter().map(JobView::of).collect(),
        next,
    }))
}
