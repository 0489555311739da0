//! Real clients: skopeo copies a multi-architecture OCI image and a Docker-format image into
//! wharf and back out, and every digest must survive the round trip.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pseudo_random, read_file, sha256, Backend, Server};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A gzip-compressed tar layer holding one file, and the digest of the uncompressed tar.
fn layer(name: &str, seed: u64) -> (Vec<u8>, String) {
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

fn config(arch: &str, diff_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": ["/app"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap()
}

fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// Writes an OCI image layout holding a two-platform index tagged `v1`; returns the index.
fn oci_layout(dir: &Path) -> Vec<u8> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        std::fs::write(blobs.join(&sha256(data)[7..]), data).unwrap();
    };
    let mut children = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let (l, diff_id) = layer(&format!("bin-{arch}"), 20 + i as u64);
        let c = config(arch, &diff_id);
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

/// Writes a Docker schema 2 image in skopeo's `dir:` format; returns the manifest.
fn docker_dir(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let (l, diff_id) = layer("docker-file", 30);
    let c = config("amd64", &diff_id);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": desc("application/vnd.docker.container.image.v1+json", &c),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &l)],
    }))
    .unwrap();
    for blob in [&l, &c] {
        std::fs::write(dir.join(&sha256(blob)[7..]), blob).unwrap();
    }
    std::fs::write(dir.join("manifest.json"), &m).unwrap();
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    m
}

struct Skopeo {
    policy: PathBuf,
    home: PathBuf,
}

impl Skopeo {
    fn new(dir: &Path) -> Skopeo {
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        Skopeo { policy, home }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("skopeo")
            .arg("--policy")
            .arg(&self.policy)
            .args(args)
            .env("HOME", &self.home)
            .output()
            .expect("skopeo is installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "skopeo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// Every blob file of a directory, by file name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
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

async fn skopeo_round_trips_oci_and_docker_images(b: Backend) {
    let s = Server::start(b).await;
    let work = tempfile::tempdir().unwrap();
    let skopeo = Skopeo::new(work.path());
    let host = format!("127.0.0.1:{}", s.port);

    // Multi-architecture OCI index.
    let src = work.path().join("oci-src");
    let index = oci_layout(&src);
    let dest = format!("docker://{host}/team/multi:v1");
    skopeo.run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ]);
    let raw = skopeo.run(&["inspect", "--raw", "--tls-verify=false", &dest]);
    assert_eq!(raw, index, "the index is served byte for byte");
    let out = work.path().join("oci-out");
    skopeo.run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", out.display()),
    ]);
    let out_index: Value = serde_json::from_slice(&read_file(&out.join("index.json"))).unwrap();
    assert_eq!(out_index["manifests"][0]["digest"], sha256(&index));
    assert_eq!(
        files(&src.join("blobs/sha256")),
        files(&out.join("blobs/sha256"))
    );

    // Docker schema 2 image.
    let dsrc = work.path().join("docker-src");
    let manifest = docker_dir(&dsrc);
    let ddest = format!("docker://{host}/team/docker-app:v1");
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", dsrc.display()),
        &ddest,
    ]);
    let info: Value =
        serde_json::from_slice(&skopeo.run(&["inspect", "--tls-verify=false", &ddest])).unwrap();
    assert_eq!(info["Digest"], sha256(&manifest));
    assert_eq!(info["Architecture"], "amd64");
    let dout = work.path().join("docker-out");
    skopeo.run(&[
        "copy",
        "--src-tls-verify=false",
        &ddest,
        &format!("dir:{}", dout.display()),
    ]);
    assert_eq!(read_file(&dout.join("manifest.json")), manifest);
    let mut want = files(&dsrc);
    let mut got = files(&dout);
    want.remove("version");
    got.remove("version");
    assert_eq!(want, got);

    let tags: Value = serde_json::from_slice(&skopeo.run(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/team/docker-app"),
    ]))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v1"]));
}

on_both_backends!(skopeo_round_trips_oci_and_docker_images);
