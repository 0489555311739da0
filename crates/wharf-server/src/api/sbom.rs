//! SBOMs of scanned images, made from their stored package inventories (no layer is read):
//! `GET .../artifacts/{repository}/-/{reference}/sbom?format=spdx|cyclonedx` exports one, and
//! `POST /api/v1/registries/{name}/sboms` attaches one to its image as an OCI referrer.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use wharf_auth::Permission;
use wharf_oci::media;
use wharf_scan::sbom::{self, Format};

use super::auth::Admin;
use super::problem::ApiJson;
use super::scans::{image_scan, target, Target};
use super::Problem;
use crate::AppState;

/// The OCI empty descriptor's content: the config of an artifact that has none.
const EMPTY_CONFIG: &[u8] = b"{}";

pub(crate) fn parse_format(text: Option<&str>) -> Result<Format, Problem> {
    match text {
        None => Ok(Format::Spdx),
        Some(t) => t.parse().map_err(Problem::bad_request),
    }
}

/// The SBOM of the image `t` names, and the time it says it was made (its scan's).
async fn document(
    state: &AppState,
    t: &Target,
    format: Format,
) -> Result<(Value, String), Problem> {
    let (digest, scan) = image_scan(state, t).await?;
    let not_yet = |why: String| {
        Problem::conflict(format!(
            "{digest} has no package inventory to make an SBOM from: {why}"
        ))
    };
    match scan.status.as_str() {
        "scanned" => {}
        "pending" => return Err(not_yet("its scan is pending".into())),
        _ => return Err(not_yet(scan.reason.unwrap_or_else(|| "not scanned".into()))),
    }
    let inventory = crate::scanning::stored_inventory(&state.meta, &digest)
        .await?
        .ok_or_else(|| {
            not_yet(if scan.partial {
                "its scan could not read every layer (partial)".into()
            } else {
                "it was scanned by an older version; it is made again at its next scan".into()
            })
        })?;
    let location = format!(
        "{}/{}",
        state.settings.registry_address(&t.registry.name, None),
        t.repository.as_str()
    );
    // The scan's time, not now: the same inventory gives the same document (and digest).
    let created = scan
        .scanned_at
        .as_deref()
        .map(|t| {
            format!(
                "{}Z",
                t.split('.').next().unwrap_or(t).trim_end_matches('Z')
            )
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let subject = sbom::Subject {
        location: &location,
        digest: &digest,
        created: &created,
        tool_version: env!("CARGO_PKG_VERSION"),
    };
    let doc = sbom::document(format, &inventory, &subject);
    Ok((doc, created))
}

#[utoipa::path(
    get, path = "/api/v1/registries/{name}/artifacts/{repository}/-/{reference}/sbom",
    tag = "scanning",
    params(
        ("name" = String, Path, description = "Registry name"),
        ("repository" = String, Path, description = "Repository name; may contain '/'"),
        ("reference" = String, Path, description = "A tag or a digest of an image (not an index)"),
        ("format" = Option<String>, Query, description = "spdx (SPDX 2.3 JSON, the default) or cyclonedx (CycloneDX 1.5 JSON)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The SBOM", content_type = "application/spdx+json"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "An index, or no inventory yet"),
    )
)]
pub(crate) async fn export(
    state: &AppState,
    name: &str,
    repository: &str,
    reference: &str,
    format: Format,
) -> Result<Response, Problem> {
    let t = target(state, name, repository, reference).await?;
    let (doc, _) = document(state, &t, format).await?;
    let body = serde_json::to_vec_pretty(&doc).map_err(|e| Problem::internal("SBOM", e))?;
    Ok(([(header::CONTENT_TYPE, format.media_type())], body).into_response())
}

/// An SBOM to attach.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachSbom {
    pub repository: String,
    /// A tag or digest of the image.
    pub reference: String,
    /// `spdx` (default) or `cyclonedx`.
    pub format: Option<String>,
}

/// The referrer pushed.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttachedSbom {
    pub repository: String,
    /// The SBOM artifact's manifest digest.
    pub digest: String,
    /// The SBOM format's media type.
    pub artifact_type: String,
    /// The image it describes.
    pub subject: String,
    /// The SBOM document's blob.
    pub blob: String,
    pub size: i64,
}

#[utoipa::path(
    post, path = "/api/v1/registries/{name}/sboms", tag = "scanning",
    params(("name" = String, Path, description = "Registry name")),
    request_body = AttachSbom,
    security(("bearer" = [])),
    responses(
        (status = 201, body = AttachedSbom, description = "Attached; the image's referrers list it"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "An index, or no inventory yet"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
/// Makes an image's SBOM and pushes it to the image's repository as an OCI artifact whose
/// `subject` is the image: clients find it through the referrers API (`artifactType` is the
/// format's media type). Attaching the same SBOM again changes nothing.
pub async fn attach(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AttachSbom>,
) -> Result<(StatusCode, Json<AttachedSbom>), Problem> {
    admin.require(Permission::RegistryWrite)?;
    let format = parse_format(body.format.as_deref())?;
    let t = target(&state, &name, &body.repository, &body.reference).await?;
    if t.registry.read_only {
        return Err(Problem::conflict(format!(
            "registry {name:?} is in maintenance mode: nothing can be pushed to it"
        )));
    }
    let (doc, created) = document(&state, &t, format).await?;
    let content = serde_json::to_vec(&doc).map_err(|e| Problem::internal("SBOM", e))?;
    let size = content.len() as i64;
    let actor = admin.actor();
    let scope = crate::service::Scope {
        registry_id: t.registry.id,
        key_id: t.registry.key_id.as_deref(),
        scanning: t.registry.scanning,
        repository: t.repository.as_str(),
        actor,
    };
    let service = state.service();
    let config = service
        .put_blob(&scope, bytes::Bytes::from_static(EMPTY_CONFIG))
        .await?;
    let blob = service.put_blob(&scope, content.into()).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": format.media_type(),
        "config": {"mediaType": media::OCI_EMPTY_JSON, "digest": config.as_str(), "size": EMPTY_CONFIG.len()},
        "layers": [{
            "mediaType": format.media_type(),
            "digest": blob.as_str(),
            "size": size,
            "annotations": {"org.opencontainers.image.title": format!("sbom.{}.json", format.as_str())},
        }],
        "subject": {"mediaType": t.manifest.media_type, "digest": t.manifest.digest, "size": t.manifest.content.len()},
        "annotations": {"org.opencontainers.image.created": created},
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Problem::internal("SBOM", e))?;
    let parsed = wharf_oci::Manifest::parse(Some(media::OCI_MANIFEST), &bytes)
        .map_err(|e| Problem::internal("SBOM manifest", e))?;
    let digest = wharf_oci::Digest::sha256_of(&bytes);
    let mut record = crate::service::manifest_record(&digest, &parsed);
    record.size = bytes.len() as i64;
    record.content = bytes;
    service.put_manifest(&scope, record, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(AttachedSbom {
            repository: t.repository.as_str().to_string(),
            digest: digest.to_string(),
            artifact_type: format.media_type().to_string(),
            subject: t.manifest.digest.clone(),
            blob: blob.to_string(),
            size,
        }),
    ))
}
