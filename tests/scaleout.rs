//! Several stateless nodes on one PostgreSQL database and one content store: any request may
//! reach any node, including the chunks of one upload, and what one node commits the others
//! serve at once.

mod common;

use std::time::Duration;

use common::images::{docker_dir, Skopeo};
use common::{
    expect_error, header, pseudo_random, sha256, Backend, PrivatePostgres, S3Server, Server,
};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |media: &str, data: &[u8]| json!({ "mediaType": media, "digest": sha256(data), "size": data.len() });
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    }))
    .expect("manifest json")
}

/// Two nodes, A and B, on one PostgreSQL database and one content store: a shared directory
/// (as on NFS) or an S3 bucket.
async fn pair(b: Backend) -> (Server, Server) {
    let a = Server::start(b).await;
    let b = a.second_node().await;
    (a, b)
}

async fn skopeo_pushes_through_one_node_and_pulls_through_the_other(b: Backend) {
    let (a, b) = pair(b).await;
    let work = tempfile::tempdir().expect("temp dir");
    let skopeo = Skopeo::new(work.path());
    let (name, secret) = a.tester.clone().expect("tester");
    let (host_a, host_b) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );
    skopeo.login(&host_a, &name, &secret);
    skopeo.login(&host_b, &name, &secret);
    let src = work.path().join("src");
    let pushed = docker_dir(&src, &[41, 42]);
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", src.display()),
        &format!("docker://{host_a}/team/app:v1"),
    ]);
    let raw = skopeo.run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host_b}/team/app:v1"),
    ]);
    assert_eq!(raw, pushed);
    let out = work.path().join("out");
    skopeo.run(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host_b}/team/app:v1"),
        &format!("dir:{}", out.display()),
    ]);
    assert_eq!(
        common::images::files(&src),
        common::images::files(&out),
        "every blob came back through the other node"
    );
}

async fn chunks_of_one_upload_alternate_between_nodes(b: Backend) {
    let (a, b) = pair(b).await;
    let data = pseudo_random(8 * 1024 * 1024 + 17, 5);
    let digest = sha256(&data);
    let mut location = a.start_upload("team/chunked").await;
    // Chunks of 1 MiB and more are hashed on after their PATCH is answered (the hash saved
    // with the session lags by a chunk): a node that did not hash the chunk before reads it
    // back, and two chunks in a row on one node go on from its running hash. Shorter chunks
    // are hashed before the answer.
    let (short, long) = (700 * 1024, 1200 * 1024);
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut rest = &data[..];
    for len in [long, long, short, long, long, short, long] {
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        chunks.push(chunk);
        rest = after;
    }
    chunks.push(rest);
    let mut offset = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        let node = if [0, 1, 4, 6].contains(&i) { &b } else { &a };
        let r = node
            .client
            .patch(node.url(&location))
            .header(
                "content-range",
                format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "chunk {i}");
        offset += chunk.len();
        assert_eq!(header(&r, "range"), format!("0-{}", offset - 1));
        location = header(&r, "location");
        // The other node sees the session's progress at once.
        let other = if std::ptr::eq(node, &b) { &a } else { &b };
        let r = other.send(Method::GET, &location).await;
        assert_eq!(header(&r, "range"), format!("0-{}", offset - 1));
    }
    // A chunk out of order is refused on either node, with the state the other node left.
    let r = a
        .client
        .patch(a.url(&location))
        .header("content-range", "0-9")
        .body(vec![0u8; 10])
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), format!("0-{}", offset - 1));
    let r = b
        .client
        .put(b.url(&format!("{location}?digest={digest}")))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    for node in [&a, &b] {
        let r = node
            .send(Method::GET, &format!("/v2/team/chunked/blobs/{digest}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.expect("body").as_ref(), data.as_slice());
    }
}

async fn concurrent_pushes_through_both_nodes_share_layers_and_tags_move_everywhere(b: Backend) {
    let (a, b) = pair(b).await;
    let shared_layer = pseudo_random(200_000, 77);
    let pushes = (0..12u64).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let shared_layer = shared_layer.clone();
        async move {
            let own = pseudo_random(50_000, 100 + i);
            let config = format!("{{\"image\":{i}}}").into_bytes();
            let repo = format!("team/app{}", i % 3);
            // Every push uploads the shared layer too, racing the others for the same digest.
            node.push_blob(&repo, &shared_layer).await;
            node.push_blob(&repo, &own).await;
            node.push_blob(&repo, &config).await;
            let m = manifest(&config, &[&shared_layer, &own]);
            let r = node
                .push_manifest(&repo, &format!("v{i}"), OCI_MANIFEST, &m)
                .await;
            assert_eq!(r.status(), StatusCode::CREATED, "push {i}");
            (repo, i, sha256(&m))
        }
    });
    let pushed = futures_util::future::join_all(pushes).await;
    for (repo, i, digest) in &pushed {
        for node in [&a, &b] {
            let r = node
                .send(Method::HEAD, &format!("/v2/{repo}/manifests/v{i}"))
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(&header(&r, "docker-content-digest"), digest);
        }
    }
    let r = b
        .send(
            Method::GET,
            &format!("/v2/team/app0/blobs/{}", sha256(&shared_layer)),
        )
        .await;
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        shared_layer.as_slice()
    );

    // A tag moved on one node is seen on the other at once (images 0 and 3 are both in
    // team/app0), back and forth.
    for (from, to, which) in [(&a, &b, 0usize), (&b, &a, 3), (&a, &b, 0)] {
        let (repo, i, digest) = &pushed[which];
        let body = from
            .send(Method::GET, &format!("/v2/{repo}/manifests/v{i}"))
            .await
            .bytes()
            .await
            .expect("manifest");
        let r = from
            .push_manifest(repo, "moving", OCI_MANIFEST, &body)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = to
            .send(Method::HEAD, &format!("/v2/{repo}/manifests/moving"))
            .await;
        assert_eq!(&header(&r, "docker-content-digest"), digest);
    }
}

