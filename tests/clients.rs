//! Real clients: skopeo copies a multi-architecture OCI image and a Docker-format image into
//! wharf and back out, and every digest must survive the round trip.

mod common;

use common::images::{docker_dir, files, oci_layout, Skopeo};
use common::{read_file, sha256, Backend, Server};
use serde_json::{json, Value};

async fn skopeo_round_trips_oci_and_docker_images(b: Backend) {
    let s = Server::start(b).await;
    let work = tempfile::tempdir().unwrap();
    let skopeo = Skopeo::new(work.path());
    let host = format!("127.0.0.1:{}", s.port);
    let (name, secret) = s.tester.clone().expect("tester token");
    skopeo.login(&host, &name, &secret);

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
    let manifest = docker_dir(&dsrc, &[30]);
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
