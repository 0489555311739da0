use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use wharf_oci::{Digest, ErrorCode};

use super::{ensure_delete_enabled, header_str, Repo, Result};
use crate::cache::BlobFetch;
use crate::ApiError;

/// What a `Range` request header asks of a blob of a known size.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Full,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range. Headers that cannot be parsed, other units and multiple
/// ranges are ignored, as HTTP allows, and the whole blob is sent.
fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    if first.is_empty() {
        // Suffix range: the last n bytes.
        return match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Part(size.saturating_sub(n), size - 1),
            Err(_) => RangeRequest::Full,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(start, end.min(size - 1))
}

pub(super) async fn get(
    repo: &Repo<'_>,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let digest = Digest::parse(digest)?;
    let service = repo.state.service();
    let unknown = || ApiError::new(ErrorCode::BlobUnknown, json!({ "digest": digest.as_str() }));
    let mut size = service.blob_size(&repo.scope(), &digest).await?;
    if let (None, Some(rule)) = (size, repo.cache) {
        let scope = repo.scope();
        if head {
            let len = crate::cache::blob_len(repo.state, &scope, rule, &digest)
                .await?
                .ok_or_else(unknown)?;
            return blob_response(StatusCode::OK, &digest, len, Body::empty());
        }
        // Fetched whole (a Range is answered with all of it, as HTTP allows) on first pull.
        match crate::cache::blob(repo.state.clone(), &scope, rule, &digest).await? {
            BlobFetch::Missing => return Err(unknown()),
            BlobFetch::Stored => size = service.blob_size(&scope, &digest).await?,
            BlobFetch::Streaming { len, body } => {
                let body = Body::from_stream(body);
                return match len {
                    Some(len) => blob_response(StatusCode::OK, &digest, len, body),
                    None => blob_headers(StatusCode::OK, &digest)
                        .body(body)
                        .map_err(|e| ApiError::internal("building blob response", e)),
                };
            }
        }
    }
    let size = size.ok_or_else(unknown)?;

    let (status, start, len) = match parse_range(header_str(headers, header::RANGE), size) {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::with_message(
                ErrorCode::SizeInvalid,
                format!("requested range is outside the blob's {size} bytes"),
                json!({ "size": size }),
            )
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, &format!("bytes */{size}")));
        }
    };

    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(
            service
                .read_blob(&repo.scope(), &digest, start, len)
                .await?,
        )
    };
    let mut resp = blob_headers(status, &digest).header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    resp.body(body)
        .map_err(|e| ApiError::internal("building blob response", e))
}

/// The headers of every blob response but its length.
fn blob_headers(status: StatusCode, digest: &Digest) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        // Content addressed: the bytes behind a digest never change.
        .header(header::CACHE_CONTROL, "max-age=31536000")
        .header("docker-content-digest", digest.as_str())
}

fn blob_response(status: StatusCode, digest: &Digest, len: u64, body: Body) -> Result<Response> {
    blob_headers(status, digest)
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|e| ApiError::internal("building blob response", e))
}

pub(super) async fn delete(repo: &Repo<'_>, digest: &str) -> Result<Response> {
    ensure_delete_enabled(repo.state)?;
    let digest = Digest::parse(digest)?;
    let removed = repo
        .state
        .service()
        .unlink_blob(&repo.scope(), &digest)
        .await?;
    if !removed {
        return Err(ApiError::new(
            ErrorCode::BlobUnknown,
            json!({ "digest": digest.as_str() }),
        ));
    }
    Ok(super::accepted())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }
}
