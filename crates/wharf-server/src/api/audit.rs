use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_auth::Permission;

use super::auth::Admin;
use super::problem::{ApiQuery, Problem};
use super::{page_limit, rfc3339};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this registry.
    pub registry: Option<String>,
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Only entries older than this id (from `next` of the previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// RFC 3339 time.
    pub at: String,
    /// The administrator key or token that acted.
    pub actor: String,
    pub action: String,
    pub registry: Option<String>,
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditView>,
    /// Pass as `before` to get the next (older) page.
    pub next: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let limit = page_limit(q.limit)?;
    let (records, more) = state
        .meta
        .list_audit(q.registry.as_deref(), q.before, limit)
        .await?;
    let next = more.then(|| records.last().map(|r| r.id)).flatten();
    let items = records
        .into_iter()
        .map(|r| AuditView {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor,
            action: r.action,
            registry: r.registry,
            repository: r.repository,
            digest: r.digest,
            detail: r.detail.and_then(|d| serde_json::from_str(&d).ok()),
        })
        .collect();
    Ok(Json(AuditPage { items, next }))
}
