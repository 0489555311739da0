//! Pull-through caches end to end: skopeo pulls through wharf from a second `wharf serve` (and
//! from distribution's registry behind TLS with Basic auth, in the TLS test); faults of an
//! upstream (HTML, a digest that does not match, a connection dropped mid-blob, silence) come
//! from a small misbehaving server on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::api;
use crate::common::images::{oci_layout, Skopeo};
use crate::common::{
    cli_err, cli_ok, cli_with_input, files_under, sha256, Backend, Server, OWNER_KEY,
};

/// How many requests the upstream's log shows for `method path` (its requests are logged at
/// debug level by the test servers).
fn requests_logged(up: &Server, method: &str, path: &str) -> usize {
    let needle = format!("method={method} path={path} ");
    up.log().lines().filter(|l| l.contains(&needle)).count()
}

/// Stores credentials for `up` in the default registry of `s` and makes `prefix` a cache of it.
fn cache_of(s: &Server, up_url: &str, user: &str, secret: &str, prefix: &str, args: &[&str]) {
    let out = cli_with_input(
        s,
        &[
            "upstream",
            "create",
            "default",
            up_url,
            "--username",
            user,
            "--secret-stdin",
        ],
        secret,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = up_url.split_once("://").map(|(_, h)| h).unwrap_or(up_url);
    let mut create = vec!["cache", "create", "default", prefix, "--upstream", host];
    create.extend_from_slice(args);
    cli_ok(s, &create);
}

fn copy(skopeo: &Skopeo, from: &str, to: &std::path::Path) -> Result<Vec<u8>, String> {
    skopeo.try_run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        from,
        &format!("oci:{}:v1", to.display()),
    ])
}

