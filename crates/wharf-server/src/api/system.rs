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
    /// Bytes of every stored blob (each stored once however many repositories and registries
    /// share it; apart per registry key): the instance's physical total.
    pub stored_bytes: i64,
    pub encryption: EncryptionView,
    /// The locations a registry may be created in.
    pub locations: Vec<String>,
    /// Registries are reached at `<name>.<base_domain>`.
    pub base_domain: String,
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
        stored_bytes: state.meta.stored_bytes().await?,
        encryption: EncryptionView::of(&state),
        locations: state.settings.locations.clone(),
        base_domain: state.settings.base_domain.clone(),
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

/// Sealing what was stored before encryption was on.
#[derive(Debug, Serialize, ToSchema)]
pub struct SealExistingView {
    /// Whether it is running on this node now.
    pub running: bool,
    pub blobs_checked: u64,
    pub blobs_sealed: u64,
    pub manifests_sealed: u64,
    /// Blobs that could not be sealed (the log names them), e.g. whose bytes no longer match
    /// their digest.
    pub failed: u64,
    /// When the last run ended (RFC 3339).
    pub finished_at: Option<String>,
    /// What stopped the last run early, if anything.
    pub error: Option<String>,
}

fn seal_existing_view(state: &AppState) -> SealExistingView {
    use std::sync::atomic::Ordering::Relaxed;
    let p = &state.seal_progress;
    let finished = p.finished.lock().unwrap_or_else(|e| e.into_inner()).clone();
    SealExistingView {
        running: p.running.load(Relaxed),
        blobs_checked: p.blobs_checked.load(Relaxed),
        blobs_sealed: p.blobs_sealed.load(Relaxed),
        manifests_sealed: p.manifests_sealed.load(Relaxed),
        failed: p.failed.load(Relaxed),
        finished_at: finished.as_ref().map(|(at, _)| super::rfc3339(*at)),
        error: finished.and_then(|(_, e)| e),
    }
}

#[utoipa::path(
    get, path = "/api/v1/system/keys/encrypt-existing", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, body = SealExistingView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sealing_existing(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<SealExistingView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    Ok(Json(seal_existing_view(&state)))
}

/// Seals, in the background, every blob and manifest stored in the clear before encryption
/// was switched on. Pulls go on meanwhile; started again after a stop, it skips what is sealed.
#[utoipa::path(
    post, path = "/api/v1/system/keys/encrypt-existing", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 202, body = SealExistingView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn seal_existing(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<(axum::http::StatusCode, Json<SealExistingView>), Problem> {
    use std::sync::atomic::Ordering::Relaxed;
    admin.require(Permission::Owner)?;
    content_keys(&state)?;
    let progress = state.seal_progress.clone();
    if progress.running.swap(true, Relaxed) {
        return Err(Problem::conflict(
            "encrypting existing content is already running on this node",
        ));
    }
    for counter in [
        &progress.blobs_checked,
        &progress.blobs_sealed,
        &progress.manifests_sealed,
        &progress.failed,
    ] {
        counter.store(0, Relaxed);
    }
    super::audit_change(&state, &admin, "keys.encrypt-existing", None, None, None).await;
    let job = state.clone();
    tokio::spawn(async move {
        let outcome = job.service().seal_existing(&job.seal_progress).await;
        let error = outcome.err().map(|e| {
            tracing::warn!(error = %e, "encrypting existing content stopped");
            e.to_string()
        });
        if error.is_none() {
            tracing::info!(
                blobs = job.seal_progress.blobs_sealed.load(Relaxed),
                manifests = job.seal_progress.manifests_sealed.load(Relaxed),
                "existing content encrypted"
            );
        }
        *job.seal_progress
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((wharf_meta::now_millis(), error));
        job.seal_progress.running.store(false, Relaxed);
    });
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(seal_existing_view(&state)),
    ))
}
