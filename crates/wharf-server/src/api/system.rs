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
        let key_id = state.settings.encryption_key.clone();
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
