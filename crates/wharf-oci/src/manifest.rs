//! Parsing and validation of the manifest kinds a registry accepts: OCI image manifest and index,
//! Docker schema 2 manifest and manifest list, including artifacts (`artifactType`, `subject`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media::{self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

/// The largest manifest wharf accepts, the size the spec asks registries to accept at least.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest media type {0:?} is not supported (supported: OCI image manifest and index, Docker schema 2 manifest and manifest list)")]
    UnsupportedMediaType(String),
    #[error("Docker schema 1 manifests are not supported; push with a schema 2 or OCI client")]
    Schema1,
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error(
        "manifest media type cannot be determined: send a Content-Type header or a mediaType field"
    )]
    UnknownKind,
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("{0}")]
    Invalid(String),
}

/// A content descriptor as it appears in manifests and in the referrers response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The fields of every supported manifest kind; which are required depends on the kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: &'static str,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// The artifact type the referrers API reports: `artifactType`, or for an image manifest
    /// without one, the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn known(media_type: &str) -> Option<&'static str> {
    media::MANIFEST_TYPES
        .iter()
        .copied()
        .find(|t| *t == media_type)
}

fn is_schema1(media_type: &str) -> bool {
    media_type == media::DOCKER_SCHEMA1 || media_type == media::DOCKER_SCHEMA1_SIGNED
}

impl Manifest {
    /// Parses `body` pushed with the `Content-Type` header `content_type`.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        let header = content_type.map(media::essence).filter(|h| !h.is_empty());
        let media_type = resolve_media_type(header, &raw)?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        if let Some(at) = &raw.artifact_type {
            if !media::is_valid_media_type(at) {
                return Err(ManifestError::Invalid(format!(
                    "artifactType {at:?} is not a valid media type"
                )));
            }
        }
        let invalid = |m: &str| Err(ManifestError::Invalid(m.to_string()));
        let is_index = media::is_index(media_type);
        if is_index {
            if raw.config.is_some() || raw.layers.is_some() {
                return invalid("an index must not have config or layers");
            }
            if raw.manifests.is_none() {
                return invalid("an index requires a manifests array");
            }
        } else {
            if raw.manifests.is_some() {
                return invalid("an image manifest must not have a manifests array");
            }
            if raw.config.is_none() {
                return invalid("an image manifest requires a config descriptor");
            }
            if raw.layers.is_none() {
                return invalid("an image manifest requires a layers array");
            }
        }
        let is_docker = media_type == DOCKER_MANIFEST || media_type == DOCKER_MANIFEST_LIST;
        if is_docker && (raw.subject.is_some() || raw.artifact_type.is_some()) {
            return invalid(
                "Docker manifests cannot carry subject or artifactType; use an OCI media type",
            );
        }
        let config = raw.config;
        let layers = raw.layers.unwrap_or_default();
        let manifests = raw.manifests.unwrap_or_default();
        for d in config
            .iter()
            .chain(&layers)
            .chain(&manifests)
            .chain(raw.subject.as_ref())
        {
            validate_descriptor(d)?;
        }
        let artifact_type = raw.artifact_type.or_else(|| {
            if is_index {
                None
            } else {
                config.as_ref().map(|c| c.media_type.clone())
            }
        });
        Ok(Manifest {
            media_type,
            config,
            layers,
            manifests,
            subject: raw.subject,
            artifact_type,
            annotations: raw.annotations,
        })
    }

    /// Blobs that must be present in the repository before this manifest is accepted: the config
    /// and every layer except non-distributable ones, which clients never upload.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(
            self.layers
                .iter()
                .filter(|l| !media::is_non_distributable(&l.media_type)),
        )
    }

    /// Child manifests that must be present before an index is accepted.
    pub fn required_manifests(&self) -> &[Descriptor] {
        &self.manifests
    }
}

