//! The management REST API under `/api/v1/`, documented by an OpenAPI 3.1 document generated
//! from these handlers and served at `/api/v1/openapi.json`.

mod audit;
mod auth;
mod caches;
mod gc;
mod keys;
mod problem;
pub(crate) mod registries;
mod replication;
mod sbom;
mod scans;
pub(crate) mod system;
mod tokens;
mod upstreams;
pub mod vulndb;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{delete, get};
use axum::Router;
use bytes::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{Modify, OpenApi};

pub(crate) use auth::Admin;
pub(crate) use problem::ApiJson;
pub use problem::Problem;

use crate::AppState;

/// Management requests are small JSON documents.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest page of any listing.
pub const MAX_LIMIT: i64 = 100;

#[derive(OpenApi)]
#[openapi(
    info(title = "wharf management API", version = "1"),
    paths(
        registries::list, registries::create, registries::show, registries::update,
        registries::remove, registries::list_repositories, registries::delete_repository,
        registries::update_repository, tokens::list, tokens::create, tokens::show,
        tokens::update, tokens::remove, tokens::add_scope, tokens::remove_scope,
        keys::list, keys::create, keys::revoke, audit::list, system::show, system::keys,
        system::rotate, system::sealing_existing, system::seal_existing, gc::start, gc::list,
        gc::show, gc::start_instance, gc::list_instance, gc::show_instance, scans::artifact,
        scans::vulnerabilities, scans::list_artifacts, scans::affected, vulndb::show,
        vulndb::import, vulndb::details, sbom::export, sbom::attach,
        upstreams::list, upstreams::create, upstreams::show, upstreams::update,
        upstreams::remove, upstreams::test, caches::list, caches::create, caches::show,
        caches::update, caches::remove, registries::storage_history, replication::list, replication::create,
        replication::show, replication::update, replication::remove, replication::history,
    ),
    components(schemas(Problem)),
    modifiers(&Security),
    tags(
        (name = "registries", description = "Registries (tenants) and their repositories"),
        (name = "scanning", description = "What vulnerability scans found in the images"),
        (name = "tokens", description = "Robot tokens of a registry and their scopes"),
        (name = "upstreams", description = "Credentials for external registries and their connection test"),
        (name = "caches", description = "Pull-through caches: repository prefixes fetched from an upstream"),
        (name = "replication", description = "Push replication rules, their status and history"),
        (name = "admin-keys", description = "Administrators' API keys"),
        (name = "audit", description = "Who changed what, when"),
        (name = "system", description = "How this server is set up"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, with the locations this server is configured with as the only
/// values a registry's location may take.
pub fn openapi(locations: &[String]) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        if let Some(RefOr::T(Schema::Object(create))) = components.schemas.get_mut("CreateRegistry")
        {
            let location = ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(locations.iter().cloned()))
                .description(Some("One of the locations this server offers"))
                .build();
            create
                .properties
                .insert("location".to_string(), RefOr::T(Schema::Object(location)));
        }
    }
    doc
}

/// The document as served, with what the derive cannot state added by hand: a repository
/// scope that pushes must also pull, and scopes take no other fields.
fn served_document(locations: &[String]) -> serde_json::Value {
    let mut doc = serde_json::to_value(openapi(locations)).unwrap_or_default();
    let push_needs_pull = serde_json::json!({
        "if": { "contains": { "const": "push" } },
        "then": { "contains": { "const": "pull" } },
    });
    if let Some(variants) = doc
        .pointer_mut("/components/schemas/ScopeSpec/oneOf")
        .and_then(|v| v.as_array_mut())
    {
        for v in variants {
            // serde refuses unknown fields here too; say so in the document.
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "additionalProperties".into(),
                    serde_json::Value::Bool(false),
                );
            }
            if let Some(actions) = v.pointer_mut("/properties/actions") {
                if let (Some(a), Some(rule)) =
                    (actions.as_object_mut(), push_needs_pull.as_object())
                {
                    a.extend(rule.clone());
                }
            }
        }
    }
    doc
}

