//! Images built by the tests themselves (OCI layouts and skopeo `dir:` images) and a skopeo
//! runner, for the real-client tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{pseudo_random, read_file, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A gzip-compressed tar layer holding one file, and the digest of the uncompressed tar.
pub fn layer(name: &str, seed: u64) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let content = pseudo_random(20_000, seed);
    let mut hdr = tar::Header::new_gnu();
    hdr.set_size(content.len() as u64);
    hdr.set_mode(0o644);
    hdr.set_cksum();
    tar.append_data(&mut hdr, name, &content[..]).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = sha256(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

pub fn config(arch: &str, diff_ids: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": ["/app"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// Writes an OCI image layout holding a two-platform index tagged `v1`; returns the index.
pub fn oci_layout(dir: &Path) -> Vec<u8> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        std::fs::write(blobs.join(&sha256(data)[7..]), data).unwrap();
    };
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let (l, diff_id) = layer(&format!("bin-{arch}"), 20 + i as u64);
        let c = config(arch, &[&diff_id]);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &c),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &l)],
        }))
        .unwrap();
        put(&l);
        put(&c);
        put(&m);
        let mut d = desc(OCI_MANIFEST, &m);
        d["platform"] = json!({ "os": "linux", "architecture": arch });
        children.push(d);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    put(&index);
    let mut top = desc(OCI_INDEX, &index);
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": "v1" });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [top] })).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    index
}

/// Writes a Docker schema 2 image in skopeo's `dir:` format, one layer per seed (the same seed
/// gives the same layer); returns the manifest.
pub fn docker_dir(dir: &Path, layer_seeds: &[u64]) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let layers: Vec<(Vec<u8>, String)> = layer_seeds
        .iter()
        .map(|seed| layer(&format!("file-{seed}"), *seed))
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let c = config("amd64", &diff_ids);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": desc("application/vnd.docker.container.image.v1+json", &c),
        "layers": layers.iter().map(|(l, _)| desc("application/vnd.docker.image.rootfs.diff.tar.gzip", l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    for blob in layers.iter().map(|(l, _)| l).chain([&c]) {
        std::fs::write(dir.join(&sha256(blob)[7..]), blob).unwrap();
    }
    std::fs::write(dir.join("manifest.json"), &m).unwrap();
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    m
}

pub struct Skopeo {
    policy: PathBuf,
    home: PathBuf,
    auth_file: PathBuf,
}

impl Skopeo {
    pub fn new(dir: &Path) -> Skopeo {
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let auth_file = dir.join("auth.json");
        Skopeo {
            policy,
            home,
            auth_file,
        }
    }

    /// `skopeo login` with a token's name and secret (on standard input).
    pub fn login(&self, host: &str, name: &str, secret: &str) {
        let mut child = Command::new("skopeo")
            .args([
                "login",
                "--tls-verify=false",
                "--username",
                name,
                "--password-stdin",
                host,
            ])
            .env("HOME", &self.home)
            .env("REGISTRY_AUTH_FILE", &self.auth_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("skopeo login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(secret.as_bytes())
            .expect("write secret");
        let out = child.wait_with_output().expect("skopeo login");
        assert!(
            out.status.success(),
            "skopeo login failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn run(&self, args: &[&str]) -> Vec<u8> {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("skopeo {args:?} failed:\n{e}"))
    }

    /// Runs skopeo; its standard error on failure.
    pub fn try_run(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        let out = Command::new("skopeo")
            .arg("--policy")
            .arg(&self.policy)
            .args(args)
            .env("HOME", &self.home)
            .env("REGISTRY_AUTH_FILE", &self.auth_file)
            .output()
            .expect("skopeo is installed (scripts/test installs it)");
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// Every blob file of a directory, by file name.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                read_file(&e.path()),
            )
        })
        .collect()
}
