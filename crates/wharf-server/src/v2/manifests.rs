use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::json;
use wharf_oci::manifest::MAX_MANIFEST_SIZE;
use wharf_oci::{media, Digest, ErrorCode, Manifest, Reference};

use super::{content_length, ensure_delete_enabled, header_str, Repo, Result};
use crate::ApiError;

fn too_large() -> ApiError {
    ApiError::with_message(
        ErrorCode::SizeInvalid,
        format!("manifest is larger than the {MAX_MANIFEST_SIZE}-byte limit"),
        json!({ "limit": MAX_MANIFEST_SIZE }),
    )
    .status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Past the limit the body is still read and dropped up to this many bytes, so that the client,
/// which is busy sending, receives the 413 instead of a reset connection.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Reads a manifest body of at most [`MAX_MANIFEST_SIZE`] bytes.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>> {
    if content_length(headers)?.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::with_message(
                ErrorCode::ManifestInvalid,
                format!("manifest body could not be read: {e}"),
                None,
            )
        })?;
        seen += chunk.len() as u64;
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= MAX_MANIFEST_SIZE as u64 {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_MANIFEST_SIZE as u64 {
        return Err(too_large());
    }
    Ok(buf)
}

/// The media types listed in `Accept` headers, parameters stripped.
fn accepted(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(media::essence)
        .filter(|t| !t.is_empty())
        .collect()
}

fn acceptable(accept: &[&str], media_type: &str) -> bool {
    accept.is_empty()
        || accept
            .iter()
            .any(|a| *a == media_type || *a == "*/*" || *a == "application/*")
}

fn unknown(reference: &Reference) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        json!({ "reference": reference.to_string() }),
    )
}

pub(super) async fn get(
    repo: &Repo<'_>,
    reference: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    // What is not a valid tag or digest names no manifest: 404, as the conformance tests and
    // the reference registry answer (a PUT with it stays a 400).
    let reference = Reference::parse(reference).map_err(|e| {
        ApiError::with_message(
            ErrorCode::ManifestUnknown,
            e.to_string(),
            json!({ "reference": reference }),
        )
    })?;
    let service = repo.state.service();
    let scope = repo.scope();
    let found = match repo.cache {
        Some(rule) => crate::cache::manifest(repo.state, &scope, rule, &reference).await?,
        None => service.manifest(&scope, &reference).await?,
    };
    let manifest = found.ok_or_else(|| unknown(&reference))?;
    let accept = accepted(headers);
    if !acceptable(&accept, &manifest.media_type) {
        return Err(ApiError::with_message(
            ErrorCode::ManifestUnknown,
            format!(
                "the manifest is {}, which is not among the media types the request accepts",
                manifest.media_type
            ),
            json!({ "mediaType": manifest.media_type, "accept": accept }),
        ));
    }
    if !head {
        service.pulled(&scope, &manifest).await;
    }
    let len = manifest.content.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.content)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ETAG, format!("\"{}\"", manifest.digest))
        .header("docker-content-digest", &manifest.digest)
        .body(body)
        .map_err(|e| ApiError::internal("building manifest response", e))
}

pub(super) async fn put(
    repo: &Repo<'_>,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let reference = Reference::parse(reference)?;
    let content = read_body(headers, body).await?;
    let manifest = Manifest::parse(header_str(headers, header::CONTENT_TYPE), &content)?;
    let digest = match &reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &content);
            if &actual != expected {
                return Err(ApiError::with_message(
                    ErrorCode::DigestInvalid,
                    format!("manifest digest is {actual}, not {expected} as in the URL"),
                    json!({ "expected": expected.as_str(), "actual": actual.as_str() }),
                ));
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&content),
    };
    let tag = match &reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    let subject = manifest.subject.as_ref().map(|s| s.digest.to_string());
    let mut new = crate::service::manifest_record(&digest, &manifest);
    new.size = content.len() as i64;
    new.content = content;
    repo.state
        .service()
        .put_manifest(&repo.scope(), new, tag)
        .await?;

    let mut resp = Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/manifests/{}", repo.name, digest),
        )
        .header("docker-content-digest", digest.as_str())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = subject {
        resp = resp.header("oci-subject", subject);
    }
    resp.body(Body::empty())
        .map_err(|e| ApiError::internal("building manifest response", e))
}

pub(super) async fn delete(repo: &Repo<'_>, reference: &str) -> Result<Response> {
    ensure_delete_enabled(repo.state)?;
    let reference = Reference::parse(reference)?;
    let deleted = repo
        .state
        .service()
        .delete_manifest(&repo.scope(), &reference)
        .await?;
    if !deleted {
        return Err(unknown(&reference));
    }
    Ok(super::accepted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(acceptable(&[], media::OCI_INDEX));
        assert!(acceptable(&["*/*"], media::OCI_INDEX));
        assert!(acceptable(
            &[media::DOCKER_MANIFEST, media::OCI_INDEX],
            media::OCI_INDEX
        ));
        assert!(!acceptable(&[media::DOCKER_MANIFEST], media::OCI_INDEX));
    }
}
