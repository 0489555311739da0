use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use wharf_meta::Upload;
use wharf_oci::{Digest, ErrorCode, RepositoryName};

use super::auth::may_pull;
use super::{body_stream, content_length, header_str, Query, Repo, Result};
use crate::service::{Grown, ServiceError};
use crate::ApiError;

fn location(repo: &Repo<'_>, id: &str) -> String {
    format!("/v2/{}/blobs/uploads/{id}", repo.name)
}

/// The `Range` of an upload holding `size` bytes: inclusive, and `0-0` while empty, as the
/// reference registry answers.
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The answer to every request on an open session: where it is and how much it holds.
fn session_response(repo: &Repo<'_>, status: StatusCode, id: &str, size: u64) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, location(repo, id))
        .header(header::RANGE, range_value(size))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn created_response(repo: &Repo<'_>, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/blobs/{}", repo.name, digest),
        )
        .header("docker-content-digest", digest.as_str())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

/// 416 with the session's current state, so the client can resume from the right offset.
fn out_of_order(repo: &Repo<'_>, id: &str, size: u64, why: String) -> ApiError {
    ApiError::with_message(ErrorCode::BlobUploadInvalid, why, json!({ "size": size }))
        .status(StatusCode::RANGE_NOT_SATISFIABLE)
        .header(header::LOCATION, &location(repo, id))
        .header(header::RANGE, &range_value(size))
        .header(header::HeaderName::from_static("docker-upload-uuid"), id)
}

/// A service error of a request on upload `id`: when another request (on this node or another)
/// moved the upload on meanwhile, a 416 that tells the client where it stands.
fn on_upload<'a>(repo: &'a Repo<'a>, id: &'a str) -> impl Fn(ServiceError) -> ApiError + 'a {
    move |e| match e {
        ServiceError::UploadMoved { size } => {
            let why = "the upload changed during this request".to_string();
            out_of_order(repo, id, size, why)
        }
        other => other.into(),
    }
}

/// Parses `Content-Range: <start>-<end>` (also with a `bytes ` or `bytes=` unit).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.trim().split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

async fn open_session(repo: &Repo<'_>) -> Result<String> {
    Ok(repo.state.service().open_upload(&repo.scope()).await?)
}

async fn find_session(repo: &Repo<'_>, id: &str) -> Result<Upload> {
    Ok(repo.state.service().upload(&repo.scope(), id).await?)
}

/// Appends a request body to an upload: in order, of the announced length, or not at all. With
/// `record`, the new size is recorded at once (a PATCH); without it (a PUT or single-request
/// POST), [`finish`] closes the session in the same transaction that publishes the blob.
async fn append(
    repo: &Repo<'_>,
    upload: &Upload,
    headers: &HeaderMap,
    body: Body,
    record: bool,
) -> Result<Grown> {
    let offset = upload.size as u64;
    let announced = content_length(headers)?;
    let expected = match header_str(headers, header::CONTENT_RANGE) {
        None => announced,
        Some(value) => {
            let Some((start, end)) = parse_content_range(value) else {
                return Err(out_of_order(
                    repo,
                    &upload.id,
                    offset,
                    format!("Content-Range {value:?} is not of the form <start>-<end>"),
                ));
            };
            if start != offset {
                return Err(out_of_order(
                    repo,
                    &upload.id,
                    offset,
                    format!("chunk starts at byte {start} but the upload holds {offset} bytes; send the chunk starting at {offset}"),
                ));
            }
            // Client-supplied: the chunk's length and the upload's new end must both fit in
            // what the store records (i64), never wrap.
            let len = (end - start).checked_add(1).filter(|len| {
                offset
                    .checked_add(*len)
                    .is_some_and(|e| e <= i64::MAX as u64)
            });
            let Some(len) = len else {
                return Err(out_of_order(
                    repo,
                    &upload.id,
                    offset,
                    format!("Content-Range {value:?} reaches past the largest blob size"),
                ));
            };
            if announced.is_some_and(|n| n != len) {
                return Err(ApiError::with_message(
                    ErrorCode::SizeInvalid,
                    format!(
                        "Content-Range covers {len} bytes but Content-Length is {}",
                        announced.unwrap_or(0)
                    ),
                    None,
                ));
            }
            Some(len)
        }
    };
    let body = body_stream(body, repo.state.settings.idle_timeout);
    repo.state
        .service()
        .append(&repo.scope(), upload, body, expected, record)
        .await
        .map_err(on_upload(repo, &upload.id))
}

