//! The OCI distribution protocol at `/v2/`.

pub(crate) mod auth;
mod blobs;
mod listing;
mod manifests;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use wharf_oci::{ErrorCode, RepositoryName};
use wharf_store::ByteStream;

use auth::{Caller, Need, Target};
use wharf_auth::Action;

use crate::route::{self, Endpoint};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

/// What every repository-scoped handler needs: the state, the registry, the repository and
/// who is calling.
pub(crate) struct Repo<'a> {
    state: &'a Arc<AppState>,
    registry_id: i64,
    /// The registry's own master key, if it has one.
    key_id: Option<&'a str>,
    /// Whether the registry scans what is pushed.
    scanning: bool,
    name: RepositoryName,
    caller: &'a Caller,
    /// The pull-through cache the repository belongs to, if any.
    cache: Option<&'a wharf_meta::CacheRecord>,
}

impl Repo<'_> {
    /// The repository and caller, as the content service takes them.
    fn scope(&self) -> crate::service::Scope<'_> {
        crate::service::Scope {
            registry_id: self.registry_id,
            key_id: self.key_id,
            scanning: self.scanning,
            repository: self.name.as_str(),
            actor: self.caller.actor(),
        }
    }
}

/// Decoded query parameters, in order, repeated keys kept.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle(&state, req).await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &Arc<AppState>, req: Request) -> Result<Response> {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let endpoint = route::parse(parts.uri.path()).ok_or_else(|| {
        ApiError::with_message(ErrorCode::Unsupported, "unknown /v2/ endpoint", None)
            .status(StatusCode::NOT_FOUND)
    })?;
    let method = parts.method.clone();
    let headers = &parts.headers;
    let query = Query::parse(parts.uri.query());
    let target = resolve_target(state, &parts).await?;
    let caller = auth::identify(state, &target, headers).await?;
    if let Caller::Token { id, .. } = &caller {
        state.admit(*id, target.rate_limit)?;
    }
    let head = method == Method::HEAD;

    // What the endpoint needs, checked before anything else happens.
    let name = match &endpoint {
        Endpoint::Base | Endpoint::Catalog => None,
        Endpoint::Tags { name }
        | Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::Uploads { name }
        | Endpoint::Upload { name, .. }
        | Endpoint::Referrers { name, .. } => Some(RepositoryName::parse(name)?),
    };
    let action = match (&endpoint, &method) {
        // An upload's status only reads, as in the reference registry: a client that fetched a
        // pull-only bearer token for a GET must not be refused.
        (Endpoint::Upload { .. }, &Method::GET) => Some(Action::Pull),
        (Endpoint::Uploads { .. } | Endpoint::Upload { .. }, _) => Some(Action::Push),
        (Endpoint::Manifest { .. }, &Method::PUT) => Some(Action::Push),
        (Endpoint::Manifest { .. } | Endpoint::Blob { .. }, &Method::DELETE) => {
            Some(Action::Delete)
        }
        _ => Some(Action::Pull),
    };
    let need = match (&endpoint, &name, action) {
        (Endpoint::Catalog, _, _) => Need::Catalog,
        (_, Some(n), Some(a)) => Need::Repository(n.as_str(), a),
        _ => Need::Login,
    };
    auth::authorize(state, &target, &caller, need).await?;
    // Maintenance mode refuses writes as the reference registry's read-only mode does (405
    // UNSUPPORTED, which clients show); an upload's status still reads.
    if target.read_only && matches!(action, Some(Action::Push | Action::Delete)) {
        return Err(ApiError::with_message(
            ErrorCode::Unsupported,
            format!(
                "registry {:?} is read-only for maintenance: pulls go on, pushes and deletes are refused until an administrator ends it",
                target.name
            ),
            None,
        )
        .status(StatusCode::METHOD_NOT_ALLOWED));
    }

    let cache = name
        .as_ref()
        .and_then(|n| crate::cache::rule_for(&target.caches, n.as_str()));
    if let (Some(rule), Some(Action::Push)) = (cache, action) {
        return Err(ApiError::with_message(
            ErrorCode::Denied,
            format!(
                "repositories under {}/ are a pull-through cache of {}: they are pulled, not pushed to",
                rule.prefix, rule.upstream_host
            ),
            serde_json::json!({ "cache": rule.prefix }),
        ));
    }

    if let (Some(quota), Some(Action::Push), Some(repository)) = (target.quota_bytes, action, &name)
    {
        check_quota(state, &target, quota, &endpoint, repository, headers).await?;
    }

    let repo = name.map(|name| Repo {
        state,
        registry_id: target.id,
        key_id: target.key_id.as_deref(),
        scanning: target.scanning,
        name,
        caller: &caller,
        cache,
    });
    // Every endpoint but the version check and the catalog names a repository.
    let repo = || {
        repo.as_ref()
            .ok_or_else(|| ApiError::internal("routing", "endpoint without a repository"))
    };
    match (endpoint, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (Endpoint::Catalog, Method::GET) => {
            listing::catalog(state, target.id, &caller, &query).await
        }
        (Endpoint::Tags { .. }, Method::GET) => listing::tags(repo()?, &query).await,
        (Endpoint::Referrers { digest, .. }, Method::GET) => {
            listing::referrers(repo()?, &digest, &query).await
        }
        (Endpoint::Blob { digest, .. }, Method::GET | Method::HEAD) => {
            blobs::get(repo()?, &digest, headers, head).await
        }
        (Endpoint::Blob { digest, .. }, Method::DELETE) => blobs::delete(repo()?, &digest).await,
        (Endpoint::Uploads { .. }, Method::POST) => {
            uploads::start(repo()?, &query, headers, body).await
        }
        (Endpoint::Upload { id, .. }, Method::GET) => uploads::status(repo()?, &id).await,
        (Endpoint::Upload { id, .. }, Method::PATCH) => {
            uploads::patch(repo()?, &id, headers, body).await
        }
        (Endpoint::Upload { id, .. }, Method::PUT) => {
            uploads::put(repo()?, &id, &query, headers, body).await
        }
        (Endpoint::Upload { id, .. }, Method::DELETE) => uploads::cancel(repo()?, &id).await,
        (Endpoint::Manifest { reference, .. }, Method::GET | Method::HEAD) => {
            manifests::get(repo()?, &reference, headers, head).await
        }
        (Endpoint::Manifest { reference, .. }, Method::PUT) => {
            manifests::put(repo()?, &reference, headers, body).await
        }
        (Endpoint::Manifest { reference, .. }, Method::DELETE) => {
            manifests::delete(repo()?, &reference).await
        }
        (_, method) => Err(ApiError::with_message(
            ErrorCode::Unsupported,
            format!("method {method} is not allowed on this endpoint"),
            None,
        )),
    }
}