async fn a_node_killed_mid_upload_leaves_nothing_partial_and_another_finishes_it(b: Backend) {
    let (mut a, b) = pair(b).await;
    let data = pseudo_random(2 * 1024 * 1024, 9);
    let digest = sha256(&data);
    let location = a.start_upload("team/killed").await;
    let half = data.len() / 2;
    let r = a
        .client
        .patch(a.url(&location))
        .header("content-range", format!("0-{}", half - 1))
        .body(data[..half].to_vec())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The second half trickles into node A, which dies half-way.
    let rest = data[half..].to_vec();
    let url = a.url(&location);
    let client = a.client.clone();
    let trickle = tokio::spawn(async move {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            rest.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let body = futures_util::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c
        });
        client
            .patch(url)
            .header("content-range", format!("{half}-{}", 2 * half - 1))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    // Whatever the client saw, the request did not complete.
    let _ = trickle.await;
    // Nothing of the interrupted chunk is visible: B sees the session at its first half, and
    // no blob or manifest of it.
    let r = b.send(Method::GET, &location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), format!("0-{}", half - 1));
    let r = b
        .send(Method::HEAD, &format!("/v2/team/killed/blobs/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // B takes the upload on and finishes it.
    let r = b
        .client
        .put(b.url(&format!("{location}?digest={digest}")))
        .header("content-range", format!("{half}-{}", data.len() - 1))
        .body(data[half..].to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let r = b
        .send(Method::GET, &format!("/v2/team/killed/blobs/{digest}"))
        .await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), data.as_slice());
}

