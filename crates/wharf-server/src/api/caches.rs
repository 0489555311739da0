//! Pull-through caches of a registry (`/api/v1/registries/{name}/caches`): a repository prefix
//! whose repositories are fetched from an upstream the registry holds credentials for.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use wharf_auth::Permission;
use wharf_meta::{CacheChanges, CacheRecord, Registry};

use super::auth::Admin;
use super::problem::ApiJson;
use super::registries::find;
use super::upstreams::upstream_id;
use super::{rfc3339, Problem};
use crate::AppState;

/// How long a cached tag is trusted before the upstream is asked again, unless set.
const DEFAULT_REVALIDATE_SECS: i64 = 300;
/// The longest revalidation time: 30 days.
const MAX_REVALIDATE_SECS: i64 = 30 * 24 * 3600;

/// A pull-through cache as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CacheView {
    /// The repository prefix: `PREFIX/name` is fetched from the upstream.
    pub prefix: String,
    /// The upstream's `host[:port]` (its credentials are the registry's upstream entry).
    pub upstream: String,
    /// Put before `name` on the upstream (`library` for Docker Hub's official images), or empty.
    pub upstream_prefix: String,
    /// Seconds a cached tag is served before the upstream is asked whether it moved.
    pub revalidate_secs: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl CacheView {
    fn of(c: CacheRecord) -> CacheView {
        CacheView {
            prefix: c.prefix,
            upstream: c.upstream_host,
            upstream_prefix: c.upstream_prefix,
            revalidate_secs: c.revalidate_secs,
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CacheList {
    pub items: Vec<CacheView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCache {
    /// A repository prefix (`hub`, `mirror/ghcr`); fixed once created.
    pub prefix: String,
    /// The upstream: the host (or URL) of one of the registry's upstream credentials.
    pub upstream: String,
    #[serde(default)]
    pub upstream_prefix: String,
    /// Seconds a cached tag is served before the upstream is asked again (default 300; 0 asks
    /// every time).
    pub revalidate_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCache {
    /// Refused: a cache's prefix is fixed (create another instead).
    #[schema(value_type = Option<String>)]
    pub prefix: Option<serde_json::Value>,
    pub upstream: Option<String>,
    pub upstream_prefix: Option<String>,
    pub revalidate_secs: Option<i64>,
}

/// A prefix is one or more repository name components, without a trailing slash.
fn check_prefix(field: &str, prefix: &str, empty_ok: bool) -> Result<(), Problem> {
    if prefix.is_empty() && empty_ok {
        return Ok(());
    }
    wharf_oci::RepositoryName::parse(prefix)
        .map(|_| ())
        .map_err(|e| {
            Problem::unprocessable(format!(
                "{field} {prefix:?} is not a repository prefix: {e}"
            ))
        })
}

fn check_revalidate(secs: i64) -> Result<(), Problem> {
    if !(0..=MAX_REVALIDATE_SECS).contains(&secs) {
        return Err(Problem::unprocessable(format!(
            "revalidate_secs must be between 0 and {MAX_REVALIDATE_SECS} (30 days), not {secs}"
        )));
    }
    Ok(())
}

async fn find_cache(
    state: &AppState,
    registry: &Registry,
    prefix: &str,
) -> Result<CacheRecord, Problem> {
    state.meta.cache(registry.id, prefix).await?.ok_or_else(|| {
        Problem::not_found(format!(
            "registry {:?} has no pull-through cache {prefix:?}",
            registry.name
        ))
    })
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/caches", tag = "caches",
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CacheList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<CacheList>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let items = state
        .meta
        .caches(registry.id)
        .await?
        .into_iter()
        .map(CacheView::of)
        .collect();
    Ok(Json(CacheList { items }))
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/caches", tag = "caches",
    params(("name" = String, Path, description = "Registry name")),
    request_body = CreateCache,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CacheView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The registry has a cache with this prefix already"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Makes a repository prefix a pull-through cache of an upstream.
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateCache>,
) -> Result<(StatusCode, Json<CacheView>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    check_prefix("prefix", &body.prefix, false)?;
    check_prefix("upstream_prefix", &body.upstream_prefix, true)?;
    let revalidate_secs = body.revalidate_secs.unwrap_or(DEFAULT_REVALIDATE_SECS);
    check_revalidate(revalidate_secs)?;
    let upstream_id = upstream_id(&state, &registry, &body.upstream).await?;
    let stored = state
        .meta
        .create_cache(&CacheRecord {
            id: 0,
            registry_id: registry.id,
            prefix: body.prefix,
            upstream_id,
            upstream_host: String::new(),
            upstream_prefix: body.upstream_prefix,
            revalidate_secs,
            created_at: 0,
            updated_at: 0,
        })
        .await?;
    state.forget_registry_ref(&registry.name);
    super::audit_change(
        &state,
        &admin,
        "cache.create",
        Some(&registry.name),
        None,
        Some(json!({ "prefix": stored.prefix, "upstream": stored.upstream_host })),
    )
    .await;
    Ok((StatusCode::CREATED, Json(CacheView::of(stored))))
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/caches/{prefix}", tag = "caches",
    params(("name" = String, Path, description = "Registry name"), ("prefix" = String, Path, description = "The cache's prefix (a `/` in it as %2F)")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CacheView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, prefix)): Path<(String, String)>,
) -> Result<Json<CacheView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    Ok(Json(CacheView::of(
        find_cache(&state, &registry, &prefix).await?,
    )))
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}/caches/{prefix}", tag = "caches",
    params(("name" = String, Path, description = "Registry name"), ("prefix" = String, Path, description = "The cache's prefix (a `/` in it as %2F)")),
    request_body = UpdateCache,
    security(("bearer" = [])),
    responses(
        (status = 200, body = CacheView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Changes a cache's upstream, upstream prefix or revalidation time.
pub async fn update(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, prefix)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateCache>,
) -> Result<Json<CacheView>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_cache(&state, &registry, &prefix).await?;
    if body.prefix.is_some() {
        return Err(Problem::unprocessable(
            "a cache's prefix is fixed once created; delete it and create another",
        ));
    }
    if let Some(p) = &body.upstream_prefix {
        check_prefix("upstream_prefix", p, true)?;
    }
    if let Some(secs) = body.revalidate_secs {
        check_revalidate(secs)?;
    }
    let upstream_id = match &body.upstream {
        Some(u) => Some(upstream_id(&state, &registry, u).await?),
        None => None,
    };
    let changes = CacheChanges {
        upstream_id,
        upstream_prefix: body.upstream_prefix,
        revalidate_secs: body.revalidate_secs,
    };
    let updated = state
        .meta
        .update_cache(registry.id, &current.prefix, &changes)
        .await?
        .ok_or_else(|| Problem::not_found(format!("cache {prefix:?} was deleted meanwhile")))?;
    state.forget_registry_ref(&registry.name);
    super::audit_change(
        &state,
        &admin,
        "cache.update",
        Some(&registry.name),
        None,
        Some(json!({
            "prefix": updated.prefix,
            "upstream": updated.upstream_host,
            "upstream_prefix": updated.upstream_prefix,
            "revalidate_secs": updated.revalidate_secs,
        })),
    )
    .await;
    Ok(Json(CacheView::of(updated)))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/caches/{prefix}", tag = "caches",
    params(("name" = String, Path, description = "Registry name"), ("prefix" = String, Path, description = "The cache's prefix (a `/` in it as %2F)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; what it cached stays until deleted and collected"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, prefix)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let current = find_cache(&state, &registry, &prefix).await?;
    if !state
        .meta
        .delete_cache(registry.id, &current.prefix)
        .await?
    {
        return Err(Problem::not_found(format!(
            "cache {prefix:?} was deleted meanwhile"
        )));
    }
    state.forget_registry_ref(&registry.name);
    super::audit_change(
        &state,
        &admin,
        "cache.delete",
        Some(&registry.name),
        None,
        Some(json!({ "prefix": current.prefix })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