/// The digest of the index a pull wrote into an OCI layout.
fn pulled_digest(dir: &std::path::Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

pub(super) async fn pull_through_cache(backend: Backend) {
    // A short grace: cached content is collected in the test as soon as nothing references it.
    let s = Server::start_with(backend, &["--gc-grace", "1s"]).await;
    let mut up = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().expect("tempdir");
    let skopeo = Skopeo::new(work.path());
    let up_host = format!("127.0.0.1:{}", up.port);
    let host = format!("127.0.0.1:{}", s.port);
    let (name, secret) = up.tester.clone().expect("tester");
    skopeo.login(&up_host, &name, &secret);
    let (name, secret) = s.tester.clone().expect("tester");
    skopeo.login(&host, &name, &secret);

    // On the upstream: a two-platform index, library/app:v1.
    let src = work.path().join("src");
    let index = oci_layout(&src);
    skopeo.run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{up_host}/library/app:v1"),
    ]);
    let (puller, pull_secret) = up
        .create_token(
            "default",
            "puller",
            json!([{ "type": "repository", "path": "library/*", "actions": ["pull"] }]),
        )
        .await
        .expect("puller");

    // Bad input to the API and CLI first.
    let up_url = format!("http://{up_host}");
    let bad = cli_err(
        &s,
        Some(OWNER_KEY),
        &["cache", "create", "default", "hub", "--upstream", &up_host],
    );
    assert!(bad.contains("has no upstream"), "{bad}");
    cache_of(
        &s,
        &up_url,
        &puller,
        &pull_secret,
        "hub",
        &["--upstream-prefix", "library", "--revalidate", "1h"],
    );
    for (body, want) in [
        (json!({ "prefix": "hub", "upstream": up_host }), 409),
        (json!({ "prefix": "Hub/", "upstream": up_host }), 422),
        (
            json!({ "prefix": "x", "upstream": up_host, "upstream_prefix": "a//b" }),
            422,
        ),
        (
            json!({ "prefix": "x", "upstream": up_host, "revalidate_secs": -1 }),
            422,
        ),
        (
            json!({ "prefix": "x", "upstream": "https://nowhere.example" }),
            422,
        ),
        (
            json!({ "prefix": "x", "upstream": up_host, "extra": 1 }),
            422,
        ),
    ] {
        let (status, problem) = api(
            &s,
            reqwest::Method::POST,
            "/api/v1/registries/default/caches",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body}: {problem}");
    }
    let listed: Value =
        serde_json::from_str(&cli_ok(&s, &["cache", "list", "default", "--json"])).expect("list");
    assert_eq!(listed[0]["prefix"], "hub");
    assert_eq!(listed[0]["upstream"], up_host.as_str());
    assert_eq!(listed[0]["upstream_prefix"], "library");
    assert_eq!(listed[0]["revalidate_secs"], 3600);
    // The upstream a cache uses cannot go.
    let (status, problem) = api(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/registries/default/upstreams/{up_host}"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{problem}");

    // The registry scans what it holds: cached images too, once their layers are here.
    cli_ok(&s, &["registry", "update", "default", "--scanning"]);

    // Two first pulls at once: each gets the image, the upstream sends each piece once.
    let logins_before = requests_logged(&up, "GET", "/auth/token");
    let from = format!("docker://{host}/hub/app:v1");
    let outs = [work.path().join("a"), work.path().join("b")];
    std::thread::scope(|scope| {
        let pulls: Vec<_> = outs
            .iter()
            .map(|out| scope.spawn(|| copy(&skopeo, &from, out)))
            .collect();
        for pull in pulls {
            pull.join()
                .expect("thread")
                .expect("pull through the cache");
        }
    });
    let blobs = files_under(&src.join("blobs/sha256"));
    for out in &outs {
        assert_eq!(pulled_digest(out), sha256(&index));
        assert_eq!(files_under(&out.join("blobs/sha256")).len(), blobs.len());
    }
    assert_eq!(
        requests_logged(&up, "GET", "/v2/library/app/manifests/v1"),
        1,
        "the tag was fetched once"
    );
    for (path, bytes) in &blobs {
        let digest = format!(
            "sha256:{}",
            path.file_name().expect("name").to_string_lossy()
        );
        assert_eq!(digest, sha256(bytes));
        let fetched = requests_logged(&up, "GET", &format!("/v2/library/app/blobs/{digest}"))
            + requests_logged(&up, "GET", &format!("/v2/library/app/manifests/{digest}"));
        // The index is fetched by its tag; each other piece once by its digest.
        let want = usize::from(digest != sha256(&index));
        assert_eq!(fetched, want, "{digest} fetched {fetched} times");
    }
    // One login served every fetch (the token flow's token is used again).
    assert_eq!(
        requests_logged(&up, "GET", "/auth/token") - logins_before,
        1,
        "logins"
    );
    let audit = cli_ok(&s, &["audit", "--registry", "default", "--json"]);
    assert!(audit.contains("manifest.cache"), "{audit}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, artifact) = api(
            &s,
            reqwest::Method::GET,
            "/api/v1/registries/default/artifacts/hub/app/-/v1",
            None,
        )
        .await;
        assert_eq!(status, 200, "{artifact}");
        // The test's layers hold no packages: a scan that read them says so (one that could
        // not read them would say that instead).
        let reasons: Vec<&str> = artifact["platforms"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|p| p["scan"]["reason"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if reasons.len() == 2 && reasons.iter().all(|r| r.starts_with("no /etc/os-release")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cached images not scanned: {artifact}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Pushes to a cached repository are refused; its content counts toward storage.
    let r = s
        .send(reqwest::Method::POST, "/v2/hub/app/blobs/uploads/")
        .await;
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap_or_default()
        .contains("pull-through cache"));
    let (_, registry) = api(&s, reqwest::Method::GET, "/api/v1/registries/default", None).await;
    let stored: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(
        registry["storage_bytes"].as_u64().unwrap_or(0) >= stored - index.len() as u64,
        "{registry}"
    );

    // With the upstream stopped, the cached image is still served; past its revalidation time
    // too (the upstream cannot be asked).
    up.stop();
    copy(&skopeo, &from, &work.path().join("c")).expect("served from the cache");
    cli_ok(
        &s,
        &["cache", "update", "default", "hub", "--revalidate", "0s"],
    );
    copy(&skopeo, &from, &work.path().join("d")).expect("served stale while the upstream is down");
    up.start_again().await;

    // The tag moves on the upstream: revalidated at once (0 s), the new image is served; with
    // an hour to go, the cached one is.
    let src2 = work.path().join("src2");
    std::fs::create_dir_all(&src2).expect("dir");
    let index2 = {
        let mut layout = oci_layout(&src2);
        // Another index over the same children: a new digest for the tag.
        let mut v: Value = serde_json::from_slice(&layout).expect("index");
        v["annotations"] = json!({ "moved": "yes" });
        layout = serde_json::to_vec(&v).expect("json");
        let r = up
            .push_manifest(
                "library/app",
                "v1",
                "application/vnd.oci.image.index.v1+json",
                &layout,
            )
            .await;
        assert_eq!(r.status(), 201);
        layout
    };
    copy(&skopeo, &from, &work.path().join("e")).expect("revalidated pull");
    assert_eq!(pulled_digest(&work.path().join("e")), sha256(&index2));
    assert!(requests_logged(&up, "HEAD", "/v2/library/app/manifests/v1") >= 1);
    cli_ok(
        &s,
        &["cache", "update", "default", "hub", "--revalidate", "1h"],
    );
    let r = up
        .push_manifest(
            "library/app",
            "v1",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .await;
    assert_eq!(r.status(), 201);
    copy(&skopeo, &from, &work.path().join("f")).expect("cached pull");
    assert_eq!(
        pulled_digest(&work.path().join("f")),
        sha256(&index2),
        "within the revalidation time the cached tag is served"
    );

    // At its storage quota the registry's cache stores nothing more: a first pull is refused
    // naming the quota, while what is cached is still served; with room again, it is fetched.
    let r = up
        .push_manifest(
            "library/app",
            "v9",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .await;
    assert_eq!(r.status(), 201);
    cli_ok(&s, &["registry", "update", "default", "--quota", "1B"]);
    let r = s
        .send(reqwest::Method::GET, "/v2/hub/app/manifests/v9")
        .await;
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("DENIED") && body.contains("quota"), "{body}");
    let r = s
        .send(reqwest::Method::GET, "/v2/hub/app/manifests/v1")
        .await;
    assert_eq!(r.status(), 200, "cached content is served at the quota");
    cli_ok(&s, &["registry", "update", "default", "--quota", "none"]);
    let r = s
        .send(reqwest::Method::GET, "/v2/hub/app/manifests/v9")
        .await;
    assert_eq!(r.status(), 200);
    let r = s
        .send(reqwest::Method::DELETE, "/v2/hub/app/manifests/v9")
        .await;
    assert_eq!(r.status(), 202);

    // Cached content is collectable: untagged and collected, it is fetched again.
    let r = s
        .send(
            reqwest::Method::DELETE,
            &format!("/v2/hub/app/manifests/{}", sha256(&index2)),
        )
        .await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report: Value =
        serde_json::from_str(&cli_ok(&s, &["gc", "run", "default", "--json"])).expect("gc report");
    assert!(report["blobs_freed"].as_u64().unwrap_or(0) >= 4, "{report}");
    copy(&skopeo, &from, &work.path().join("g")).expect("fetched again");
    assert_eq!(pulled_digest(&work.path().join("g")), sha256(&index));

    // The cache goes; its upstream then may go too.
    cli_ok(&s, &["cache", "delete", "default", "hub", "--yes"]);
    let (status, _) = api(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/registries/default/upstreams/{up_host}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        !s.log().contains(&pull_secret),
        "the upstream's secret is never logged"
    );
}

/// What the misbehaving upstream answers for a path.
#[derive(Clone)]
enum Answer {
    /// 200 with these headers' content type and body.
    Body(&'static str, Vec<u8>),
    /// Says `len` bytes, sends `sent` of them, and closes.
    CutShort { len: usize, sent: Vec<u8> },
    /// Sends the headers, then nothing.
    Silent { len: usize },
}

/// A server on loopback that speaks just enough HTTP/1.1 to be an upstream, and counts the
/// requests per path.
struct Faulty {
    port: u16,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Faulty {
    async fn start(answers: HashMap<String, Answer>) -> Faulty {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let counts = seen.clone();
        let answers = Arc::new(answers);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (answers, counts) = (answers.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    *counts
                        .lock()
                        .expect("counts")
                        .entry(path.clone())
                        .or_insert(0) += 1;
                    let answer = if path == "/v2/" {
                        Some(Answer::Body("application/json", b"{}".to_vec()))
                    } else {
                        answers.get(&path).cloned()
                    };
                    let reply = |status: &str, ctype: &str, len: usize| {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n\
                             Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n"
                        )
                    };
                    match answer {
                        None => {
                            let _ = conn
                                .write_all(reply("404 Not Found", "application/json", 2).as_bytes())
                                .await;
                            let _ = conn.write_all(b"{}").await;
                        }
                        Some(Answer::Body(ctype, body)) => {
                            let _ = conn
                                .write_all(reply("200 OK", ctype, body.len()).as_bytes())
                                .await;
                            if !head.starts_with("HEAD") {
                                let _ = conn.write_all(&body).await;
                            }
                        }
                        Some(Answer::CutShort { len, sent }) => {
                            let _ = conn
                                .write_all(
                                    reply("200 OK", "application/octet-stream", len).as_bytes(),
                                )
                                .await;
                            let _ = conn.write_all(&sent).await;
                        }
                        Some(Answer::Silent { len }) => {
                            let _ = conn
                                .write_all(
                                    reply("200 OK", "application/octet-stream", len).as_bytes(),
                                )
                                .await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        Faulty { port, seen }
    }

    fn seen(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

pub(super) async fn faults_of_an_upstream(backend: Backend) {
    let s = Server::start_with(backend, &["--upstream-timeout", "1s"]).await;
    let good = b"the layer as its digest says".to_vec();
    let (cut, silent) = (b"cut short".to_vec(), b"never sent".to_vec());
    let config = b"{}".to_vec();
    let layers: Vec<Value> = [&good, &cut, &silent]
        .iter()
        .map(|l| json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(l), "size": l.len() }))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": 2 },
        "layers": layers,
    }))
    .expect("manifest");
    let blob = |d: &[u8]| format!("/v2/app/blobs/{}", sha256(d));
    let answers = HashMap::from([
        (
            "/v2/web/manifests/v1".to_string(),
            Answer::Body("text/html", b"<html><body>Sign in</body></html>".to_vec()),
        ),
        (
            "/v2/app/manifests/v1".to_string(),
            Answer::Body(
                "application/vnd.oci.image.manifest.v1+json",
                manifest.clone(),
            ),
        ),
        (
            blob(&config),
            Answer::Body("application/octet-stream", config.clone()),
        ),
        // Another blob's bytes under this digest.
        (
            blob(&good),
            Answer::Body(
                "application/octet-stream",
                b"not the layer its digest names".to_vec(),
            ),
        ),
        (
            blob(&cut),
            Answer::CutShort {
                len: cut.len(),
                sent: cut[..4].to_vec(),
            },
        ),
        (blob(&silent), Answer::Silent { len: silent.len() }),
    ]);
    let up = Faulty::start(answers).await;
    let secret = "faulty-upstream-secret-MARK";
    cache_of(
        &s,
        &format!("http://127.0.0.1:{}", up.port),
        "robot",
        secret,
        "f",
        &[],
    );

    // HTML where a manifest belongs: a clear error, nothing stored.
    let r = s.send(reqwest::Method::GET, "/v2/f/web/manifests/v1").await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.expect("OCI error JSON");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no valid manifest"), "{message}");
    assert!(!message.contains(secret));
    let r = s.send(reqwest::Method::GET, "/v2/f/web/manifests/v1").await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        up.seen("/v2/web/manifests/v1"),
        2,
        "the next pull tries again"
    );

    // The manifest is fine and cached; each bad blob fails its client and is not kept.
    let r = s.send(reqwest::Method::GET, "/v2/f/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    let r = s
        .send(
            reqwest::Method::GET,
            &format!("/v2/f/app/blobs/{}", sha256(&config)),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("config").to_vec(), config);
    for layer in [&good, &cut, &silent] {
        let path = format!("/v2/f/app/blobs/{}", sha256(layer));
        for attempt in 1..=2 {
            let r = s.send(reqwest::Method::GET, &path).await;
            let got = match r.status().as_u16() {
                200 => r
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| e.to_string()),
                status => Err(format!(
                    "HTTP {status}: {}",
                    r.text().await.unwrap_or_default()
                )),
            };
            assert!(
                got.is_err(),
                "{path}: a client never gets a blob that failed: {got:?}"
            );
            assert_eq!(
                up.seen(&blob(layer)),
                attempt,
                "{path}: nothing was kept, so fetched again"
            );
        }
    }
    // The config was stored once and is served without the upstream.
    let r = s
        .send(
            reqwest::Method::GET,
            &format!("/v2/f/app/blobs/{}", sha256(&config)),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen(&blob(&config)), 1);
    assert!(
        !s.log().contains(secret),
        "the upstream's secret is never logged"
    );
}

/// A pull through the cache from distribution's registry: TLS with the upstream's own CA, and
/// Basic auth. `host` is its `host:port`, whose credentials the default registry holds.
pub(super) async fn through_distribution(s: &Server, host: &str, work: &std::path::Path) {
    let skopeo = Skopeo::new(work);
    let src = work.join("src");
    let index = oci_layout(&src);
    skopeo.run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "robot:robot-secret",
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{host}/team/img:v1"),
    ]);
    cli_ok(s, &["cache", "create", "default", "dr", "--upstream", host]);
    let (name, secret) = s.tester.clone().expect("tester");
    let wharf = format!("127.0.0.1:{}", s.port);
    skopeo.login(&wharf, &name, &secret);
    let out = work.join("out");
    copy(&skopeo, &format!("docker://{wharf}/dr/team/img:v1"), &out).expect("pull through");
    assert_eq!(pulled_digest(&out), sha256(&index));
    cli_ok(s, &["cache", "delete", "default", "dr", "--yes"]);
}
