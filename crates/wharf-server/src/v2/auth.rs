//! Who is calling `/v2/` and what they may do: robot tokens over HTTP Basic or as the Bearer
//! JWTs of the Docker token flow, and anonymous pulls of public repositories.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use sha2::{Digest as _, Sha256};
use wharf_auth::token::{verify_jwt, verify_token_secret, Claims};
use wharf_auth::{Action, Pattern, Rights, Scope};
use wharf_meta::TokenRecord;
use wharf_oci::ErrorCode;

use crate::{ApiError, AppState};

/// The registry a request addresses.
pub(crate) struct Target {
    pub id: i64,
    /// The registry's name.
    pub name: String,
    /// Requests per second each of its tokens may make; `None`: the server's setting.
    pub rate_limit: Option<i64>,
    /// Maintenance mode: writes are refused.
    pub read_only: bool,
    /// The registry's own master key, if it has one.
    pub key_id: Option<String>,
    /// Bytes the registry may store, if it has a quota.
    pub quota_bytes: Option<i64>,
    /// Whether pushed images are scanned.
    pub scanning: bool,
    /// Its pull-through caches.
    pub caches: Arc<Vec<wharf_meta::CacheRecord>>,
    /// The service name JWTs are issued for: the registry's host name.
    pub service: String,
    /// The Host the client used, for the realm of the challenge.
    pub host: String,
}

/// The caller of a request.
pub(crate) enum Caller {
    Anonymous,
    Token {
        id: i64,
        name: String,
        rights: Rights,
        /// With a JWT, what it grants; the token's current scopes must allow it as well.
        granted: Option<Rights>,
    },
}

impl Caller {
    pub fn can(&self, repository: &str, action: Action) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Token {
                rights, granted, ..
            } => {
                rights.can(repository, action)
                    && granted.as_ref().is_none_or(|g| g.can(repository, action))
            }
        }
    }

    pub fn can_list_catalog(&self) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Token {
                rights, granted, ..
            } => rights.can_list_catalog() && granted.as_ref().is_none_or(|g| g.can_list_catalog()),
        }
    }

    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".to_string(),
            Caller::Token { id, name, .. } => format!("token:{name}#{id}"),
        }
    }
}

/// The rights a token's stored scopes give.
pub(crate) fn rights_of(token: &TokenRecord) -> Rights {
    let scopes = token
        .scopes
        .iter()
        .filter_map(|s| {
            let actions: Vec<String> = s.actions.split_whitespace().map(String::from).collect();
            let path = (!s.path.is_empty()).then_some(s.path.as_str());
            Scope::new(&s.kind, path, &actions).ok()
        })
        .collect();
    Rights::new(scopes)
}

/// The rights a JWT grants: exactly the repositories and actions it names.
fn rights_of_claims(claims: &Claims) -> Rights {
    let mut scopes = Vec::new();
    for a in &claims.access {
        match a.kind.as_str() {
            "registry" if a.name == "catalog" => scopes.push(Scope::Registry),
            "repository" => {
                if let Ok(pattern) = Pattern::parse(&a.name.replace('*', "")) {
                    let actions: Vec<Action> =
                        a.actions.iter().filter_map(|x| Action::parse(x)).collect();
                    if !actions.is_empty() {
                        scopes.push(Scope::Repository { pattern, actions });
                    }
                }
            }
            _ => {}
        }
    }
    Rights::new(scopes)
}

pub(crate) fn now_millis() -> i64 {
    wharf_meta::now_millis()
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::with_message(ErrorCode::Unauthorized, detail, None)
}

/// Checks `name:secret` against the registry's token, caching successful checks of the slow
/// hash for a minute. The token's state is read from the database every time, so disabling,
/// deleting or expiring a token applies at once.
pub(crate) async fn check_secret(
    state: &AppState,
    registry_id: i64,
    name: &str,
    secret: &str,
) -> Result<TokenRecord, ApiError> {
    let Some(token) = state.token_by_name(registry_id, name).await? else {
        // A token deleted at its expiry is named so: the client can say why it was refused.
        if let Some(at) = state.meta.token_expired_at(registry_id, name).await? {
            return Err(unauthorized(&format!(
                "this token expired at {}",
                crate::api::rfc3339(at)
            )));
        }
        return Err(unauthorized("unknown token or wrong secret"));
    };
    if !token.enabled {
        return Err(unauthorized("this token is disabled"));
    }
    if !token.usable(now_millis()) {
        return Err(unauthorized("this token has expired"));
    }
    let key = (
        token.id,
        Sha256::digest(format!("{}\0{secret}", token.secret_hash)).into(),
    );
    let cached = || {
        let cache = state.verified.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&key).is_some_and(|t| t.elapsed() < VERIFIED_TTL)
    };
    if cached() {
        return Ok(token);
    }
    let _one_check = state.secret_checks.lock(&format!("{key:?}")).await;
    // Another request may have checked the same secret while this one waited.
    if !cached() {
        let _permit = state
            .hashing
            .acquire()
            .await
            .map_err(|e| ApiError::internal("hashing limiter closed", e))?;
        let (secret, hash) = (secret.to_string(), token.secret_hash.clone());
        let ok = tokio::task::spawn_blocking(move || verify_token_secret(&secret, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(unauthorized("unknown token or wrong secret"));
        }
        let mut cache = state.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, t| t.elapsed() < VERIFIED_TTL);
        }
        cache.insert(key, Instant::now());
    }
    Ok(token)
}

