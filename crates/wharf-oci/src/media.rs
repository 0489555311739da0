//! Media types wharf understands.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";

/// Layers a registry never receives, so a manifest may name them without the blob being present.
const NON_DISTRIBUTABLE: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
];

pub fn is_non_distributable(media_type: &str) -> bool {
    NON_DISTRIBUTABLE.contains(&media_type)
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The manifest media types that can be pushed.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Strips parameters (`; charset=...`) and surrounding space from a media type header value.
pub fn essence(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// A media-type grammar check (RFC 6838 `type/subtype`), used for descriptors and artifact types.
pub fn is_valid_media_type(value: &str) -> bool {
    fn restricted_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 127
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    }
    match value.split_once('/') {
        Some((t, s)) => restricted_name(t) && restricted_name(s),
        None => false,
    }
}
