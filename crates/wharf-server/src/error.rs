//! The one place where errors of every layer become OCI error responses.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wharf_meta::MetaError;
use wharf_oci::{DigestError, ErrorCode, ManifestError, NameError};
use wharf_store::StoreError;

use crate::service::ServiceError;

/// An error answered on `/v2/` as `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    errors: Vec<Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<Option<Value>>) -> Self {
        ApiError::with_message(code, code.message(), detail)
    }

    pub fn with_message(
        code: ErrorCode,
        message: impl Into<String>,
        detail: impl Into<Option<Value>>,
    ) -> Self {
        let mut entry = json!({ "code": code.as_str(), "message": message.into() });
        if let Some(detail) = detail.into() {
            entry["detail"] = detail;
        }
        ApiError {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            errors: vec![entry],
            headers: Vec::new(),
        }
    }

    /// The same error with another status than the code's default.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        ApiError::new(ErrorCode::Internal, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "errors": self.errors }).to_string();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::MissingReferences(digests) => {
                let mut err = ApiError::new(ErrorCode::ManifestBlobUnknown, None);
                err.errors = digests
                    .into_iter()
                    .map(|d| {
                        json!({
                            "code": ErrorCode::ManifestBlobUnknown.as_str(),
                            "message": format!("manifest references {d}, which is not in the repository; push it first"),
                            "detail": { "digest": d },
                        })
                    })
                    .collect();
                err
            }
            MetaError::Collected(digest) => ApiError::with_message(
                ErrorCode::BlobUploadInvalid,
                format!("blob {digest} was collected as garbage while it was being uploaded (the grace period is shorter than the upload took); upload it again"),
                serde_json::json!({ "digest": digest }),
            ),
            other if other.is_gone() => ApiError::with_message(
                ErrorCode::NameUnknown,
                "the registry or repository was deleted while this request was being recorded",
                None,
            ),
            other if other.is_unavailable() => {
                crate::metrics::database_error();
                tracing::warn!(error = %other, "metadata store unavailable");
                ApiError::with_message(
                    ErrorCode::Unavailable,
                    "the metadata database is unavailable; retry later",
                    None,
                )
            }
            other => {
                crate::metrics::database_error();
                ApiError::internal("metadata store failed", other)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::NotFound => ApiError::new(ErrorCode::BlobUnknown, None),
            StoreError::UploadUnknown | StoreError::UploadTruncated { .. } => {
                ApiError::with_message(ErrorCode::BlobUploadUnknown, msg, None)
            }
            StoreError::DigestMismatch { expected, actual } => ApiError::with_message(
                ErrorCode::DigestInvalid,
                msg,
                json!({ "expected": expected.as_str(), "actual": actual.as_str() }),
            ),
            StoreError::SizeMismatch { expected, actual } => ApiError::with_message(
                ErrorCode::SizeInvalid,
                msg,
                json!({ "expected": expected, "actual": actual }),
            ),
            StoreError::Body(_) => ApiError::with_message(ErrorCode::BlobUploadInvalid, msg, None),
            StoreError::Io(err) => {
                crate::metrics::storage_error();
                ApiError::internal("content store failed", err)
            }
            // Logged and counted where it was found, with the object's name.
            StoreError::Integrity(_) => ApiError::with_message(
                ErrorCode::Internal,
                "stored content failed its integrity check; an administrator must restore it",
                None,
            ),
            StoreError::Key(why) => ApiError::internal("data key unavailable", why),
            StoreError::Unavailable(why) => {
                crate::metrics::storage_error();
                tracing::warn!(error = %why, "content store unavailable");
                ApiError::with_message(
                    ErrorCode::Unavailable,
                    "the content store is unavailable; retry later",
                    None,
                )
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Meta(e) => e.into(),
            ServiceError::Store(e) => e.into(),
            ServiceError::UploadUnknown(id) => {
                ApiError::new(ErrorCode::BlobUploadUnknown, json!({ "id": id }))
            }
            ServiceError::TooManyUploads { open } => ApiError::with_message(
                ErrorCode::TooManyRequests,
                format!(
                    "the repository has {open} upload sessions open, the most allowed; finish or cancel some (DELETE their Location), or wait for abandoned ones to expire"
                ),
                json!({ "limit": open }),
            )
            .header(header::RETRY_AFTER, "60"),
            ServiceError::UploadMoved { size } => ApiError::with_message(
                ErrorCode::BlobUploadInvalid,
                "the upload changed during this request",
                json!({ "size": size }),
            )
            .status(StatusCode::RANGE_NOT_SATISFIABLE),
            ServiceError::QuotaReached { quota, used } => ApiError::with_message(
                ErrorCode::Denied,
                format!(
                    "the registry has a storage quota of {} and uses {}: its pull-through caches store nothing more until content is deleted and collected, or an administrator raises the quota",
                    crate::human_bytes(quota),
                    crate::human_bytes(used)
                ),
                json!({ "quota_bytes": quota, "used_bytes": used }),
            ),
            ServiceError::Upstream(why) => {
                ApiError::with_message(ErrorCode::Unavailable, why, None)
                    .status(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Digest(d) => d.into(),
            NameError::Tag { .. } => {
                ApiError::with_message(ErrorCode::ManifestInvalid, e.to_string(), None)
            }
            _ => ApiError::with_message(ErrorCode::NameInvalid, e.to_string(), None),
        }
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> Self {
        ApiError::with_message(ErrorCode::DigestInvalid, e.to_string(), None)
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> Self {
        ApiError::with_message(ErrorCode::ManifestInvalid, e.to_string(), None)
    }
}
