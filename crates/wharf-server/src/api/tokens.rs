use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use wharf_auth::token::generate_token_secret;
use wharf_auth::{Permission, Scope};
use wharf_meta::{NewScope, Registry, TokenRecord};
use wharf_oci::RegistryName;

use super::auth::Admin;
use super::problem::{ApiJson, ApiQuery, Problem};
use super::registries::{find, PageQuery};
use super::{page_limit, rfc3339};
use crate::AppState;

/// A scope: `registry` (list the catalog) or `repository` with a name or `*` pattern and
/// actions among pull, push, delete (push needs pull).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScopeSpec {
    Registry,
    Repository {
        /// Repository name or pattern; `*` matches any characters.
        #[schema(
            pattern = r"^[a-z0-9*]+((\.|_|__|-+)[a-z0-9*]+)*(/[a-z0-9*]+((\.|_|__|-+)[a-z0-9*]+)*)*$"
        )]
        path: String,
        #[schema(min_items = 1)]
        actions: Vec<ActionName>,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    Pull,
    Push,
    Delete,
}

impl ActionName {
    fn as_str(self) -> &'static str {
        match self {
            ActionName::Pull => "pull",
            ActionName::Push => "push",
            ActionName::Delete => "delete",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeView {
    pub id: i64,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub registry: String,
    pub enabled: bool,
    /// RFC 3339; the token is deleted when it passes.
    pub expires_at: Option<String>,
    pub created_at: String,
    pub scopes: Vec<ScopeView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 3–63 characters of a-z, 0-9 and '-', starting with a letter; the login user name.
    #[schema(pattern = "^[a-z][a-z0-9-]{1,61}[a-z0-9]$")]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<ScopeSpec>,
    /// RFC 3339 UTC time (e.g. 2027-01-31T00:00:00Z), at least an hour ahead.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret (the login password). Shown only here, once; wharf keeps a slow hash.
    pub secret: String,
    /// Log in with the secret on standard input.
    pub docker_login: String,
    /// An entry for `~/.docker/config.json`.
    pub docker_config: Value,
    /// A Kubernetes image-pull Secret (`kubernetes.io/dockerconfigjson`), as YAML.
    pub kubernetes_secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    pub enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPage {
    pub items: Vec<TokenView>,
    pub next: Option<String>,
}

fn scope_of(spec: &ScopeSpec) -> Result<Scope, Problem> {
    let scope = match spec {
        ScopeSpec::Registry => Scope::new("registry", None, &[]),
        ScopeSpec::Repository { path, actions } => {
            let actions: Vec<String> = actions.iter().map(|a| a.as_str().to_string()).collect();
            Scope::new("repository", Some(path), &actions)
        }
    };
    scope.map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

fn stored(scope: &Scope) -> NewScope<'_> {
    let actions: Vec<&str> = scope.actions().iter().map(|a| a.as_str()).collect();
    (scope.kind(), scope.path(), actions.join(" "))
}

fn view(registry: &Registry, t: TokenRecord) -> TokenView {
    TokenView {
        name: t.name,
        registry: registry.name.clone(),
        enabled: t.enabled,
        expires_at: t.expires_at.map(rfc3339),
        created_at: rfc3339(t.created_at),
        scopes: t
            .scopes
            .into_iter()
            .map(|s| ScopeView {
                id: s.id,
                kind: s.kind,
                path: (!s.path.is_empty()).then_some(s.path),
                actions: s.actions.split_whitespace().map(String::from).collect(),
            })
            .collect(),
    }
}

async fn find_token(
    state: &AppState,
    registry: &Registry,
    name: &str,
) -> Result<TokenRecord, Problem> {
    state.meta.token(registry.id, name).await?.ok_or_else(|| {
        Problem::not_found(format!(
            "registry {:?} has no token named {name:?}",
            registry.name
        ))
    })
}

/// The host clients log in to (see [`crate::Settings::registry_address`]).
fn login_host(state: &AppState, registry: &str, headers: &HeaderMap) -> String {
    let request_host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    state.settings.registry_address(registry, request_host)
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Registry name"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TokenPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<TokenPage>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let limit = page_limit(q.limit)?;
    let registry = find(&state, &name).await?;
    let (tokens, more) = state
        .meta
        .list_tokens(registry.id, q.after.as_deref(), limit)
        .await?;
    let next = more
        .then(|| tokens.last().map(|t| t.name.clone()))
        .flatten();
    let items = tokens.into_iter().map(|t| view(&registry, t)).collect();
    Ok(Json(TokenPage { items, next }))
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/tokens", tag = "tokens", request_body = CreateToken,
    params(("name" = String, Path, description = "Registry name")),
    security(("bearer" = [])),
    responses(
        (status = 201, body = NewToken),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The name is taken"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let invalid = |m: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    RegistryName::parse(&body.name)
        .map_err(|e| invalid(format!("token name {:?} is invalid: {e}", body.name)))?;
    if body.scopes.is_empty() {
        return Err(invalid("a token needs at least one scope".to_string()));
    }
    let scopes = body
        .scopes
        .iter()
        .map(scope_of)
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = match &body.expires_at {
        None => None,
        Some(text) => {
            let t = humantime::parse_rfc3339(text).map_err(|e| {
                invalid(format!("expires_at {text:?} is not an RFC 3339 UTC time ({e}), e.g. 2027-01-31T00:00:00Z"))
            })?;
            let millis = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let earliest = wharf_meta::now_millis() + state.settings.min_token_lifetime_secs * 1000;
            if millis < earliest {
                return Err(invalid(format!(
                    "expires_at must be at least {} seconds in the future",
                    state.settings.min_token_lifetime_secs
                )));
            }
            Some(millis)
        }
    };
    let (secret, hash) = tokio::task::spawn_blocking(generate_token_secret)
        .await
        .map_err(|e| Problem::internal("generating a token", e))?
        .map_err(|e| Problem::internal("generating a token", e))?;
    let new_scopes: Vec<NewScope<'_>> = scopes.iter().map(stored).collect();
    let token = state
        .meta
        .create_token(registry.id, &body.name, &hash, expires_at, &new_scopes)
        .await?;
    super::audit_change(
        &state,
        &admin,
        "token.create",
        Some(&registry.name),
        None,
        Some(json!({ "token": token.name })),
    )
    .await;

    let host = login_host(&state, &registry.name, &headers);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", token.name));
    let docker_config = json!({ "auths": { host.clone(): { "auth": auth } } });
    let dockerconfigjson =
        base64::engine::general_purpose::STANDARD.encode(docker_config.to_string());
    let kubernetes_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}-{}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {dockerconfigjson}\n",
        registry.name, token.name
    );
    let body = NewToken {
        docker_login: format!("docker login {host} -u {} --password-stdin", token.name),
        token: view(&registry, token),
        secret,
        docker_config,
        kubernetes_secret,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/tokens/{token}", tag = "tokens",
    params(("name" = String, Path, description = "Registry name"), ("token" = String, Path, description = "Token name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TokenView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, token)): Path<(String, String)>,
) -> Result<Json<TokenView>, Problem> {
    admin.require(Permission::RegistryRead)?;
    let registry = find(&state, &name).await?;
    let t = find_token(&state, &registry, &token).await?;
    Ok(Json(view(&registry, t)))
}

#[utoipa::path(
    patch, path = "/api/v1/registries/{name}/tokens/{token}", tag = "tokens", request_body = UpdateToken,
    params(("name" = String, Path, description = "Registry name"), ("token" = String, Path, description = "Token name")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TokenView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, token)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateToken>,
) -> Result<Json<TokenView>, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let t = find_token(&state, &registry, &token).await?;
    state.meta.set_token_enabled(t.id, body.enabled).await?;
    state.forget_token(t.id);
    let action = if body.enabled {
        "token.enable"
    } else {
        "token.disable"
    };
    super::audit_change(
        &state,
        &admin,
        action,
        Some(&registry.name),
        None,
        Some(json!({ "token": t.name })),
    )
    .await;
    let t = find_token(&state, &registry, &token).await?;
    Ok(Json(view(&registry, t)))
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/tokens/{token}", tag = "tokens",
    params(("name" = String, Path, description = "Registry name"), ("token" = String, Path, description = "Token name")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; it stops working at once"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, token)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let t = find_token(&state, &registry, &token).await?;
    state.meta.delete_token(t.id).await?;
    state.forget_token(t.id);
    super::audit_change(
        &state,
        &admin,
        "token.delete",
        Some(&registry.name),
        None,
        Some(json!({ "token": t.name })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/tokens/{token}/scopes", tag = "tokens", request_body = ScopeSpec,
    params(("name" = String, Path, description = "Registry name"), ("token" = String, Path, description = "Token name")),
    security(("bearer" = [])),
    responses(
        (status = 201, body = TokenView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_scope(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, token)): Path<(String, String)>,
    ApiJson(body): ApiJson<ScopeSpec>,
) -> Result<Response, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let registry = find(&state, &name).await?;
    let t = find_token(&state, &registry, &token).await?;
    let scope = scope_of(&body)?;
    state.meta.add_token_scope(t.id, &stored(&scope)).await?;
    state.forget_token(t.id);
    super::audit_change(
        &state,
        &admin,
        "token.scope.add",
        Some(&registry.name),
        None,
        Some(json!({ "token": t.name, "scope": body })),
    )
    .await;
    let t = find_token(&state, &registry, &token).await?;
    Ok((StatusCode::CREATED, Json(view(&registry, t))).into_response())
}

#[utoipa::path(
    delete, path = "/api/v1/registries/{name}/tokens/{token}/scopes/{id}", tag = "tokens",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("token" = String, Path, description = "Token name"),
        ("id" = i64, Path, description = "Scope id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed; the token loses the right at once"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_scope(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((name, token, id)): Path<(String, String, String)>,
) -> Result<StatusCode, Problem> {
    admin.require(Permission::RegistryWrite)?;
    let id = super::path_id("scope", &id)?;
    let registry = find(&state, &name).await?;
    let t = find_token(&state, &registry, &token).await?;
    let removed = state.meta.remove_token_scope(t.id, id).await?;
    state.forget_token(t.id);
    if !removed {
        return Err(Problem::not_found(format!(
            "token {token:?} has no scope {id}"
        )));
    }
    super::audit_change(
        &state,
        &admin,
        "token.scope.remove",
        Some(&registry.name),
        None,
        Some(json!({ "token": t.name, "scope": id })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
