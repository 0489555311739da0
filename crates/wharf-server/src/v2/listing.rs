use std::collections::{BTreeMap, HashSet};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wharf_meta::ListPage;
use wharf_oci::manifest::ReferrersIndex;
use wharf_oci::{media, Descriptor, Digest, ErrorCode};

use super::auth::Caller;
use super::{Query, Repo, Result};
use crate::{ApiError, AppState};
use wharf_auth::Action;

/// The largest page a listing returns; larger `n` get this many and a `Link` to the rest.
pub const MAX_PAGE: i64 = 10_000;

/// The page size asked with `n`: a whole number (0 gives an empty page), at most [`MAX_PAGE`].
fn page_size(query: &Query) -> Result<i64> {
    match query.get("n") {
        None => Ok(MAX_PAGE),
        Some(n) => match n.parse::<u32>() {
            Ok(n) => Ok(i64::from(n).min(MAX_PAGE)),
            Err(_) => Err(ApiError::with_message(
                ErrorCode::PaginationNumberInvalid,
                format!(
                    "n={n:?} is not a whole number of results between 0 and {}",
                    u32::MAX
                ),
                json!({ "n": n }),
            )),
        },
    }
}

/// A JSON listing with a `Link` to the next page when there is one.
fn page_response(path: &str, limit: i64, page: &ListPage, body: serde_json::Value) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        let link = format!("<{path}?n={limit}&last={last}>; rel=\"next\"");
        if let Ok(v) = link.parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

pub(super) async fn tags(repo: &Repo<'_>, query: &Query) -> Result<Response> {
    let limit = page_size(query)?;
    let page = repo
        .state
        .meta
        .list_tags(
            repo.registry_id,
            repo.name.as_str(),
            query.get("last"),
            limit,
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NameUnknown,
                json!({ "name": repo.name.as_str() }),
            )
        })?;
    let body = json!({ "name": repo.name.as_str(), "tags": page.items });
    Ok(page_response(
        &format!("/v2/{}/tags/list", repo.name),
        limit,
        &page,
        body,
    ))
}

/// The catalog, holding only repositories the caller may pull (or that are public).
pub(super) async fn catalog(
    state: &AppState,
    registry_id: i64,
    caller: &Caller,
    query: &Query,
) -> Result<Response> {
    let limit = page_size(query)?;
    let mut items = Vec::new();
    let mut cursor = query.get("last").map(String::from);
    let mut more = false;
    'pages: while (items.len() as i64) < limit {
        let page = state
            .meta
            .list_repositories(registry_id, cursor.as_deref(), limit, false)
            .await?;
        // The public ones among this page, in one query, and only when the caller may not pull
        // some of them: the page's public names all come after the same cursor, at most as many.
        let public: HashSet<String> = if page.items.iter().all(|n| caller.can(n, Action::Pull)) {
            HashSet::new()
        } else {
            let public = state
                .meta
                .list_repositories(registry_id, cursor.as_deref(), limit, true)
                .await?;
            public.items.into_iter().collect()
        };
        let count = page.items.len();
        for (i, name) in page.items.into_iter().enumerate() {
            cursor = Some(name.clone());
            let visible = caller.can(&name, Action::Pull) || public.contains(&name);
            if visible {
                items.push(name);
                if items.len() as i64 == limit {
                    more = i + 1 < count || page.more;
                    break 'pages;
                }
            }
        }
        if !page.more {
            break;
        }
    }
    let page = ListPage { items, more };
    let body = json!({ "repositories": page.items });
    Ok(page_response("/v2/_catalog", limit, &page, body))
}

pub(super) async fn referrers(repo: &Repo<'_>, digest: &str, query: &Query) -> Result<Response> {
    let subject = Digest::parse(digest)?;
    let artifact_type = query.get("artifactType").filter(|t| !t.is_empty());
    let rows = repo
        .state
        .service()
        .referrers(&repo.scope(), subject.as_str(), artifact_type)
        .await?;
    let mut manifests = Vec::with_capacity(rows.len());
    for row in rows {
        let digest = Digest::parse(&row.digest)
            .map_err(|e| ApiError::internal("stored manifest digest unreadable", e))?;
        let annotations = row
            .annotations
            .as_deref()
            .and_then(|a| serde_json::from_str::<BTreeMap<String, String>>(a).ok());
        manifests.push(Descriptor {
            media_type: row.media_type,
            digest,
            size: row.size,
            artifact_type: row.artifact_type,
            annotations,
            urls: None,
            platform: None,
        });
    }
    let body = serde_json::to_string(&ReferrersIndex::new(manifests))
        .map_err(|e| ApiError::internal("encoding referrers", e))?;
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media::OCI_INDEX)],
        body,
    )
        .into_response();
    if artifact_type.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
