//! Plain-HTTP end-to-end tests of every /v2/ endpoint and its errors, against the real binary,
//! on SQLite and on PostgreSQL.

mod common;

use common::{expect_error, header, pseudo_random, rss_kib, sha256, Backend, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// An image manifest over a config and layers, as bytes.
fn image_manifest(config: &[u8], layers: &[&[u8]], extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&m).unwrap()
}

/// Pushes config and layer blobs and an image manifest under `reference`; returns the manifest.
async fn push_image(s: &Server, repo: &str, reference: &str, seed: u64) -> Vec<u8> {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = pseudo_random(1000 + seed as usize, seed);
    s.push_blob(repo, &config).await;
    s.push_blob(repo, &layer).await;
    let manifest = image_manifest(&config, &[&layer], json!({}));
    let r = s
        .push_manifest(repo, reference, OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    manifest
}

async fn base_and_health(b: Backend) {
    let s = Server::start(b).await;
    let r = s.send(Method::GET, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(
        s.send(Method::GET, "/healthz").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        s.send(Method::GET, "/readyz").await.status(),
        StatusCode::OK
    );
    expect_error(
        s.send(Method::GET, "/v2/nothing-here").await,
        404,
        "UNSUPPORTED",
    )
    .await;
    expect_error(
        s.send(Method::POST, "/v2/a/tags/list").await,
        405,
        "UNSUPPORTED",
    )
    .await;
}

async fn monolithic_upload(b: Backend) {
    let s = Server::start(b).await;
    let data = pseudo_random(70_000, 1);
    let digest = sha256(&data);
    let r = s.send(Method::POST, "/v2/team/app/blobs/uploads/").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location");
    assert!(loc.starts_with("/v2/team/app/blobs/uploads/"), "{loc}");
    assert_eq!(header(&r, "range"), "0-0");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    // Not visible before the upload completes.
    assert_eq!(
        s.send(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
            .await
            .status(),
        404
    );

    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/team/app/blobs/{digest}")
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);

    let r = s
        .send(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), data.len().to_string());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let r = s
        .send(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    // Another repository does not see it.
    expect_error(
        s.send(Method::GET, &format!("/v2/team/other/blobs/{digest}"))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    // The session is closed.
    expect_error(s.send(Method::GET, &loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

async fn single_request_upload(b: Backend) {
    let s = Server::start(b).await;
    let data = b"single request".to_vec();
    let digest = sha256(&data);
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/app/blobs/{digest}"));
    assert_eq!(
        s.send(Method::GET, &format!("/v2/app/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );

    // Wrong digest: refused, nothing kept.
    let other = sha256(b"something else");
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={other}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    assert_eq!(
        s.send(Method::HEAD, &format!("/v2/app/blobs/{other}"))
            .await
            .status(),
        404
    );
    // Malformed digest.
    let r = s
        .client
        .post(s.url("/v2/app/blobs/uploads/?digest=sha256:nothex"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    // sha512 is verified too.
    let d512 = format!(
        "sha512:{}",
        hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&data))
    );
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={d512}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.send(Method::HEAD, &format!("/v2/app/blobs/{d512}")).await;
    assert_eq!(header(&r, "docker-content-digest"), d512);
}

async fn chunked_upload(b: Backend) {
    let s = Server::start(b).await;
    let data = pseudo_random(15, 3);
    let digest = sha256(&data);
    let loc = s.start_upload("chunks").await;
    let patch = |range: &str, body: &[u8]| {
        s.client
            .patch(s.url(&loc))
            .header("content-range", range.to_string())
            .body(body.to_vec())
            .send()
    };
    let r = patch("0-4", &data[0..5]).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-4");
    assert_eq!(header(&r, "location"), loc);

    // Out of order, and a retried chunk: 416 with the current range.
    let r = patch("10-14", &data[10..15]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-4");
    let r = patch("0-4", &data[0..5]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Malformed Content-Range.
    let r = patch("five-nine", &data[5..10]).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-4");
    // Content-Length disagreeing with Content-Range.
    let r = patch("5-11", &data[5..10]).await.unwrap();
    expect_error(r, 400, "SIZE_INVALID").await;

    let r = s.send(Method::GET, &loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-4");
    assert_eq!(header(&r, "location"), loc);
    assert!(!header(&r, "docker-upload-uuid").is_empty());

    let r = patch("5-9", &data[5..10]).await.unwrap();
    assert_eq!(header(&r, "range"), "0-9");
    // Last chunk on the closing PUT.
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={digest}")))
        .header("content-range", "10-14")
        .body(data[10..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.send(Method::GET, &format!("/v2/chunks/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
}

async fn streamed_upload(b: Backend) {
    let s = Server::start(b).await;
    let data = pseudo_random(3 << 20, 4);
    let digest = sha256(&data);
    let loc = s.start_upload("stream").await;
    // A chunked transfer with no Content-Length nor Content-Range.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .client
        .patch(s.url(&loc))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), format!("0-{}", data.len() - 1));
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={digest}")))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = s
        .send(Method::GET, &format!("/v2/stream/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
}

async fn upload_errors(b: Backend) {
    let s = Server::start(b).await;
    let unknown = "/v2/app/blobs/uploads/00000000-0000-0000-0000-000000000000";
    for m in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
        expect_error(s.send(m, unknown).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    expect_error(
        s.send(Method::GET, "/v2/app/blobs/uploads/../../etc").await,
        404,
        "UNSUPPORTED",
    )
    .await;

    // A session belongs to its repository.
    let loc = s.start_upload("app").await;
    let id = loc.rsplit('/').next().unwrap();
    expect_error(
        s.send(Method::GET, &format!("/v2/other/blobs/uploads/{id}"))
            .await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;

    // PUT without digest, with a bad one, and with a mismatching one (which ends the session).
    s.client
        .patch(s.url(&loc))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(s.send(Method::PUT, &loc).await, 400, "DIGEST_INVALID").await;
    expect_error(
        s.send(Method::PUT, &format!("{loc}?digest=md5:abc")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_eq!(
        header(&s.send(Method::GET, &loc).await, "range"),
        "0-2",
        "a bad PUT keeps the session"
    );
    let wrong = sha256(b"abd");
    expect_error(
        s.send(Method::PUT, &format!("{loc}?digest={wrong}")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(s.send(Method::GET, &loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(
        s.send(Method::HEAD, &format!("/v2/app/blobs/{wrong}"))
            .await
            .status(),
        404
    );

    // Cancel.
    let loc = s.start_upload("app").await;
    assert_eq!(
        s.send(Method::DELETE, &loc).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(s.send(Method::GET, &loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;

    // Bad names.
    expect_error(
        s.send(Method::POST, "/v2/App/blobs/uploads/").await,
        400,
        "NAME_INVALID",
    )
    .await;
    expect_error(
        s.send(Method::POST, "/v2/a//b/blobs/uploads/").await,
        400,
        "NAME_INVALID",
    )
    .await;
    let long = "a".repeat(3000);
    expect_error(
        s.send(Method::POST, &format!("/v2/{long}/blobs/uploads/"))
            .await,
        400,
        "NAME_INVALID",
    )
    .await;
    // Longer than clients like, still a valid name.
    let name300 = "b".repeat(300);
    s.push_blob(&name300, b"x").await;
}

async fn truncated_body(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(b).await;
    let loc = s.start_upload("trunc").await;
    s.client
        .patch(s.url(&loc))
        .body(b"12345".to_vec())
        .send()
        .await
        .unwrap();
    // Announce 100 bytes, send 10, hang up.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let req = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Range: 5-104\r\n\r\n0123456789");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink).await;
    // The upload still holds exactly the first chunk and continues from there.
    let r = s.send(Method::GET, &loc).await;
    assert_eq!(header(&r, "range"), "0-4");
    let rest = b"67890".to_vec();
    let digest = sha256(b"1234567890");
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={digest}")))
        .header("content-range", "5-9")
        .body(rest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn range_reads(b: Backend) {
    let s = Server::start(b).await;
    let data = pseudo_random(100, 5);
    let digest = s.push_blob("ranges", &data).await;
    let path = format!("/v2/ranges/blobs/{digest}");
    for (range, from, to) in [
        ("bytes=2-5", 2, 5),
        ("bytes=90-", 90, 99),
        ("bytes=-3", 97, 99),
        ("bytes=95-200", 95, 99),
    ] {
        let r = s
            .client
            .get(s.url(&path))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {from}-{to}/100")
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[from..=to]);
    }
    let r = s
        .client
        .get(s.url(&path))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */100");
    let r = s
        .client
        .get(s.url(&path))
        .header("range", "bytes=9-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "an invalid range is ignored");
    expect_error(
        s.send(Method::GET, "/v2/ranges/blobs/sha256:xyz").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}

async fn cross_repository_mount(b: Backend) {
    let s = Server::start(b).await;
    let digest = s.push_blob("source", b"shared layer").await;
    let r = s
        .send(
            Method::POST,
            &format!("/v2/target/blobs/uploads/?mount={digest}&from=source"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/target/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(
        s.send(Method::GET, &format!("/v2/target/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"shared layer"
    );
    // Mounts that cannot happen become ordinary sessions.
    for q in [
        format!("mount={}&from=source", sha256(b"absent")),
        format!("mount={digest}&from=nowhere"),
        format!("mount={digest}"),
        "mount=sha256:bad&from=source".to_string(),
        format!("mount={digest}&from=Bad-Name"),
    ] {
        let r = s
            .send(Method::POST, &format!("/v2/third/blobs/uploads/?{q}"))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{q}");
        assert!(header(&r, "location").starts_with("/v2/third/blobs/uploads/"));
    }
}

async fn manifests_by_tag_and_digest(b: Backend) {
    let s = Server::start(b).await;
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = pseudo_random(5000, 6);
    let manifest = image_manifest(&config, &[&layer], json!({}));
    let digest = sha256(&manifest);

    // Blobs missing: refused with one error per missing digest, nothing stored.
    let r = s.push_manifest("img", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e["code"] == "MANIFEST_BLOB_UNKNOWN"));
    assert_eq!(errors[1]["detail"]["digest"], sha256(&layer));
    expect_error(
        s.send(Method::GET, "/v2/img/tags/list").await,
        404,
        "NAME_UNKNOWN",
    )
    .await;

    s.push_blob("img", &config).await;
    s.push_blob("img", &layer).await;
    let r = s.push_manifest("img", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/img/manifests/{digest}")
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);

    for reference in ["v1", digest.as_str()] {
        let r = s
            .client
            .get(s.url(&format!("/v2/img/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &manifest[..]);
        let r = s
            .send(Method::HEAD, &format!("/v2/img/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), manifest.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), digest);
    }
    // Accept negotiation: an image manifest is not served to a client that only takes indexes.
    let r = s
        .client
        .get(s.url("/v2/img/manifests/v1"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = s
        .client
        .get(s.url("/v2/img/manifests/v1"))
        .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Push by digest; the body must match it.
    let r = s
        .push_manifest("img", &digest, OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let other = push_image(&s, "img", "v2", 7).await;
    let r = s.push_manifest("img", &digest, OCI_MANIFEST, &other).await;
    expect_error(r, 400, "DIGEST_INVALID").await;

    expect_error(
        s.send(Method::GET, "/v2/img/manifests/nope").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // A reference that is neither a valid tag nor a valid digest names no manifest: GET and
    // HEAD answer 404 (as the OCI conformance tests expect), a PUT with it is refused.
    let long_tag = format!("/v2/img/manifests/{}", "t".repeat(129));
    for path in [
        "/v2/img/manifests/sha256:totallywrong",
        "/v2/img/manifests/.INVALID_MANIFEST_NAME",
        long_tag.as_str(),
    ] {
        expect_error(s.send(Method::GET, path).await, 404, "MANIFEST_UNKNOWN").await;
        let r = s.send(Method::HEAD, path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {path}");
    }
    let r = s
        .push_manifest("img", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &manifest)
        .await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = s
        .push_manifest("img", "sha256:totallywrong", OCI_MANIFEST, &manifest)
        .await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    expect_error(
        s.send(Method::GET, "/v2/unknown/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

async fn indexes_and_docker_manifests(b: Backend) {
    let s = Server::start(b).await;
    let amd = push_image(
        &s,
        "multi",
        &sha256(b"placeholder-not-used").replace("sha256:", "t"),
        1,
    )
    .await;
    let arm = push_image(&s, "multi", "arm", 2).await;
    let child = |m: &[u8], arch: &str| json!({ "mediaType": OCI_MANIFEST, "digest": sha256(m), "size": m.len(), "platform": { "os": "linux", "architecture": arch } });
    let missing = pseudo_random(10, 9);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [child(&amd, "amd64"), child(&missing, "arm64")],
    }))
    .unwrap();
    let r = s.push_manifest("multi", "latest", OCI_INDEX, &index).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [child(&amd, "amd64"), child(&arm, "arm64")],
    }))
    .unwrap();
    let r = s.push_manifest("multi", "latest", OCI_INDEX, &index).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.send(Method::GET, "/v2/multi/manifests/latest").await;
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &index[..]);

    // Docker schema 2 manifest and manifest list.
    let config = b"{\"docker\":true}".to_vec();
    let layer = pseudo_random(300, 10);
    s.push_blob("docker", &config).await;
    s.push_blob("docker", &layer).await;
    let dm = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer)],
    }))
    .unwrap();
    let r = s.push_manifest("docker", "v1", DOCKER_MANIFEST, &dm).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{ "mediaType": DOCKER_MANIFEST, "digest": sha256(&dm), "size": dm.len(), "platform": { "os": "linux", "architecture": "amd64" } }],
    })).unwrap();
    let r = s.push_manifest("docker", "list", DOCKER_LIST, &list).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .get(s.url("/v2/docker/manifests/list"))
        .header("accept", DOCKER_LIST)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_LIST);
    let r = s
        .client
        .get(s.url("/v2/docker/manifests/v1"))
        .header("accept", format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &dm[..]);
}

async fn invalid_manifests(b: Backend) {
    let s = Server::start(b).await;
    let good = push_image(&s, "bad", "keep", 3).await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "v1",
            OCI_MANIFEST,
            b"{not json".to_vec(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            "application/vnd.example.unknown+json",
            good.clone(),
            400,
            "MANIFEST_INVALID",
        ),
        ("v1", DOCKER_MANIFEST, good.clone(), 400, "MANIFEST_INVALID"),
        (
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{\"schemaVersion\":1}".to_vec(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"layers":[]}"#.to_vec(),
            400,
            "MANIFEST_INVALID",
        ),
        ("v1", OCI_INDEX, good.clone(), 400, "MANIFEST_INVALID"),
        (
            "bad+tag",
            OCI_MANIFEST,
            good.clone(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "sha256:123",
            OCI_MANIFEST,
            good.clone(),
            400,
            "DIGEST_INVALID",
        ),
    ];
    for (reference, ct, body, status, code) in cases {
        let r = s.push_manifest("bad", reference, ct, &body).await;
        assert_eq!(r.status().as_u16(), status, "{reference} {ct}");
        assert_eq!(common::error_code(r).await, code, "{reference} {ct}");
    }
    // Over the 4 MiB limit.
    let mut huge = good.clone();
    huge.pop();
    huge.extend_from_slice(
        format!(",\"annotations\":{{\"x\":\"{}\"}}}}", "y".repeat(4 << 20)).as_bytes(),
    );
    let r = s.push_manifest("bad", "huge", OCI_MANIFEST, &huge).await;
    expect_error(r, 413, "SIZE_INVALID").await;
    // Nothing of the above was stored.
    let tags: Value = s
        .send(Method::GET, "/v2/bad/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["keep"]));

    // Non-distributable layers need not be uploaded.
    let config = b"{}".to_vec();
    s.push_blob("bad", &config).await;
    let foreign = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", b"never uploaded")],
    })).unwrap();
    assert_eq!(
        s.push_manifest("bad", "foreign", OCI_MANIFEST, &foreign)
            .await
            .status(),
        StatusCode::CREATED
    );
}

async fn referrers(b: Backend) {
    let s = Server::start(b).await;
    let subject = push_image(&s, "art", "v1", 1).await;
    let subject_digest = sha256(&subject);
    let empty = b"{}".to_vec();
    s.push_blob("art", &empty).await;
    let sbom = pseudo_random(50, 2);
    s.push_blob("art", &sbom).await;
    let refer = |artifact: &str, note: &str, subject: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact,
            "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
            "layers": [descriptor("application/spdx+json", &sbom)],
            "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": 10 },
            "annotations": { "note": note },
        }))
        .unwrap()
    };
    let a = refer("application/vnd.example.sbom", "a", &subject_digest);
    let b2 = refer("application/vnd.example.sig", "b", &subject_digest);
    for m in [&a, &b2] {
        let r = s.push_manifest("art", &sha256(m), OCI_MANIFEST, m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), subject_digest);
    }
    // A referrer may arrive before its subject.
    let later = sha256(b"not pushed yet");
    let c = refer("application/vnd.example.sbom", "c", &later);
    assert_eq!(
        s.push_manifest("art", &sha256(&c), OCI_MANIFEST, &c)
            .await
            .status(),
        StatusCode::CREATED
    );

    let r = s
        .send(Method::GET, &format!("/v2/art/referrers/{subject_digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert!(header(&r, "oci-filters-applied").is_empty());
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let list = index["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["digest"], sha256(&a));
    assert_eq!(list[0]["artifactType"], "application/vnd.example.sbom");
    assert_eq!(list[0]["annotations"]["note"], "a");
    assert_eq!(list[0]["size"], a.len());
    assert_eq!(list[0]["mediaType"], OCI_MANIFEST);

    let r = s
        .send(
            Method::GET,
            &format!("/v2/art/referrers/{subject_digest}?artifactType=application/vnd.example.sig"),
        )
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["annotations"]["note"], "b");

    let index: Value = s
        .send(Method::GET, &format!("/v2/art/referrers/{later}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"][0]["digest"], sha256(&c));
    let r = s
        .send(
            Method::GET,
            &format!("/v2/art/referrers/{}", sha256(b"nothing")),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["manifests"], json!([]));
    expect_error(
        s.send(Method::GET, "/v2/art/referrers/sha256:zz").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}

/// Follows `Link` headers through a listing and returns the pages.
async fn pages(s: &Server, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next.take() {
        let r = s.send(Method::GET, &path).await;
        assert_eq!(r.status(), StatusCode::OK);
        let link = header(&r, "link");
        if !link.is_empty() {
            assert!(link.ends_with(">; rel=\"next\""), "{link}");
            next = Some(link[1..link.find('>').unwrap()].to_string());
        }
        let body: Value = r.json().await.unwrap();
        out.push(
            body[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
        );
    }
    out
}

async fn tag_and_catalog_pagination(b: Backend) {
    let s = Server::start(b).await;
    let manifest = push_image(&s, "pages", "t0", 1).await;
    for t in ["b", "A", "a", "c1", "c0"] {
        assert_eq!(
            s.push_manifest("pages", t, OCI_MANIFEST, &manifest)
                .await
                .status(),
            201
        );
    }
    let all: Value = s
        .send(Method::GET, "/v2/pages/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["name"], "pages");
    assert_eq!(all["tags"], json!(["A", "a", "b", "c0", "c1", "t0"]));
    let p = pages(&s, "/v2/pages/tags/list?n=4", "tags").await;
    assert_eq!(p, vec![vec!["A", "a", "b", "c0"], vec!["c1", "t0"]]);
    let p = pages(&s, "/v2/pages/tags/list?n=2&last=a", "tags").await;
    assert_eq!(p, vec![vec!["b", "c0"], vec!["c1", "t0"]]);
    let p = pages(&s, "/v2/pages/tags/list?n=0", "tags").await;
    assert_eq!(p, vec![Vec::<String>::new()]);
    let p = pages(&s, "/v2/pages/tags/list?n=1000000", "tags").await;
    assert_eq!(p[0].len(), 6);
    for bad in ["-1", "abc", "99999999999999999999", "1.5"] {
        expect_error(
            s.send(Method::GET, &format!("/v2/pages/tags/list?n={bad}"))
                .await,
            400,
            "PAGINATION_NUMBER_INVALID",
        )
        .await;
        expect_error(
            s.send(Method::GET, &format!("/v2/_catalog?n={bad}")).await,
            400,
            "PAGINATION_NUMBER_INVALID",
        )
        .await;
    }
    expect_error(
        s.send(Method::GET, "/v2/nothing/tags/list").await,
        404,
        "NAME_UNKNOWN",
    )
    .await;

    for repo in ["x/one", "x/two", "y"] {
        s.push_blob(repo, repo.as_bytes()).await;
    }
    let p = pages(&s, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(p, vec![vec!["pages", "x/one"], vec!["x/two", "y"]]);
}

async fn deletes(b: Backend) {
    let s = Server::start(b).await;
    let manifest = push_image(&s, "del", "v1", 1).await;
    let digest = sha256(&manifest);
    s.push_manifest("del", "v2", OCI_MANIFEST, &manifest).await;

    // Deleting a tag keeps the manifest and its other tags.
    assert_eq!(
        s.send(Method::DELETE, "/v2/del/manifests/v1")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        s.send(Method::GET, "/v2/del/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        s.send(Method::DELETE, "/v2/del/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        s.send(Method::GET, &format!("/v2/del/manifests/{digest}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.send(Method::GET, "/v2/del/manifests/v2").await.status(),
        200
    );

    // Deleting by digest removes the manifest and every tag on it.
    assert_eq!(
        s.send(Method::DELETE, &format!("/v2/del/manifests/{digest}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        s.send(Method::GET, &format!("/v2/del/manifests/{digest}"))
            .await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let tags: Value = s
        .send(Method::GET, "/v2/del/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!([]));
    expect_error(
        s.send(Method::DELETE, &format!("/v2/del/manifests/{digest}"))
            .await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // Blobs.
    let blob = s.push_blob("del", b"blob to delete").await;
    assert_eq!(
        s.send(Method::DELETE, &format!("/v2/del/blobs/{blob}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        s.send(Method::HEAD, &format!("/v2/del/blobs/{blob}"))
            .await
            .status(),
        404
    );
    expect_error(
        s.send(Method::DELETE, &format!("/v2/del/blobs/{blob}"))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    expect_error(
        s.send(Method::DELETE, "/v2/del/blobs/sha256:short").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_disabled() {
    let s = Server::start_with(Backend::Sqlite, &["--delete-enabled", "false"]).await;
    let manifest = push_image(&s, "keep", "v1", 1).await;
    expect_error(
        s.send(Method::DELETE, "/v2/keep/manifests/v1").await,
        405,
        "UNSUPPORTED",
    )
    .await;
    expect_error(
        s.send(
            Method::DELETE,
            &format!("/v2/keep/manifests/{}", sha256(&manifest)),
        )
        .await,
        405,
        "UNSUPPORTED",
    )
    .await;
    assert_eq!(
        s.send(Method::GET, "/v2/keep/manifests/v1").await.status(),
        200
    );
}

/// Open connections cost little memory. The server once copied a parsed OpenAPI document
/// (0.5 MiB) into every connection it accepted: 32 keep-alive clients held 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_cost_little_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(Backend::Sqlite).await;
    let before = rss_kib(s.pid()).expect("VmRSS");
    let mut open = Vec::new();
    for i in 0..100 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("send");
        let mut answer = [0u8; 256];
        let n = c.read(&mut answer).await.expect("answer");
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "connection {i}: {}",
            String::from_utf8_lossy(&answer[..n])
        );
        open.push(c);
    }
    let grown_mib = rss_kib(s.pid()).expect("VmRSS").saturating_sub(before) / 1024;
    assert!(
        grown_mib < 16,
        "100 open connections grew the server by {grown_mib} MiB"
    );
}

on_every_configuration!(
    base_and_health,
    monolithic_upload,
    single_request_upload,
    chunked_upload,
    streamed_upload,
    upload_errors,
    truncated_body,
    range_reads,
    cross_repository_mount,
    manifests_by_tag_and_digest,
    indexes_and_docker_manifests,
    invalid_manifests,
    referrers,
    tag_and_catalog_pagination,
    deletes,
);