const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Decodes `Authorization: Basic` into name and secret.
pub(crate) fn basic_credentials(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, secret) = text.split_once(':')?;
    Some((name.to_string(), secret.to_string()))
}

/// Identifies the caller of a `/v2/` request.
pub(crate) async fn identify(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    if value.starts_with("Basic ") {
        let (name, secret) =
            basic_credentials(value).ok_or_else(|| unauthorized("malformed Basic credentials"))?;
        let token = check_secret(state, target.id, &name, &secret).await?;
        return Ok(Caller::Token {
            id: token.id,
            name: token.name.clone(),
            rights: rights_of(&token),
            granted: None,
        });
    }
    if let Some(jwt) = value.strip_prefix("Bearer ") {
        let jwt = jwt.trim();
        let kid = wharf_auth::token::jwt_kid(jwt);
        let key = state.jwt_verify_key(kid.as_deref()).await.ok_or_else(|| {
            unauthorized("the bearer token is signed by a key this registry does not know")
        })?;
        let claims = verify_jwt(jwt, &key, &target.service)
            .map_err(|e| unauthorized(&format!("the bearer token is not valid here: {e}")))?;
        let Some(tid) = claims.tid else {
            // Issued to an anonymous client: good for public repositories only.
            return Ok(Caller::Anonymous);
        };
        // Ids are never reused, and a token created after the JWT was issued cannot be the
        // one it was issued to, whatever its id.
        let token = state
            .token_by_id(tid)
            .await?
            .filter(|t| {
                t.registry_id == target.id
                    && t.usable(now_millis())
                    && t.created_at / 1000 <= claims.iat
            })
            .ok_or_else(|| {
                unauthorized("the token behind this bearer token is gone or disabled")
            })?;
        return Ok(Caller::Token {
            id: token.id,
            name: token.name.clone(),
            rights: rights_of(&token),
            granted: Some(rights_of_claims(&claims)),
        });
    }
    Err(unauthorized(
        "unsupported Authorization scheme; use Basic or Bearer",
    ))
}

/// Whether the caller may read `repo`: its rights allow it, or the repository is public.
/// Every parameter naming another repository (a mount's `from`) is checked with this too.
pub(crate) async fn may_pull(
    state: &AppState,
    registry_id: i64,
    caller: &Caller,
    repo: &str,
) -> Result<bool, ApiError> {
    Ok(
        caller.can(repo, Action::Pull)
            || state.meta.repository_is_public(registry_id, repo).await?,
    )
}

/// What an endpoint needs.
pub(crate) enum Need<'a> {
    /// Any valid credentials (the `/v2/` version check).
    Login,
    Catalog,
    Repository(&'a str, Action),
}

/// 401 with the challenge that starts the token flow.
pub(crate) fn challenge(
    settings: &crate::Settings,
    target: &Target,
    scope: Option<String>,
    detail: &str,
) -> ApiError {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        settings.realm(&target.name, &target.host),
        target.service
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    unauthorized(detail).header(header::WWW_AUTHENTICATE, &value)
}

/// Allows the request, or answers 401 (no valid credentials) or 403 (valid, not allowed).
pub(crate) async fn authorize(
    state: &AppState,
    target: &Target,
    caller: &Caller,
    need: Need<'_>,
) -> Result<(), ApiError> {
    let denied = |what: String| {
        ApiError::with_message(ErrorCode::Denied, what, None).status(StatusCode::FORBIDDEN)
    };
    match need {
        Need::Login => match caller {
            Caller::Token { .. } => Ok(()),
            Caller::Anonymous => Err(challenge(
                &state.settings,
                target,
                None,
                "authentication required",
            )),
        },
        Need::Catalog => match caller {
            _ if caller.can_list_catalog() => Ok(()),
            Caller::Token { .. } => Err(denied(
                "listing the catalog needs a token with the registry scope".to_string(),
            )),
            Caller::Anonymous => Err(challenge(
                &state.settings,
                target,
                Some("registry:catalog:*".to_string()),
                "authentication required",
            )),
        },
        Need::Repository(repo, action) => {
            let allowed = match action {
                Action::Pull => may_pull(state, target.id, caller, repo).await?,
                _ => caller.can(repo, action),
            };
            if allowed {
                return Ok(());
            }
            match caller {
                Caller::Token { .. } => Err(denied(format!(
                    "this token may not {action} repository {repo:?}"
                ))),
                Caller::Anonymous => {
                    let actions = match action {
                        Action::Pull => "pull",
                        Action::Push => "pull,push",
                        Action::Delete => "delete",
                    };
                    Err(challenge(
                        &state.settings,
                        target,
                        Some(format!("repository:{repo}:{actions}")),
                        "authentication required",
                    ))
                }
            }
        }
    }
}