/// Verifies and publishes the upload's bytes; a digest mismatch ends the session and keeps
/// nothing.
async fn finish(
    repo: &Repo<'_>,
    upload: &Upload,
    grown: Grown,
    digest: &Digest,
) -> Result<Response> {
    repo.state
        .service()
        .finish(&repo.scope(), upload, grown, digest)
        .await
        .map_err(on_upload(repo, &upload.id))?;
    Ok(created_response(repo, digest))
}

fn digest_param(query: &Query) -> Result<Digest> {
    let value = query.get("digest").ok_or_else(|| {
        ApiError::with_message(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to complete an upload",
            None,
        )
    })?;
    Ok(Digest::parse(value)?)
}

/// `POST /v2/<name>/blobs/uploads/`: a session, a single-request upload (`?digest=`) or a
/// cross-repository mount (`?mount=&from=`).
pub(super) async fn start(
    repo: &Repo<'_>,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = query.get("mount") {
        // A mount that cannot be done falls back to a plain session, as the spec asks. So does
        // one from a repository the caller may not pull: the same answer as for an absent blob,
        // so that it does not tell whether the digest is there.
        let source = query
            .get("from")
            .and_then(|f| RepositoryName::parse(f).ok());
        if let (Ok(digest), Some(from)) = (Digest::parse(mount), source) {
            let readable = may_pull(repo.state, repo.registry_id, repo.caller, from.as_str());
            let service = repo.state.service();
            if readable.await? && service.mount(&repo.scope(), from.as_str(), &digest).await? {
                return Ok(created_response(repo, &digest));
            }
        }
    } else if query.get("digest").is_some() {
        let digest = digest_param(query)?;
        let id = open_session(repo).await?;
        let upload = Upload {
            id: id.clone(),
            repository: repo.name.to_string(),
            size: 0,
            hash_state: None,
            parts: Vec::new(),
        };
        let result = match append(repo, &upload, headers, body, false).await {
            Ok(grown) => finish(repo, &upload, grown, &digest).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            repo.state.service().discard_upload(&id).await?;
        }
        return result;
    }
    let id = open_session(repo).await?;
    Ok(session_response(repo, StatusCode::ACCEPTED, &id, 0))
}

pub(super) async fn status(repo: &Repo<'_>, id: &str) -> Result<Response> {
    let upload = find_session(repo, id).await?;
    Ok(session_response(
        repo,
        StatusCode::NO_CONTENT,
        id,
        upload.size as u64,
    ))
}

pub(super) async fn patch(
    repo: &Repo<'_>,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let _guard = repo.state.upload_locks.lock(id).await;
    let upload = find_session(repo, id).await?;
    let size = append(repo, &upload, headers, body, true).await?.size;
    Ok(session_response(repo, StatusCode::ACCEPTED, id, size))
}

pub(super) async fn put(
    repo: &Repo<'_>,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let _guard = repo.state.upload_locks.lock(id).await;
    let upload = find_session(repo, id).await?;
    let digest = digest_param(query)?;
    let grown = append(repo, &upload, headers, body, false).await?;
    finish(repo, &upload, grown, &digest).await
}

pub(super) async fn cancel(repo: &Repo<'_>, id: &str) -> Result<Response> {
    let _guard = repo.state.upload_locks.lock(id).await;
    find_session(repo, id).await?;
    repo.state.service().discard_upload(id).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("abc"), None);
        assert_eq!(parse_content_range("-5"), None);
    }

    #[test]
    fn ranges_are_inclusive() {
        assert_eq!(range_value(0), "0-0");
        assert_eq!(range_value(1), "0-0");
        assert_eq!(range_value(10), "0-9");
    }
}
