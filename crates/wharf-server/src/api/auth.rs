//! Authentication of administrators by API key, and permission checks.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use wharf_auth::{hash_admin_key, Permission, Permissions};
use wharf_meta::AdminKey;

use super::problem::Problem;
use crate::AppState;

/// The administrator behind a request, authenticated by `Authorization: Bearer <key>`.
pub struct Admin {
    pub key: AdminKey,
    pub permissions: Permissions,
}

impl Admin {
    /// 403 unless the key holds `permission` (an owner holds all).
    pub fn require(&self, permission: Permission) -> Result<(), Problem> {
        if self.permissions.allows(permission) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this key lacks the {permission} permission (it has: {})",
                    if self.permissions.is_empty() {
                        "none".to_string()
                    } else {
                        self.permissions.to_string()
                    }
                ),
            ))
        }
    }

    /// How the audit log names this administrator.
    pub fn actor(&self) -> String {
        format!("admin-key:{}#{}", self.key.name, self.key.id)
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let unauthorized = |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, detail);
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            // The console's session, when its script calls.
            return match crate::console::session_key(&parts.headers) {
                Some(key) => Admin::by_key(state, key).await,
                None => Err(unauthorized(
                    "send an administrator key as Authorization: Bearer <key>",
                )),
            };
        };
        let value = value
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
        let secret = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be: Bearer <key>"))?;
        Admin::by_key(state, secret).await
    }
}

impl Admin {
    /// The administrator holding `secret`; 401 when no live key is that.
    pub(crate) async fn by_key(state: &AppState, secret: &str) -> Result<Admin, Problem> {
        let key = state
            .meta
            .admin_key_by_hash(&hash_admin_key(secret))
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "the administrator key is unknown or revoked",
                )
            })?;
        let permissions = Permissions::parse(&key.permissions)
            .map_err(|e| Problem::internal("stored key permissions unreadable", e))?;
        Ok(Admin { key, permissions })
    }
}
