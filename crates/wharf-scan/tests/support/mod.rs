//! Helpers shared by the test files; each uses a different part of them.
#![allow(dead_code)]

/// Where the shared vulnerability data lives: `WHARF_VULNDB_DIR`, else `shared/data/vulndb`
/// beside the checkout (or any folder above it). Tests fail, never skip, when it is missing.
pub fn vulndb_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("WHARF_VULNDB_DIR") {
        return dir.into();
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors().chain([std::path::Path::new("/work")]) {
        let candidate = dir.join("shared/data/vulndb");
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!("shared/data/vulndb not found above {manifest:?}: set WHARF_VULNDB_DIR");
}

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// One entry of a test layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Exec(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    /// A raw path written byte for byte, bypassing the tar crate's own checks (for `../`).
    RawPath(&'a str, &'a [u8]),
}

/// A tar archive of the entries, uncompressed.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            Entry::File(path, data) | Entry::Exec(path, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(if matches!(e, Entry::Exec(..)) {
                    0o755
                } else {
                    0o644
                });
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, *data).expect("append");
            }
            Entry::Dir(path) => {
                h.set_size(0);
                h.set_mode(0o755);
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, path, &[][..]).expect("append");
            }
            Entry::Symlink(path, target) => {
                h.set_size(0);
                h.set_mode(0o777);
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, path, target).expect("append");
            }
            Entry::RawPath(path, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, *data).expect("append");
            }
        }
    }
    b.into_inner().expect("tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).expect("gzip");
    g.finish().expect("gzip")
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes an OCI image layout at `dir` with these layer blobs (already compressed or not) and
/// returns the manifest digest.
pub fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(&d[7..]), data).expect("write blob");
        d
    };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = put(config);
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(l), "size": l.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .expect("json");
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len()}],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    manifest_digest
}
