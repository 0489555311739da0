//! Prometheus metrics at `GET /metrics`. Labels are bounded: a route template (never a
//! repository name or digest), a method and a status. No secret reaches a label.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::route::{self, Endpoint};
use crate::AppState;

const DURATION: &str = "wharf_http_request_duration_seconds";

/// Installs the process-wide recorder and returns the handle `/metrics` renders from. Call once
/// per process, before the server starts.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DURATION.to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ],
        )
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))
}

/// `GET /metrics`: the text exposition format. Open upload sessions are counted across all
/// nodes at scrape time.
pub(crate) async fn render(State(state): State<Arc<AppState>>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled").into_response();
    };
    match state.meta.count_uploads().await {
        Ok(n) => ::metrics::gauge!("wharf_upload_sessions_open").set(n as f64),
        Err(e) => {
            database_error();
            tracing::warn!(error = %e, "counting upload sessions for /metrics failed");
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub(crate) fn database_error() {
    ::metrics::counter!("wharf_database_errors_total").increment(1);
}

/// A finished garbage collection: runs by outcome, and what they freed.
pub(crate) fn gc_run(
    registry: &str,
    succeeded: bool,
    freed: wharf_meta::GcCounts,
    took: std::time::Duration,
) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    ::metrics::counter!("wharf_gc_runs_total", "outcome" => outcome).increment(1);
    let registry = registry.to_string();
    ::metrics::counter!("wharf_gc_freed_bytes_total", "registry" => registry.clone())
        .increment(freed.bytes.max(0) as u64);
    ::metrics::counter!("wharf_gc_freed_blobs_total", "registry" => registry)
        .increment(freed.blobs.max(0) as u64);
    ::metrics::histogram!("wharf_gc_run_duration_seconds").record(took.as_secs_f64());
}

pub(crate) fn storage_error() {
    ::metrics::counter!("wharf_storage_errors_total").increment(1);
}

/// The route a request took, as a template: `/v2/` paths by their endpoint, the others by the
/// router's matched path.
fn route_of(req: &Request) -> &'static str {
    let path = req.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        return match route::parse(path) {
            Some(Endpoint::Base) => "/v2/",
            Some(Endpoint::Catalog) => "/v2/_catalog",
            Some(Endpoint::Tags { .. }) => "/v2/{name}/tags/list",
            Some(Endpoint::Manifest { .. }) => "/v2/{name}/manifests/{reference}",
            Some(Endpoint::Blob { .. }) => "/v2/{name}/blobs/{digest}",
            Some(Endpoint::Uploads { .. }) => "/v2/{name}/blobs/uploads/",
            Some(Endpoint::Upload { .. }) => "/v2/{name}/blobs/uploads/{id}",
            Some(Endpoint::Referrers { .. }) => "/v2/{name}/referrers/{digest}",
            None => "/v2/other",
        };
    }
    match req.extensions().get::<MatchedPath>() {
        // Route templates are a fixed set; leaking them keeps one copy each for the process.
        Some(m) => intern(m.as_str()),
        None => "other",
    }
}

fn intern(template: &str) -> &'static str {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = seen.iter().find(|t| **t == template) {
        return t;
    }
    let t: &'static str = Box::leak(template.to_string().into_boxed_str());
    seen.push(t);
    t
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts requests, their latency and the body bytes that go in and out.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let method = method_label(req.method());
    let started = Instant::now();
    let req = req.map(|body| {
        let counter = ::metrics::counter!("wharf_http_request_bytes_total", "route" => route);
        Body::new(Counted {
            inner: body,
            counter,
        })
    });
    let resp = next.run(req).await;
    let status = resp.status();
    ::metrics::counter!("wharf_http_requests_total",
        "route" => route, "method" => method, "status" => status.as_str().to_string())
    .increment(1);
    ::metrics::histogram!(DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    let reason = match status {
        StatusCode::UNAUTHORIZED => Some("unauthenticated"),
        StatusCode::FORBIDDEN => Some("denied"),
        _ => None,
    };
    if let Some(reason) = reason {
        ::metrics::counter!("wharf_auth_failures_total", "reason" => reason).increment(1);
    }
    resp.map(|body| {
        let counter = ::metrics::counter!("wharf_http_response_bytes_total", "route" => route);
        Body::new(Counted {
            inner: body,
            counter,
        })
    })
}

/// A body that counts the data bytes passing through it, keeping its size hint (which gives
/// a response its Content-Length).
struct Counted {
    inner: Body,
    counter: Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.increment(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A scan (layers read) or match (stored inventory) ended with `status`.
pub(crate) fn scan_done(kind: &'static str, status: &str, took: std::time::Duration) {
    let status = status.to_string();
    ::metrics::counter!("wharf_scans_total", "kind" => kind, "status" => status).increment(1);
    ::metrics::histogram!("wharf_scan_duration_seconds", "kind" => kind).record(took.as_secs_f64());
}

/// A pull-through cache fetched (`kind`: manifest or blob) from its upstream, or failed to.
pub(crate) fn cache_fetch(kind: &'static str, ok: bool) {
    let outcome = if ok { "stored" } else { "failed" };
    ::metrics::counter!("wharf_cache_fetches_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// A replication attempt ended: `succeeded`, `retrying` or `failed` (given up).
pub(crate) fn replication_done(outcome: &'static str) {
    ::metrics::counter!("wharf_replications_total", "outcome" => outcome).increment(1);
}
