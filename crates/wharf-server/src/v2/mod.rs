//! The OCI distribution protocol at `/v2/`.

mod blobs;
mod listing;
mod manifests;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use wharf_oci::{ErrorCode, RepositoryName};
use wharf_store::ByteStream;

use crate::route::{self, Endpoint};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

/// What every repository-scoped handler needs: the state, the registry and the repository.
pub(crate) struct Repo<'a> {
    state: &'a AppState,
    registry_id: i64,
    name: RepositoryName,
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

async fn handle(state: &AppState, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let endpoint = route::parse(parts.uri.path()).ok_or_else(|| {
        ApiError::with_message(ErrorCode::Unsupported, "unknown /v2/ endpoint", None)
            .status(StatusCode::NOT_FOUND)
    })?;
    let method = &parts.method;
    let headers = &parts.headers;
    let query = Query::parse(parts.uri.query());
    let registry_id = resolve_registry(state, &parts).await?;
    let repo = |name: &str| -> Result<Repo<'_>> {
        Ok(Repo {
            state,
            registry_id,
            name: RepositoryName::parse(name)?,
        })
    };
    let head = method == Method::HEAD;

    match (endpoint, method.clone()) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (Endpoint::Catalog, Method::GET) => listing::catalog(state, registry_id, &query).await,
        (Endpoint::Tags { name }, Method::GET) => listing::tags(&repo(&name)?, &query).await,
        (Endpoint::Referrers { name, digest }, Method::GET) => {
            listing::referrers(&repo(&name)?, &digest, &query).await
        }
        (Endpoint::Blob { name, digest }, Method::GET | Method::HEAD) => {
            blobs::get(&repo(&name)?, &digest, headers, head).await
        }
        (Endpoint::Blob { name, digest }, Method::DELETE) => {
            blobs::delete(&repo(&name)?, &digest).await
        }
        (Endpoint::Uploads { name }, Method::POST) => {
            uploads::start(&repo(&name)?, &query, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::GET) => uploads::status(&repo(&name)?, &id).await,
        (Endpoint::Upload { name, id }, Method::PATCH) => {
            uploads::patch(&repo(&name)?, &id, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::PUT) => {
            uploads::put(&repo(&name)?, &id, &query, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::DELETE) => {
            uploads::cancel(&repo(&name)?, &id).await
        }
        (Endpoint::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            manifests::get(&repo(&name)?, &reference, headers, head).await
        }
        (Endpoint::Manifest { name, reference }, Method::PUT) => {
            manifests::put(&repo(&name)?, &reference, headers, body).await
        }
        (Endpoint::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(&repo(&name)?, &reference).await
        }
        (_, method) => Err(ApiError::with_message(
            ErrorCode::Unsupported,
            format!("method {method} is not allowed on this endpoint"),
            None,
        )),
    }
}

/// The registry a request addresses: `<name>.<base domain>` by its Host, any other host name
/// the default registry if one is configured.
async fn resolve_registry(state: &AppState, parts: &axum::http::request::Parts) -> Result<i64> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("");
    let host = host_without_port(host).to_ascii_lowercase();
    let suffix = format!(".{}", state.settings.base_domain);
    let name = match host.strip_suffix(&suffix) {
        Some(label) if !label.is_empty() && !label.contains('.') => label.to_string(),
        _ => state.settings.default_registry.clone().ok_or_else(|| {
            ApiError::with_message(
                ErrorCode::NameUnknown,
                format!(
                    "host {host:?} names no registry; use <registry>.{}",
                    state.settings.base_domain
                ),
                None,
            )
        })?,
    };
    state
        .meta
        .registry(&name)
        .await?
        .map(|r| r.id)
        .ok_or_else(|| {
            ApiError::with_message(
                ErrorCode::NameUnknown,
                format!("there is no registry named {name:?} on this server"),
                serde_json::json!({ "registry": name }),
            )
        })
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A request body as a byte stream for the content store.
pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
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
