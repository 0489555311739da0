use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use wharf_auth::Permission;

use super::auth::Admin;
use super::problem::Problem;
use crate::AppState;

/// How this server is set up: what an operator checks after a change of configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemView {
    pub version: String,
    /// Where content is stored: `file` (the data directory) or `s3://bucket/prefix`.
    pub storage: String,
    pub encryption: EncryptionView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EncryptionView {
    /// Whether content and stored secrets are sealed under keys the master key wraps.
    pub enabled: bool,
    /// The master key's id; absent when encryption is off.
    pub key_id: Option<String>,
    /// What is encrypted today.
    pub covers: Vec<String>,
}

impl EncryptionView {
    pub(crate) fn of(state: &AppState) -> EncryptionView {
        let key_id = state
            .content_keys
            .as_ref()
            .map(|k| k.current().id().to_string());
        EncryptionView {
            enabled: key_id.is_some(),
            covers: if key_id.is_some() {
                ["blobs", "manifests", "upload state", "secrets"]
                    .map(String::from)
                    .to_vec()
            } else {
                Vec::new()
            },
            key_id,
        }
    }
}

#[utoipa::path(
    get, path = "/api/v1/system", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, body = SystemView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<SystemView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    Ok(Json(SystemView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        storage: state.settings.storage.clone(),
        encryption: EncryptionView::of(&state),
    }))
}

/// The master keys and how far a rotation has come.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysView {
    /// The master key that wraps new data keys.
    pub current: String,
    /// The master keys this node holds, the current one first.
    pub loaded: Vec<String>,
    /// How many data keys each master key wraps.
    pub data_keys: Vec<MasterKeyUse>,
    /// Data keys still wrapped by an older master key: what a rotation has left to do.
    pub pending: i64,
    /// Whether this node is rewrapping data keys now.
    pub rewrapping: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MasterKeyUse {
    pub key_id: String,
    pub data_keys: i64,
}

fn content_keys(state: &AppState) -> Result<&Arc<crate::ContentKeys>, Problem> {
    state
        .content_keys
        .as_ref()
        .ok_or_else(|| Problem::conflict("encryption at rest is off: there are no master keys"))
}

async fn keys_view(keys: &crate::ContentKeys) -> Result<KeysView, Problem> {
    let status = keys.status().await?;
    Ok(KeysView {
        current: status.current,
        loaded: status.loaded,
        data_keys: status
            .data_keys
            .into_iter()
            .map(|(key_id, data_keys)| MasterKeyUse { key_id, data_keys })
            .collect(),
        pending: status.pending,
        rewrapping: status.rewrapping,
    })
}

#[utoipa::path(
    get, path = "/api/v1/system/keys", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, body = KeysView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn keys(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<KeysView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    Ok(Json(keys_view(content_keys(&state)?).await?))
}

/// Adds a new master key and rewraps every data key under it in the background; the old key
/// is retired when nothing uses it any more. Pushes and pulls go on meanwhile.
#[utoipa::path(
    post, path = "/api/v1/system/keys/rotate", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 202, body = KeysView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<(axum::http::StatusCode, Json<KeysView>), Problem> {
    admin.require(Permission::Owner)?;
    let keys = content_keys(&state)?;
    let id = keys.rotate().map_err(|e| match e {
        crate::RotateError::Io(why) => Problem::internal("rotating the master key", why),
        other => Problem::conflict(other.to_string()),
    })?;
    // JWTs are signed by a new key too; the old one verifies until its JWTs expire.
    let kid = crate::jwt::add(&state.meta, keys)
        .await
        .map_err(|e| Problem::internal("adding a JWT signing key", e))?;
    state.reload_jwt_keys().await;
    let detail = serde_json::json!({ "key": id, "jwt_key": kid });
    super::audit_change(&state, &admin, "keys.rotate", None, None, Some(detail)).await;
    keys.spawn_rewrap();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(keys_view(keys).await?),
    ))
}
