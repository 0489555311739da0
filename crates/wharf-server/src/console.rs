//! The web console at `/console/`: a small script over the management API, its files built into
//! the binary (no network access, no CDN). Signing in trades an administrator key for a session
//! cookie (HttpOnly, SameSite=Strict, gone when the browser closes), so the page's script never
//! holds the key after sign-in; the API accepts that cookie only with the `X-Wharf-Console`
//! header, which no other site's page can send.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Admin, ApiJson, Problem};
use crate::AppState;

/// The cookie that carries the administrator key of a console session.
pub(crate) const COOKIE: &str = "wharf_console";
/// The header the console's script sends with every API call (and no cross-site page can).
pub(crate) const HEADER: &str = "x-wharf-console";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// Only the console's own files run on its pages.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/console/session",
            get(whoami).post(sign_in).delete(sign_out),
        )
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Served from the binary: a new version is a new binary, and is read again.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    key: String,
}

/// Who the session is: the key's name and permissions.
fn session_view(admin: &Admin) -> serde_json::Value {
    json!({
        "name": admin.key.name,
        "permissions": admin.permissions.to_string().split_whitespace()
            .filter(|p| !p.is_empty()).collect::<Vec<_>>(),
    })
}

fn cookie(value: &str, headers: &HeaderMap, max_age: Option<u32>) -> HeaderValue {
    // Secure where the browser came over TLS (directly or through a proxy that says so).
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, Problem> {
    let key = body.key.trim();
    // A cookie value holds no spaces, semicolons or commas; keys are URL-safe text.
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        return Err(Problem::unprocessable("that is not an administrator key"));
    }
    let admin = Admin::by_key(&state, key).await?;
    let mut resp = Json(session_view(&admin)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(key, &headers, None));
    Ok(resp)
}

async fn whoami(admin: Admin) -> Json<serde_json::Value> {
    Json(session_view(&admin))
}

async fn sign_out(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie("", &headers, Some(0)));
    resp
}

/// The key of a console session: the cookie, when the console's header came with it.
pub(crate) fn session_key(headers: &HeaderMap) -> Option<&str> {
    headers.get(HEADER)?;
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|k| !k.is_empty())
}