/// Refuses a push that would take the registry past its storage quota, before its body is
/// read: what the registry stores now, plus what the upload already holds, plus the request's
/// declared length. A push of unknown length is refused only once the quota is reached.
async fn check_quota(
    state: &AppState,
    target: &Target,
    quota: i64,
    endpoint: &Endpoint,
    repository: &RepositoryName,
    headers: &HeaderMap,
) -> Result<()> {
    let incoming = content_length(headers)?.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let held = match endpoint {
        Endpoint::Upload { id, .. } => state
            .meta
            .get_upload(target.id, repository.as_str(), id)
            .await?
            .map_or(0, |u| u.size),
        _ => 0,
    };
    let used = state.meta.registry_stats(target.id).await?.storage_bytes;
    let after = used.saturating_add(held).saturating_add(incoming);
    if after > quota || used >= quota {
        return Err(ApiError::with_message(
            ErrorCode::Denied,
            format!(
                "registry {:?} has a storage quota of {}: {} is used and this push would add {}; delete what is not needed and run garbage collection, or ask an administrator to raise the quota",
                target.name,
                crate::human_bytes(quota),
                crate::human_bytes(used),
                crate::human_bytes(held + incoming),
            ),
            serde_json::json!({ "quota_bytes": quota, "used_bytes": used }),
        ));
    }
    Ok(())
}

/// The registry a request addresses: `<name>.<base domain>` by its Host, any other host name
/// the default registry if one is configured.
pub(crate) async fn resolve_target(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Target> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("")
        .to_string();
    let bare = host_without_port(&host).to_ascii_lowercase();
    let suffix = format!(".{}", state.settings.base_domain);
    let name = match bare.strip_suffix(&suffix) {
        Some(label) if !label.is_empty() && !label.contains('.') => label.to_string(),
        _ => state.settings.default_registry.clone().ok_or_else(|| {
            ApiError::with_message(
                ErrorCode::NameUnknown,
                format!(
                    "host {bare:?} names no registry; use <registry>.{}",
                    state.settings.base_domain
                ),
                None,
            )
        })?,
    };
    let registry = state.registry_ref(&name).await?.ok_or_else(|| {
        ApiError::with_message(
            ErrorCode::NameUnknown,
            format!("there is no registry named {name:?} on this server"),
            serde_json::json!({ "registry": name }),
        )
    })?;
    Ok(Target {
        id: registry.id,
        rate_limit: registry.rate_limit,
        read_only: registry.read_only,
        key_id: registry.key_id,
        quota_bytes: registry.quota_bytes,
        scanning: registry.scanning,
        caches: registry.caches,
        service: format!("{name}.{}", state.settings.base_domain),
        name,
        host,
    })
}

fn host_without_port(host: &str) -> &str {
    split_host(host).0
}

/// Splits a Host header value into host and port (`[v6]:port` included).
pub(crate) fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (h, Some(port)),
        _ => (host, None),
    }
}

/// A request body as a byte stream for the content store. A client that stops sending for
/// `idle` fails the request (the store keeps nothing of it) instead of holding it open.
pub(crate) fn body_stream(body: Body, idle: std::time::Duration) -> ByteStream {
    let chunks = body.into_data_stream().map_err(std::io::Error::other);
    Box::pin(futures_util::stream::unfold(
        Some(chunks),
        move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(idle, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(chunks))),
                Ok(None) => None,
                Err(_) => {
                    tracing::info!(
                        seconds = idle.as_secs(),
                        "request body stalled; request failed"
                    );
                    let why = format!("the client sent nothing for {} s", idle.as_secs());
                    let err = std::io::Error::new(std::io::ErrorKind::TimedOut, why);
                    Some((Err(err), None))
                }
            }
        },
    ))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's Content-Length, if it sent one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>> {
    match header_str(headers, header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            ApiError::with_message(
                ErrorCode::SizeInvalid,
                format!("Content-Length {v:?} is not a number"),
                None,
            )
        }),
    }
}

/// The empty 202 that answers an accepted delete.
fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Refuses deletes when the operator turned them off.
fn ensure_delete_enabled(state: &AppState) -> Result<()> {
    if state.settings.delete_enabled {
        Ok(())
    } else {
        Err(ApiError::with_message(
            ErrorCode::Unsupported,
            "deletes are disabled on this registry",
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host("alpha.wharf.test:5000"),
            ("alpha.wharf.test", Some("5000"))
        );
        assert_eq!(split_host("alpha.wharf.test"), ("alpha.wharf.test", None));
        assert_eq!(split_host("[::1]:5000"), ("::1", Some("5000")));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("host:abc"), ("host:abc", None));
    }
}
