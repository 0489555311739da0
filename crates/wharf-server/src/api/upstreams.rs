//! Credentials for external registries, per registry (`/api/v1/registries/{name}/upstreams`):
//! one entry per host, the secret write-only (sealed at rest, never returned), and a connection
//! test that names the cause of a failure.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use wharf_auth::Permission;
use wharf_meta::{Registry, UpstreamChanges, UpstreamRecord};

use super::auth::Admin;
use super::problem::ApiJson;
use super::registries::find;
use super::{rfc3339, Problem};
use crate::upstream::{self, TestReport, UpstreamUrl};
use crate::AppState;

/// Longest username, secret and description accepted.
const MAX_USERNAME: usize = 256;
const MAX_SECRET: usize = 8192;
const MAX_DESCRIPTION: usize = 1000;

/// An upstream as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamView {
    /// `host[:port]`: the entry's name in the paths below.
    pub host: String,
    pub url: String,
    pub username: String,
    pub description: String,
    /// Whether a CA certificate of its own is trusted for it.
    pub custom_ca: bool,
    pub created_at: String,
    pub updated_at: String,
    /// When the secret was last set (rotation).
    pub secret_updated_at: String,
}

impl UpstreamView {
    fn of(u: UpstreamRecord) -> UpstreamView {
        UpstreamView {
            host: u.host,
            url: u.url,
            username: u.username,
            description: u.description,
            custom_ca: u.ca_certificate.is_some(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
            secret_updated_at: rfc3339(u.secret_updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamList {
    pub items: Vec<UpstreamView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpstream {
    /// `https://host[:port]` (or `http://`); fixed once created, one entry per host.
    pub url: String,
    pub username: String,
    /// Password or access token; stored sealed, never returned.
    pub secret: String,
    #[serde(default)]
    pub description: String,
    /// PEM certificates to trust for this upstream besides the system's.
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUpstream {
    /// Refused: an upstream's URL is fixed (create another entry instead).
    #[schema(value_type = Option<String>)]
    pub url: Option<serde_json::Value>,
    pub username: Option<String>,
    /// A new secret, replacing the old one at once (rotation).
    pub secret: Option<String>,
    pub description: Option<String>,
    /// A CA certificate (PEM) to trust; an empty string removes it.
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestUpstream {
    /// A repository of the upstream to test rights on, e.g. `library/alpine`.
    pub repository: Option<String>,
    /// Also test push rights on it (an upload is opened and cancelled).
    #[serde(default)]
    pub push: bool,
}

fn check_field(name: &str, value: &str, max: usize, empty_ok: bool) -> Result<(), Problem> {
    if !empty_ok && value.trim().is_empty() {
        return Err(Problem::unprocessable(format!("{name} must not be empty")));
    }
    if value.len() > max {
        return Err(Problem::unprocessable(format!(
            "{name} is longer than {max} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Problem::unprocessable(format!(
            "{name} holds control characters"
        )));
    }
    Ok(())
}

fn check_ca(pem: &str) -> Result<(), Problem> {
    upstream::check_ca(pem).map_err(Problem::unprocessable)
}

/// The id of the registry's upstream named by host or URL (for caches and replication rules).
pub(super) async fn upstream_id(
    state: &AppState,
    registry: &Registry,
    upstream: &str,
) -> Result<i64, Problem> {
    let host = if upstream.contains("://") {
        UpstreamUrl::parse(upstream)
            .map_err(Problem::unprocessable)?
            .host
    } else {
        upstream.trim().to_ascii_lowercase()
    };
    match find_upstream(state, registry, &host).await {
        Ok(u) => Ok(u.id),
        Err(_) => Err(Problem::unprocessable(format!(
            "registry {:?} has no upstream {host:?}; store its credentials first (POST .../upstreams, or wharf upstream create)",
            registry.name
        ))),
    }
}

async fn find_upstream(
    state: &AppState,
    registry: &Registry,
    host: &str,
) -> Result<UpstreamRecord, Problem> {
    state
        .meta
        .upstream(registry.id, &host.to_ascii_lowercase())
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "registry {:?} has no upstream {host:?}",
                registry.name
            ))
        })
}

fn sealing_failed(e: crate::service::ServiceError) -> Problem {
    Problem::internal("sealing an upstream secret", e)
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/upstreams", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = UpstreamList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<UpstreamList>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let items = state
        .meta
        .upstreams(registry.id)
        .await?
        .into_iter()
        .map(UpstreamView::of)
        .collect();
    Ok(Json(UpstreamList { items }))
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/upstreams", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name")),
    request_body = CreateUpstream,
    security(("bearer" = [])),
    responses(
        (status = 201, body = UpstreamView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The registry has this host already"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateUpstream>,
) -> Result<(StatusCode, Json<UpstreamView>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let url = UpstreamUrl::parse(&body.url).map_err(Problem::unprocessable)?;
    check_field("username", &body.username, MAX_USERNAME, false)?;
    check_field("secret", &body.secret, MAX_SECRET, false)?;
    check_field("description", &body.description, MAX_DESCRIPTION, true)?;
    if let Some(pem) = &body.ca_certificate {
        check_ca(pem)?;
    }
    let secret = upstream::seal_secret(&state, registry.key_id.as_deref(), &body.secret)
        .await
        .map_err(sealing_failed)?;
    let stored = state
        .meta
        .create_upstream(&UpstreamRecord {
            id: 0,
            registry_id: registry.id,
            host: url.host,
            url: url.url,
            username: body.username,
            secret,
            description: body.description,
            ca_certificate: body.ca_certificate,
            created_at: 0,
            updated_at: 0,
            secret_updated_at: 0,
        })
        .await?;
    super::audit_change(
        &state,
        &admin,
        "upstream.create",
        Some(&registry.name),
        None,
        Some(json!({ "upstream": stored.host, "username": stored.username })),
    )
    .await;
    Ok((StatusCode::CREATED, Json(UpstreamView::of(stored))))
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/upstreams/{host}", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name"), ("host" = String, Path, description = "The upstream's host[:port]")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = UpstreamView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, host)): Path<(String, String)>,
) -> Result<Json<UpstreamView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    Ok(Json(UpstreamView::of(
        find_upstream(&state, &registry, &host).await?,
    )))
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}/upstreams/{host}", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name"), ("host" = String, Path, description = "The upstream's host[:port]")),
    request_body = UpdateUpstream,
    security(("bearer" = [])),
    responses(
        (status = 200, body = UpstreamView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Changes an upstream's username, secret (at once: rotation), description or CA certificate.
pub async fn update(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, host)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateUpstream>,
) -> Result<Json<UpstreamView>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_upstream(&state, &registry, &host).await?;
    if body.url.is_some() {
        return Err(Problem::unprocessable(
            "an upstream's URL is fixed once created; delete it and create another",
        ));
    }
    if let Some(u) = &body.username {
        check_field("username", u, MAX_USERNAME, false)?;
    }
    if let Some(s) = &body.secret {
        check_field("secret", s, MAX_SECRET, false)?;
    }
    if let Some(d) = &body.description {
        check_field("description", d, MAX_DESCRIPTION, true)?;
    }
    let ca_certificate = match body.ca_certificate {
        None => None,
        Some(pem) if pem.trim().is_empty() => Some(None),
        Some(pem) => {
            check_ca(&pem)?;
            Some(Some(pem))
        }
    };
    let secret = match &body.secret {
        Some(s) => Some(
            upstream::seal_secret(&state, registry.key_id.as_deref(), s)
                .await
                .map_err(sealing_failed)?,
        ),
        None => None,
    };
    let changes = UpstreamChanges {
        username: body.username,
        secret,
        description: body.description,
        ca_certificate,
    };
    let updated = state
        .meta
        .update_upstream(registry.id, &current.host, &changes)
        .await?
        .ok_or_else(|| Problem::not_found(format!("upstream {host:?} was deleted meanwhile")))?;
    super::audit_change(
        &state,
        &admin,
        "upstream.update",
        Some(&registry.name),
        None,
        Some(json!({
            "upstream": updated.host,
            "username": changes.username.is_some(),
            "secret_replaced": changes.secret.is_some(),
            "description": changes.description.is_some(),
            "ca_certificate": changes.ca_certificate.is_some(),
        })),
    )
    .await;
    Ok(Json(UpstreamView::of(updated)))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/upstreams/{host}", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name"), ("host" = String, Path, description = "The upstream's host[:port]")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted with its secret"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "A pull-through cache or replication rule uses it"),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, host)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_upstream(&state, &registry, &host).await?;
    let users: Vec<String> = (state.meta.caches_of_upstream(current.id).await?)
        .into_iter()
        .map(|c| format!("the cache {c}/"))
        .chain(
            (state.meta.rules_of_upstream(current.id).await?)
                .into_iter()
                .map(|r| format!("the replication rule {r:?}")),
        )
        .collect();
    if !users.is_empty() {
        return Err(Problem::conflict(format!(
            "upstream {} is used by {}; delete them first",
            current.host,
            users.join(", ")
        )));
    }
    if !state
        .meta
        .delete_upstream(registry.id, &current.host)
        .await?
    {
        return Err(Problem::not_found(format!(
            "upstream {host:?} was deleted meanwhile"
        )));
    }
    super::audit_change(
        &state,
        &admin,
        "upstream.delete",
        Some(&registry.name),
        None,
        Some(json!({ "upstream": current.host })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/upstreams/{host}/test", tag = "upstreams",
    params(("name" = String, Path, description = "Registry name"), ("host" = String, Path, description = "The upstream's host[:port]")),
    request_body = TestUpstream,
    security(("bearer" = [])),
    responses(
        (status = 200, body = TestReport, description = "The test ran; `cause` says how it ended"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Tests the stored credentials against the upstream, as a client would: reaching it, logging
/// in (Basic or the Docker token flow), and with a repository, pulling (and pushing) there.
pub async fn test(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, host)): Path<(String, String)>,
    ApiJson(body): ApiJson<TestUpstream>,
) -> Result<Json<TestReport>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let u = find_upstream(&state, &registry, &host).await?;
    if let Some(r) = &body.repository {
        wharf_oci::RepositoryName::parse(r)
            .map_err(|e| Problem::unprocessable(format!("repository {r:?}: {e}")))?;
    }
    let host = u.host.clone();
    let opened = upstream::Opened::open(&state, registry.key_id.as_deref(), u)
        .await
        .map_err(|e| Problem::internal("opening an upstream secret", e))?;
    let report =
        upstream::test_connection(&opened.credentials(), body.repository.as_deref(), body.push)
            .await;
    super::audit_change(
        &state,
        &admin,
        "upstream.test",
        Some(&registry.name),
        None,
        Some(json!({ "upstream": host, "cause": report.cause })),
    )
    .await;
    Ok(Json(report))
}