fn resolve_media_type(
    header: Option<&str>,
    raw: &RawManifest,
) -> Result<&'static str, ManifestError> {
    let body = raw.media_type.as_deref();
    if header.into_iter().chain(body).any(is_schema1) {
        return Err(ManifestError::Schema1);
    }
    match (header, body) {
        (Some(h), _) if known(h).is_none() => {
            Err(ManifestError::UnsupportedMediaType(h.to_string()))
        }
        (Some(h), Some(b)) if h != b => Err(ManifestError::MediaTypeMismatch {
            header: h.to_string(),
            body: b.to_string(),
        }),
        (Some(h), _) => Ok(known(h).unwrap_or(OCI_MANIFEST)),
        (None, Some(b)) => {
            known(b).ok_or_else(|| ManifestError::UnsupportedMediaType(b.to_string()))
        }
        // Without any declared type, the structure tells the OCI kind.
        (None, None) if raw.manifests.is_some() => Ok(OCI_INDEX),
        (None, None) if raw.config.is_some() => Ok(OCI_MANIFEST),
        (None, None) => Err(ManifestError::UnknownKind),
    }
}

fn validate_descriptor(d: &Descriptor) -> Result<(), ManifestError> {
    if !media::is_valid_media_type(&d.media_type) {
        return Err(ManifestError::Invalid(format!(
            "descriptor {} has an invalid mediaType {:?}",
            d.digest, d.media_type
        )));
    }
    if d.size < 0 {
        return Err(ManifestError::Invalid(format!(
            "descriptor {} has a negative size",
            d.digest
        )));
    }
    if let Some(at) = &d.artifact_type {
        if !media::is_valid_media_type(at) {
            return Err(ManifestError::Invalid(format!(
                "descriptor {} has an invalid artifactType {at:?}",
                d.digest
            )));
        }
    }
    Ok(())
}

/// The body of a referrers response: an OCI image index listing descriptors.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersIndex {
    pub schema_version: i64,
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

impl ReferrersIndex {
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        ReferrersIndex {
            schema_version: 2,
            media_type: OCI_INDEX.to_string(),
            manifests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(data: &[u8]) -> String {
        Digest::sha256_of(data).to_string()
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{}","size":3}}]{extra}}}"#,
            d(b"{}"),
            d(b"abc"),
            d(b"foreign")
        )
    }

    #[test]
    fn parses_an_image_manifest_and_lists_required_blobs() {
        let m = Manifest::parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        let required: Vec<_> = m.required_blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(required, vec![d(b"{}"), d(b"abc")]);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn artifact_manifest_with_subject() {
        let body = image(&format!(
            r#","artifactType":"application/vnd.example.sbom","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10}}"#,
            d(b"subject")
        ));
        let m = Manifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(m.subject.unwrap().digest.to_string(), d(b"subject"));
    }

    #[test]
    fn parses_an_index() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(b"child")
        );
        let m = Manifest::parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(m.required_manifests().len(), 1);
        assert_eq!(m.required_blobs().count(), 0);
        // The structure alone identifies an index.
        assert_eq!(
            Manifest::parse(None, body.as_bytes()).unwrap().media_type,
            OCI_INDEX
        );
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some(OCI_MANIFEST), "not json".into()),
            (Some(OCI_MANIFEST), "[]".into()),
            (Some("application/vnd.example+json"), image("")),
            (Some(DOCKER_MANIFEST), image("")),
            (
                Some(media::DOCKER_SCHEMA1_SIGNED),
                "{\"schemaVersion\":1}".into(),
            ),
            (
                Some(OCI_MANIFEST),
                image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
            ),
            (
                Some(OCI_MANIFEST),
                image("").replace(&d(b"abc"), "sha256:nothex"),
            ),
            (
                Some(OCI_MANIFEST),
                image("").replace("\"size\":3", "\"size\":-3"),
            ),
            (Some(OCI_INDEX), image("")),
            (None, r#"{"schemaVersion":2}"#.into()),
            (Some(OCI_MANIFEST), image(r#","artifactType":"not a type""#)),
        ];
        for (ct, body) in cases {
            assert!(
                Manifest::parse(ct, body.as_bytes()).is_err(),
                "{ct:?} {body}"
            );
        }
    }
}