/// While a store is down, reading a stored blob is a 503 with the registry error body, and the
/// node says it is not ready.
async fn assert_unavailable(s: &Server, stored: &[u8]) {
    let r = s
        .send(
            Method::GET,
            &format!("/v2/team/app/blobs/{}", sha256(stored)),
        )
        .await;
    expect_error(r, 503, "UNAVAILABLE").await;
    let r = s.anon.get(s.url("/readyz")).send().await.expect("readyz");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let details: serde_json::Value = r.json().await.expect("readiness details");
    assert_eq!(details["status"], "not ready");
    assert!(
        details["metadata"] == "unavailable" || details["storage"] == "unavailable",
        "{details}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_outage_fails_cleanly_and_recovers() {
    let mut s3 = S3Server::private();
    let bucket = s3.bucket().await;
    let storage = format!("s3://{bucket}/outage");
    let s = Server::start_with(
        Backend::Postgres,
        &["--storage", &storage, "--s3-endpoint", &s3.endpoint],
    )
    .await;
    let before = pseudo_random(100_000, 1);
    s.push_blob("team/app", &before).await;
    let location = s.start_upload("team/app").await;
    let r = s
        .client
        .patch(s.url(&location))
        .body(vec![1u8; 1000])
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    s3.stop();
    // Requests that need the store fail with 503 and the error body; nothing becomes visible.
    let r = s
        .client
        .patch(s.url(&location))
        .header("content-range", "1000-1999")
        .body(vec![2u8; 1000])
        .send()
        .await
        .expect("patch");
    expect_error(r, 503, "UNAVAILABLE").await;
    let r = s.send(Method::GET, &location).await;
    assert_eq!(
        header(&r, "range"),
        "0-999",
        "the failed chunk left nothing"
    );
    let during = pseudo_random(50_000, 2);
    let digest = sha256(&during);
    let r = s
        .client
        .post(s.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(during.clone())
        .send()
        .await
        .expect("post");
    expect_error(r, 503, "UNAVAILABLE").await;
    let r = s
        .send(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_unavailable(&s, &before).await;
    // Manifests live in the database: a manifest naming the blob that failed is refused.
    let config = b"{}".to_vec();
    let m = manifest(&config, &[&during]);
    let r = s.push_manifest("team/app", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The store comes back (empty: the test server keeps objects in memory) and the node
    // recovers by itself.
    s3.start_again();
    let r = reqwest::Client::new()
        .put(format!("{}/{bucket}", s3.endpoint))
        .send()
        .await
        .expect("bucket");
    assert!(r.status().is_success());
    let r = s.anon.get(s.url("/readyz")).send().await.expect("readyz");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.push_blob("team/app", &during).await, digest);
    s.push_blob("team/app", &config).await;
    let r = s.push_manifest("team/app", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .send(Method::GET, &format!("/v2/team/app/blobs/{digest}"))
        .await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), during.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bucket_or_endpoint_stops_the_start_with_one_line() {
    let s3 = S3Server::shared();
    for (storage, endpoint, says) in [
        (
            "s3://no-such-bucket-here",
            s3.endpoint.clone(),
            "bucket does not exist",
        ),
        (
            "s3://any",
            "http://127.0.0.1:9".to_string(),
            "connection refused",
        ),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--listen", "127.0.0.1:0", "--storage", storage])
            .args(["--s3-endpoint", &endpoint, "--data-dir"])
            .arg(dir.path())
            .env("AWS_ACCESS_KEY_ID", "wharf-test")
            .env("AWS_SECRET_ACCESS_KEY", "wharf-test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .expect("run wharf");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("wharf: error: content store"), "{err}");
        assert!(last.contains(says), "{storage}: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_database_outage_fails_cleanly_and_recovers() {
    let pg = PrivatePostgres::start();
    let s = Server::start_with(Backend::Sqlite, &["--database-url", &pg.url()]).await;
    let before = pseudo_random(10_000, 4);
    s.push_blob("team/app", &before).await;

    pg.stop();
    // Let the cached registry and token (a second at most) expire.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = s.send(Method::POST, "/v2/team/app/blobs/uploads/").await;
    expect_error(r, 503, "UNAVAILABLE").await;
    assert_unavailable(&s, &before).await;
    let r = s
        .anon
        .get(s.url("/api/v1/registries"))
        .bearer_auth(common::OWNER_KEY)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );

    pg.start_again();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.anon.get(s.url("/readyz")).send().await.expect("readyz");
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = pseudo_random(10_000, 5);
    s.push_blob("team/app", &after).await;
    let r = s
        .send(
            Method::GET,
            &format!("/v2/team/app/blobs/{}", sha256(&before)),
        )
        .await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), before.as_slice());
}

/// The README's move from one node on SQLite to PostgreSQL: the metadata copied with
/// `wharf metadata copy`, the content where it was; images, tokens and tags survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_moves_to_postgres() {
    let mut single = Server::start(Backend::Sqlite).await;
    let layer = pseudo_random(300_000, 21);
    let config = b"{\"moved\":true}".to_vec();
    single.push_blob("team/app", &layer).await;
    single.push_blob("team/app", &config).await;
    let m = manifest(&config, &[&layer]);
    let r = single
        .push_manifest("team/app", "v1", OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    single.stop();

    let url = format!(
        "{}/wharf_e2e_{}",
        common::postgres_base(),
        uuid::Uuid::new_v4().simple()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["metadata", "copy", "--to", &url, "--data-dir"])
        .arg(single.data_dir())
        .output()
        .expect("wharf metadata copy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("manifests: 1 rows"));
    // Copying again into the filled database is refused, with one line.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["metadata", "copy", "--to", &url, "--data-dir"])
        .arg(single.data_dir())
        .output()
        .expect("wharf metadata copy");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("empty one") && err.lines().count() == 1,
        "{err}"
    );

    // The same token (its secret's hash moved with it) pulls the same image from PostgreSQL.
    let moved = single.node_on(Some(url), true).await;
    let r = moved.send(Method::GET, "/v2/team/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").as_ref(), m.as_slice());
    let r = moved
        .send(
            Method::GET,
            &format!("/v2/team/app/blobs/{}", sha256(&layer)),
        )
        .await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), layer.as_slice());
    // New tokens get ids of their own.
    let created = moved
        .create_token("default", "after-move", json!([{ "type": "registry" }]))
        .await;
    assert!(created.is_some());
}

/// The scenarios on both shared stores.
macro_rules! on_shared_stores {
    ($($name:ident),* $(,)?) => {
        mod shared_disk {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::PostgresS3).await })*
        }
    };
}

on_shared_stores!(
    skopeo_pushes_through_one_node_and_pulls_through_the_other,
    chunks_of_one_upload_alternate_between_nodes,
    concurrent_pushes_through_both_nodes_share_layers_and_tags_move_everywhere,
    a_node_killed_mid_upload_leaves_nothing_partial_and_another_finishes_it,
);
