use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_auth::{generate_admin_key, Permission, Permissions};
use wharf_meta::AdminKey;
use wharf_oci::RegistryName;

use super::auth::Admin;
use super::problem::{ApiJson, ApiQuery, Problem};
use super::{page_limit, rfc3339};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKey {
    /// A label for the key, by the registry-name rules (e.g. `alice-laptop`).
    #[schema(pattern = "^[a-z][a-z0-9-]{1,61}[a-z0-9]$")]
    pub name: String,
    /// At least one permission.
    #[schema(min_items = 1)]
    pub permissions: Vec<PermissionName>,
}

/// What a key may do; `owner` includes everything, key management too.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub enum PermissionName {
    #[serde(rename = "registry:read")]
    RegistryRead,
    #[serde(rename = "registry:write")]
    RegistryWrite,
    #[serde(rename = "registry:delete")]
    RegistryDelete,
    #[serde(rename = "owner")]
    Owner,
}

impl From<PermissionName> for Permission {
    fn from(p: PermissionName) -> Permission {
        match p {
            PermissionName::RegistryRead => Permission::RegistryRead,
            PermissionName::RegistryWrite => Permission::RegistryWrite,
            PermissionName::RegistryDelete => Permission::RegistryDelete,
            PermissionName::Owner => Permission::Owner,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminKeyView {
    pub id: i64,
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub permissions: Vec<String>,
    pub created_at: String,
    pub created_by: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewAdminKey {
    #[serde(flatten)]
    pub key: AdminKeyView,
    /// The secret. It is shown only here, once; wharf keeps only its hash.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminKeyList {
    pub items: Vec<AdminKeyView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyPageQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Start after this key id.
    pub after: Option<i64>,
}

fn view(k: AdminKey) -> AdminKeyView {
    AdminKeyView {
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        permissions: k.permissions.split_whitespace().map(String::from).collect(),
        created_at: rfc3339(k.created_at),
        created_by: k.created_by,
        revoked_at: k.revoked_at.map(rfc3339),
    }
}

#[utoipa::path(
    get, path = "/api/v1/admin-keys", tag = "admin-keys", params(KeyPageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdminKeyList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiQuery(q): ApiQuery<KeyPageQuery>,
) -> Result<Json<AdminKeyList>, Problem> {
    admin.require(Permission::Owner)?;
    let limit = page_limit(q.limit)?;
    let (keys, more) = state.meta.list_admin_keys(q.after, limit).await?;
    let next = more.then(|| keys.last().map(|k| k.id)).flatten();
    let items = keys.into_iter().map(view).collect();
    Ok(Json(AdminKeyList { items, next }))
}

#[utoipa::path(
    post, path = "/api/v1/admin-keys", tag = "admin-keys", request_body = CreateAdminKey,
    security(("bearer" = [])),
    responses(
        (status = 201, body = NewAdminKey),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateAdminKey>,
) -> Result<Response, Problem> {
    admin.require(Permission::Owner)?;
    let invalid = |m: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    RegistryName::parse(&body.name)
        .map_err(|e| invalid(format!("key name {:?} is invalid: {e}", body.name)))?;
    let permissions: Vec<Permission> = body.permissions.iter().map(|p| (*p).into()).collect();
    if permissions.is_empty() {
        return Err(invalid("a key needs at least one permission".to_string()));
    }
    let permissions = Permissions::new(permissions).to_string();
    let secret = generate_admin_key().map_err(|e| Problem::internal("generating a key", e))?;
    let key = state
        .meta
        .create_admin_key(
            &body.name,
            &secret.hash,
            &secret.prefix,
            &permissions,
            Some(&admin.actor()),
        )
        .await?;
    super::audit_change(
        &state,
        &admin,
        "admin-key.create",
        None,
        None,
        Some(serde_json::json!({ "id": key.id, "name": key.name, "permissions": permissions })),
    )
    .await;
    let body = NewAdminKey {
        key: view(key),
        secret: secret.secret,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    delete, path = "/api/v1/admin-keys/{id}", tag = "admin-keys",
    params(("id" = i64, Path, description = "Key id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked; it stops working at once"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::Owner)?;
    let id = super::path_id("key", &id)?;
    let key = state
        .meta
        .revoke_admin_key(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no live administrator key with id {id}")))?;
    super::audit_change(
        &state,
        &admin,
        "admin-key.revoke",
        None,
        None,
        Some(serde_json::json!({ "id": key.id, "name": key.name })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
