//! `/auth/token`: the Docker registry token endpoint. Clients trade a robot token's name and
//! secret (HTTP Basic, or the OAuth2 password form) for a short-lived JWT limited to what they
//! asked for and what the token's scopes allow.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wharf_auth::token::{sign_jwt, Access, Claims, ISSUER};
use wharf_auth::{Action, Rights};
use wharf_oci::{ErrorCode, RepositoryName};

use crate::v2::auth::{basic_credentials, check_secret, now_millis, rights_of};
use crate::{ApiError, AppState};

/// Lifetime of issued JWTs.
pub const JWT_SECONDS: i64 = 300;

/// One requested scope: `repository:<name>:<actions>` or `registry:catalog:*`.
enum Requested {
    Repository(String, Vec<Action>),
    Catalog,
}

fn bad_request(detail: String) -> ApiError {
    ApiError::with_message(ErrorCode::Unsupported, detail, None).status(StatusCode::BAD_REQUEST)
}

fn parse_scope(s: &str) -> Result<Requested, ApiError> {
    let bad = || {
        bad_request(format!(
            "scope {s:?} is not of the form repository:<name>:<actions> or registry:catalog:*"
        ))
    };
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
    match kind {
        "registry" if name == "catalog" => Ok(Requested::Catalog),
        "repository" => {
            RepositoryName::parse(name).map_err(|e| bad_request(format!("scope {s:?}: {e}")))?;
            let mut wanted = Vec::new();
            for a in actions.split(',') {
                match a {
                    "*" => wanted.extend(Action::ALL),
                    other => match Action::parse(other) {
                        Some(action) => wanted.push(action),
                        None => {
                            return Err(bad_request(format!(
                                "scope {s:?}: unknown action {other:?}; use pull, push, delete or *"
                            )))
                        }
                    },
                }
            }
            wanted.sort();
            wanted.dedup();
            Ok(Requested::Repository(name.to_string(), wanted))
        }
        _ => Err(bad()),
    }
}

pub async fn token(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match issue(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let target = crate::v2::resolve_target(state, &parts).await?;
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if parts.method == Method::POST {
        let body: Bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|_| bad_request("the token request body is too large or unreadable".into()))?;
        params.extend(form_urlencoded::parse(&body).into_owned());
        let grant = params
            .iter()
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.as_str());
        if grant.is_some_and(|g| g != "password") {
            return Err(bad_request("only grant_type=password is supported".into()));
        }
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };

    if let Some(service) = get("service") {
        if service != target.service {
            return Err(bad_request(format!(
                "service {service:?} is not this registry ({})",
                target.service
            )));
        }
    }
    let credentials = match parts.headers.get(header::AUTHORIZATION) {
        Some(v) => Some(v.to_str().ok().and_then(basic_credentials).ok_or_else(|| {
            ApiError::with_message(ErrorCode::Unauthorized, "malformed Basic credentials", None)
        })?),
        None => match (get("username"), get("password")) {
            (Some(u), Some(p)) => Some((u, p)),
            _ => None,
        },
    };
    let token = match credentials {
        Some((name, secret)) => Some(check_secret(state, target.id, &name, &secret).await?),
        None => None,
    };
    let rights = token
        .as_ref()
        .map(rights_of)
        .unwrap_or_else(|| Rights::new(Vec::new()));

    let mut access = Vec::new();
    for value in params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v) {
        for s in value.split_whitespace() {
            match parse_scope(s)? {
                Requested::Catalog => {
                    if rights.can_list_catalog() {
                        access.push(Access {
                            kind: "registry".into(),
                            name: "catalog".into(),
                            actions: vec!["*".into()],
                        });
                    }
                }
                Requested::Repository(name, wanted) => {
                    let mut granted = rights.granted(&name, &wanted);
                    if wanted.contains(&Action::Pull)
                        && !granted.contains(&Action::Pull)
                        && state.meta.repository_is_public(target.id, &name).await?
                    {
                        granted.push(Action::Pull);
                    }
                    access.push(Access {
                        kind: "repository".into(),
                        name,
                        actions: granted.iter().map(|a| a.as_str().to_string()).collect(),
                    });
                }
            }
        }
    }
    let now = now_millis() / 1000;
    let claims = Claims {
        iss: ISSUER.to_string(),
        sub: token.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
        aud: target.service.clone(),
        exp: now + JWT_SECONDS,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        tid: token.as_ref().map(|t| t.id),
        access,
    };
    let keys = state.jwt();
    let (kid, key) = keys.signing();
    let jwt = sign_jwt(&claims, kid, key).map_err(|e| ApiError::internal("signing a JWT", e))?;
    let issued_at = crate::api::rfc3339(now * 1000);
    let body = json!({ "token": jwt, "access_token": jwt, "expires_in": JWT_SECONDS, "issued_at": issued_at });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}