pub fn router(state: &AppState) -> Router<Arc<AppState>> {
    // Serialized once and shared: axum clones the router, and with it every handler's
    // captures, for each connection; a parsed document cost 0.5 MiB per open connection.
    let doc = Bytes::from(
        serde_json::to_vec(&served_document(&state.settings.locations)).unwrap_or_default(),
    );
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route(
            "/api/v1/registries",
            get(registries::list).post(registries::create),
        )
        .route(
            "/api/v1/registries/{name}",
            get(registries::show)
                .patch(registries::update)
                .delete(registries::remove),
        )
        .route(
            "/api/v1/registries/{name}/repositories",
            get(registries::list_repositories),
        )
        .route(
            "/api/v1/registries/{name}/repositories/{*repository}",
            delete(registries::delete_repository).patch(registries::update_repository),
        )
        .route(
            "/api/v1/registries/{name}/artifacts/{*path}",
            get(scans::repository_resource),
        )
        .route(
            "/api/v1/registries/{name}/sboms",
            axum::routing::post(sbom::attach),
        )
        .route(
            "/api/v1/registries/{name}/vulnerabilities/{id}",
            get(scans::affected),
        )
        .route(
            "/api/v1/registries/{name}/gc",
            axum::routing::post(gc::start),
        )
        .route("/api/v1/registries/{name}/gc/runs", get(gc::list))
        .route("/api/v1/registries/{name}/gc/runs/{id}", get(gc::show))
        .route("/api/v1/system/gc", axum::routing::post(gc::start_instance))
        .route("/api/v1/system/gc/runs", get(gc::list_instance))
        .route("/api/v1/system/gc/runs/{id}", get(gc::show_instance))
        .route(
            "/api/v1/registries/{name}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/api/v1/registries/{name}/tokens/{token}",
            get(tokens::show)
                .patch(tokens::update)
                .delete(tokens::remove),
        )
        .route(
            "/api/v1/registries/{name}/tokens/{token}/scopes",
            axum::routing::post(tokens::add_scope),
        )
        .route(
            "/api/v1/registries/{name}/tokens/{token}/scopes/{id}",
            delete(tokens::remove_scope),
        )
        .route(
            "/api/v1/registries/{name}/upstreams",
            get(upstreams::list).post(upstreams::create),
        )
        .route(
            "/api/v1/registries/{name}/upstreams/{host}",
            get(upstreams::show)
                .patch(upstreams::update)
                .delete(upstreams::remove),
        )
        .route(
            "/api/v1/registries/{name}/upstreams/{host}/test",
            axum::routing::post(upstreams::test),
        )
        .route(
            "/api/v1/registries/{name}/storage",
            get(registries::storage_history),
        )
        .route(
            "/api/v1/registries/{name}/replications",
            get(replication::list).post(replication::create),
        )
        .route(
            "/api/v1/registries/{name}/replications/{rule}",
            get(replication::show)
                .patch(replication::update)
                .delete(replication::remove),
        )
        .route(
            "/api/v1/registries/{name}/replications/{rule}/history",
            get(replication::history),
        )
        .route(
            "/api/v1/registries/{name}/caches",
            get(caches::list).post(caches::create),
        )
        .route(
            "/api/v1/registries/{name}/caches/{prefix}",
            get(caches::show)
                .patch(caches::update)
                .delete(caches::remove),
        )
        .route("/api/v1/admin-keys", get(keys::list).post(keys::create))
        .route("/api/v1/admin-keys/{id}", delete(keys::revoke))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/system", get(system::show))
        .route("/api/v1/system/keys", get(system::keys))
        .route(
            "/api/v1/system/keys/rotate",
            axum::routing::post(system::rotate),
        )
        .route(
            "/api/v1/system/keys/encrypt-existing",
            get(system::sealing_existing).post(system::seal_existing),
        )
        .route("/api/v1/system/vulndb", get(vulndb::show))
        .route(
            "/api/v1/system/vulndb/imports",
            axum::routing::post(vulndb::import),
        )
        .route("/api/v1/vulnerabilities/{id}", get(vulndb::details))
        .fallback(|| async { Problem::not_found("no such API endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Records an administrator's change in the audit log. A failed write is logged, not fatal:
/// the change itself already happened.
pub(crate) async fn audit_change(
    state: &AppState,
    admin: &auth::Admin,
    action: &str,
    registry: Option<&str>,
    repository: Option<&str>,
    detail: Option<serde_json::Value>,
) {
    let actor = admin.actor();
    let entry = wharf_meta::AuditEntry {
        actor: &actor,
        action,
        registry,
        repository,
        digest: None,
        detail: detail.map(|d| d.to_string()),
    };
    if let Err(e) = state.meta.audit(&entry).await {
        tracing::error!(error = %e, action, "audit log write failed");
    }
}

/// RFC 3339 time of a stored millisecond timestamp.
pub(crate) fn rfc3339(millis: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A numeric id taken from the path, e.g. of a key or a scope.
pub(crate) fn path_id(what: &str, text: &str) -> Result<i64, Problem> {
    text.parse()
        .map_err(|_| Problem::bad_request(format!("{what} id {text:?} is not a number")))
}

/// A page size: 1 to [`MAX_LIMIT`], default 50.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT} (got {n})"
        ))),
    }
}
