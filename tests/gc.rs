//! Garbage collection end to end: what a run frees and keeps, dry runs and history, a push
//! racing a run, and the content of deleted repositories.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cli_ok, sha256, Backend, Server, OWNER_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const GRACE: &[&str] = &["--gc-grace", "1s"];
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The digests (hex) of every blob object in the content store, on disk or in S3.
async fn stored(s: &Server) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![s.data_dir()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().contains("/blobs/") {
                out.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    for (key, _) in s.s3_objects().await {
        if key.contains("blobs/") {
            out.insert(key.rsplit('/').next().unwrap_or_default().to_string());
        }
    }
    out
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

/// An image manifest over `config` and `layers` (digest, size), optionally a referrer of
/// `subject`.
fn image(
    config: &(String, usize),
    layers: &[&(String, usize)],
    subject: Option<&(String, usize)>,
) -> Vec<u8> {
    let d = |(digest, size): &(String, usize)| json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size });
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1 },
        "layers": layers.iter().map(|l| d(l)).collect::<Vec<_>>(),
    });
    if let Some((digest, size)) = subject {
        m["subject"] = json!({ "mediaType": MANIFEST, "digest": digest, "size": size });
        m["artifactType"] = json!("application/vnd.example.signature");
    }
    serde_json::to_vec(&m).unwrap()
}

async fn blob(s: &Server, repo: &str, data: &[u8]) -> (String, usize) {
    (s.push_blob(repo, data).await, data.len())
}

async fn manifest(s: &Server, repo: &str, reference: &str, body: &[u8]) -> (String, usize) {
    let r = s.push_manifest(repo, reference, MANIFEST, body).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    (sha256(body), body.len())
}

/// Pulls a manifest and every blob it names, checking each digest; the status of the first
/// request that fails, if any.
async fn pull(s: &Server, repo: &str, reference: &str) -> Result<(), StatusCode> {
    let r = s
        .client
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", MANIFEST)
        .send()
        .await
        .unwrap();
    if r.status() != StatusCode::OK {
        return Err(r.status());
    }
    let m: Value = r.json().await.unwrap();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in digests {
        let r = s
            .client
            .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            return Err(r.status());
        }
        assert_eq!(
            sha256(&r.bytes().await.unwrap()),
            d,
            "blob {d} pulls intact"
        );
    }
    Ok(())
}

async fn blob_status(s: &Server, repo: &str, digest: &str) -> StatusCode {
    s.client
        .head(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .status()
}

/// What the admin API answers at `path`, asked with the owner key.
async fn owner_get(s: &Server, path: &str) -> Value {
    s.anon
        .get(s.url(path))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// How many data keys encryption at rest holds, under every master key.
async fn data_keys(s: &Server) -> i64 {
    let status = owner_get(s, "/api/v1/system/keys").await;
    let counts = status["data_keys"].as_array().cloned().unwrap_or_default();
    counts.iter().filter_map(|c| c["data_keys"].as_i64()).sum()
}

/// Runs a collection through the CLI to its end and returns its report.
fn gc(s: &Server, target: &[&str]) -> Value {
    let args = [&["gc", "run"], target, &["--json"]].concat();
    serde_json::from_str(&cli_ok(s, &args)).unwrap()
}

async fn frees_what_nothing_references_and_keeps_the_rest(b: Backend) {
    let s = Server::start_with(b, GRACE).await;
    let before = stored(&s).await;
    let config = blob(&s, "app", b"{\"architecture\":\"amd64\"}").await;
    let shared = blob(&s, "app", b"layer shared by both images").await;
    let only_old = blob(&s, "app", b"layer only the old image has").await;
    let only_new = blob(&s, "app", b"layer only the new image has").await;
    let sig_layer = blob(&s, "app", b"a signature").await;
    let stray = blob(&s, "app", b"uploaded, never referenced").await;
    let old = manifest(
        &s,
        "app",
        "v1",
        &image(&config, &[&shared, &only_old], None),
    )
    .await;
    let new = manifest(
        &s,
        "app",
        "v1",
        &image(&config, &[&shared, &only_new], None),
    )
    .await;
    let sig = manifest(
        &s,
        "app",
        &sha256(&image(&config, &[&sig_layer], Some(&new))),
        &image(&config, &[&sig_layer], Some(&new)),
    )
    .await;
    // Another repository uses the old image's own layer: its object stays.
    let config2 = blob(&s, "other", b"{\"os\":\"linux\"}").await;
    let in_other = blob(&s, "other", b"layer only the old image has").await;
    assert_eq!(in_other, only_old);
    manifest(&s, "other", "latest", &image(&config2, &[&in_other], None)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A dry run lists exactly what the run frees, and frees nothing.
    let dry = gc(&s, &["default", "--dry-run"]);
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(
        (dry["manifests_freed"].as_i64(), dry["blobs_freed"].as_i64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(dry["findings"]["manifests"][0]["digest"], old.0.as_str());
    assert_eq!(dry["findings"]["blobs"][0]["digest"], stray.0.as_str());
    assert!(stored(&s).await.contains(&hex(&stray.0)));
    assert_eq!(blob_status(&s, "app", &stray.0).await, StatusCode::OK);

    let keys = data_keys(&s).await;
    let run = gc(&s, &["default"]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        (
            run["manifests_freed"].as_i64(),
            run["blobs_freed"].as_i64(),
            run["bytes_freed"].as_i64()
        ),
        (Some(1), Some(1), Some(stray.1 as i64)),
        "{run}"
    );
    // The freed blob's stored object and the freed manifest (no annotations) were each sealed
    // under a data key of its own: both went too.
    assert_eq!(data_keys(&s).await, keys - 2);
    assert_eq!(pull(&s, "app", &old.0).await, Err(StatusCode::NOT_FOUND));
    pull(&s, "app", "v1").await.expect("the tagged image pulls");
    pull(&s, "app", &sig.0)
        .await
        .expect("its signature is kept with it");
    pull(&s, "other", "latest")
        .await
        .expect("the other repository's image pulls");
    assert_eq!(
        blob_status(&s, "app", &stray.0).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        blob_status(&s, "app", &only_old.0).await,
        StatusCode::NOT_FOUND
    );
    let now = stored(&s).await;
    assert!(
        !now.contains(&hex(&stray.0)),
        "the stray blob's content is deleted"
    );
    assert!(
        now.contains(&hex(&only_old.0)),
        "a layer another repository uses stays"
    );

    // History: newest first, the dry run marked.
    let history: Value =
        serde_json::from_str(&cli_ok(&s, &["gc", "history", "default", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    assert_eq!(
        (
            history[0]["dry_run"].as_bool(),
            history[1]["dry_run"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let table = cli_ok(&s, &["gc", "history", "default"]);
    assert!(
        table.contains("manual (dry run)") && table.contains("succeeded"),
        "{table}"
    );

    // Deleting repositories only drops references; the instance's run frees the content, and
    // storage is back where it started.
    for repo in ["app", "other"] {
        let r = s
            .anon
            .delete(s.url(&format!("/api/v1/registries/default/repositories/{repo}")))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    assert!(stored(&s).await.contains(&hex(&shared.0)));
    let run = gc(&s, &["--instance"]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["blobs_freed"].as_i64(), Some(6), "{run}");
    assert_eq!(stored(&s).await, before, "no garbage left");
    let r = s
        .anon
        .get(s.url("/api/v1/system/gc/runs"))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .unwrap();
    let runs: Value = r.json().await.unwrap();
    assert_eq!(runs["items"].as_array().unwrap().len(), 1);
}

async fn a_push_during_a_run_keeps_its_blobs(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    let pause_arg = pause.to_string_lossy().into_owned();
    let s = Server::start_with(b, &["--gc-grace", "1s", "--gc-pause-file", &pause_arg]).await;
    let config = blob(&s, "app", b"{\"architecture\":\"arm64\"}").await;
    let layer = blob(&s, "app", b"a layer uploaded before the run").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The run marks both unreferenced blobs, then waits before sweeping them.
    std::fs::write(&pause, b"").unwrap();
    let start = |dry_run: bool| {
        s.anon
            .post(s.url("/api/v1/registries/default/gc"))
            .bearer_auth(OWNER_KEY)
            .json(&json!({ "dry_run": dry_run }))
            .send()
    };
    let r = start(false).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run: Value = r.json().await.unwrap();
    let reached = dir.path().join("pause.reached");
    for _ in 0..200 {
        if reached.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reached.exists(),
        "the run reached the point between marking and sweeping"
    );
    // One run per registry at a time.
    let r = start(true).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("still going"),
        "{problem}"
    );

    // A manifest referencing the marked blobs is pushed meanwhile.
    manifest(&s, "app", "v1", &image(&config, &[&layer], None)).await;
    std::fs::remove_file(&pause).unwrap();
    let path = format!("/api/v1/registries/default/gc/runs/{}", run["id"]);
    let mut done = Value::Null;
    for _ in 0..200 {
        let r = s
            .anon
            .get(s.url(&path))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .unwrap();
        done = r.json().await.unwrap();
        if done["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["blobs_freed"].as_i64(), Some(0), "{done}");
    pull(&s, "app", "v1")
        .await
        .expect("the image pushed during the run pulls whole");
    assert!(stored(&s).await.contains(&hex(&layer.0)));
}

async fn storage_is_counted_and_a_quota_refuses_pushes_beyond_it(b: Backend) {
    let s = Server::start_with(b, GRACE).await;
    let show = |s: &Server| -> Value {
        serde_json::from_str(&cli_ok(s, &["registry", "show", "default", "--json"])).unwrap()
    };
    let a = blob(&s, "app", &[7u8; 600]).await;
    let c = blob(&s, "app", b"{}").await;
    manifest(&s, "app", "v1", &image(&c, &[&a], None)).await;
    // The same layer in a second repository counts once for the registry.
    let a2 = blob(&s, "tools", &[7u8; 600]).await;
    let c2 = blob(&s, "tools", b"{}").await;
    manifest(&s, "tools", "v1", &image(&c2, &[&a2], None)).await;
    let used = show(&s)["storage_bytes"].as_i64().unwrap();
    let manifests = image(&c, &[&a], None).len() * 2;
    assert_eq!(used as usize, 600 + 2 + manifests);
    let repos: Value =
        serde_json::from_str(&cli_ok(&s, &["repo", "list", "default", "--json"])).unwrap();
    assert_eq!(
        repos[0]["storage_bytes"].as_i64().unwrap() as usize,
        602 + manifests / 2
    );
    let system: Value = serde_json::from_str(&cli_ok(&s, &["system", "--json"])).unwrap();
    assert_eq!(system["stored_bytes"].as_i64(), Some(602));

    // A quota just above what is used: a 600-byte push is refused before it is read.
    let quota = (used + 100).to_string();
    cli_ok(&s, &["registry", "update", "default", "--quota", &quota]);
    let table = cli_ok(&s, &["registry", "show", "default"]);
    assert!(table.contains(" of "), "{table}");
    let loc = s.start_upload("app").await;
    let big = vec![9u8; 600];
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={}", sha256(&big))))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("storage quota of"), "{message}");
    // A small one still fits.
    blob(&s, "app", b"small").await;
    // Bad input, in the CLI and the API.
    let err = common::cli_err(
        &s,
        Some(OWNER_KEY),
        &["registry", "update", "default", "--quota", "12XB"],
    );
    assert!(err.contains("unknown unit"), "{err}");
    let r = s
        .anon
        .patch(s.url("/api/v1/registries/default"))
        .bearer_auth(OWNER_KEY)
        .json(&json!({ "quota_bytes": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Freed storage makes room again: delete a repository, collect, push.
    let r = s
        .anon
        .delete(s.url("/api/v1/registries/default/repositories/tools"))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    cli_ok(&s, &["registry", "update", "default", "--quota", "none"]);
    assert_eq!(show(&s)["quota_bytes"], Value::Null);
    blob(&s, "app", &big).await;
}

/// Waits for a run to end; its final state.
async fn finished(s: &Server, path: &str) -> Value {
    let mut run = Value::Null;
    for _ in 0..400 {
        let r = s
            .anon
            .get(s.url(path))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .unwrap();
        run = r.json().await.unwrap();
        if run["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run
}

async fn a_run_killed_with_its_node_is_failed_and_the_next_completes_it(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    let pause_arg = pause.to_string_lossy().into_owned();
    let args = [
        "--gc-grace",
        "1s",
        "--gc-pause-file",
        &pause_arg,
        "--gc-heartbeat",
        "200ms",
    ];
    let mut s = Server::start_with(b, &args).await;
    let config = blob(&s, "app", b"{\"kept\":true}").await;
    let layer = blob(&s, "app", b"a layer an image uses").await;
    manifest(&s, "app", "v1", &image(&config, &[&layer], None)).await;
    let stray = blob(&s, "app", b"garbage the killed run marked").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    std::fs::write(&pause, b"").unwrap();
    let (client, url) = (s.anon.clone(), s.url("/api/v1/registries/default/gc"));
    let start = || {
        client
            .post(&url)
            .bearer_auth(OWNER_KEY)
            .json(&json!({}))
            .send()
    };
    let r = start().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let killed: Value = r.json().await.unwrap();
    let reached = dir.path().join("pause.reached");
    for _ in 0..200 {
        if reached.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reached.exists());
    s.kill();
    std::fs::remove_file(&pause).unwrap();
    s.start_again().await;
    // Until its heartbeat is stale (a dozen beats) the killed run still counts as going.
    let r = start().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let r = start().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let next: Value = r.json().await.unwrap();
    let next = finished(
        &s,
        &format!("/api/v1/registries/default/gc/runs/{}", next["id"]),
    )
    .await;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert_eq!(next["blobs_freed"].as_i64(), Some(1), "{next}");
    let killed = finished(
        &s,
        &format!("/api/v1/registries/default/gc/runs/{}", killed["id"]),
    )
    .await;
    assert_eq!(killed["status"], "failed", "{killed}");
    assert!(
        killed["error"].as_str().unwrap().contains("stopped"),
        "{killed}"
    );
    pull(&s, "app", "v1")
        .await
        .expect("nothing referenced is lost");
    assert_eq!(
        blob_status(&s, "app", &stray.0).await,
        StatusCode::NOT_FOUND
    );
    assert!(!stored(&s).await.contains(&hex(&stray.0)));
}

async fn a_store_error_fails_the_run_and_a_later_run_retries(b: Backend) {
    let args = ["--gc-grace", "1s", "--gc-heartbeat", "100ms"];
    let s = Server::start_with(b, &args).await;
    let stray = blob(&s, "app", b"garbage whose deletion fails once").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The store cannot delete it: a directory that is not empty stands where the file was.
    let h = hex(&stray.0);
    let path = s.data_dir().join("blobs/sha256").join(&h[..2]).join(&h);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir_all(path.join("in-the-way")).unwrap();
    let err = common::cli_err(&s, Some(OWNER_KEY), &["gc", "run", "default"]);
    assert!(
        err.contains("could not be deleted from storage") && err.contains(&h),
        "{err}"
    );
    let history: Value =
        serde_json::from_str(&cli_ok(&s, &["gc", "history", "default", "--json"])).unwrap();
    assert_eq!(history[0]["status"], "failed");
    // Its link is gone (it is garbage), the deletion is left claimed.
    assert_eq!(
        blob_status(&s, "app", &stray.0).await,
        StatusCode::NOT_FOUND
    );

    // The store recovers (the object is back where it belongs); once the claim is stale, the
    // next run completes the deletion.
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, b"stored content").unwrap();
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let run = gc(&s, &["default"]);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["blobs_freed"].as_i64(), Some(1), "{run}");
    assert!(!path.exists(), "the retried deletion removed it");
}

/// A node as the stress test's tasks reach it: an HTTP client with credentials, its address,
/// and the Host header naming the registry (`None`: the default registry).
#[derive(Clone)]
struct Node {
    client: reqwest::Client,
    base: String,
    host: Option<String>,
}

impl Node {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.host {
            Some(h) => r.header("host", h),
            None => r,
        }
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> Result<(String, usize), String> {
        let digest = sha256(data);
        let r = self
            .request(
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status() {
            StatusCode::CREATED => Ok((digest, data.len())),
            other => Err(format!(
                "blob push {other}: {}",
                r.text().await.unwrap_or_default()
            )),
        }
    }

    async fn manifest(&self, repo: &str, tag: &str, body: &[u8]) -> Result<(), String> {
        let r = self
            .request(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
            .header("content-type", MANIFEST)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status() {
            StatusCode::CREATED => Ok(()),
            other => Err(format!(
                "manifest push {other}: {}",
                r.text().await.unwrap_or_default()
            )),
        }
    }
}

/// A small deterministic generator (xorshift): the stress test needs variety, not secrecy.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts a collection through the API and waits for its end; its final state.
async fn collect_once(owner: &reqwest::Client, base: &str, path: &str) -> Value {
    loop {
        let r = owner
            .post(format!("{base}{path}"))
            .bearer_auth(OWNER_KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::CONFLICT {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let run: Value = r.json().await.unwrap();
        let runs = if path.starts_with("/api/v1/system") {
            "/api/v1/system/gc/runs".to_string()
        } else {
            format!("{path}/runs")
        };
        loop {
            let r = owner
                .get(format!("{base}{runs}/{}", run["id"]))
                .bearer_auth(OWNER_KEY)
                .send()
                .await
                .unwrap();
            let now: Value = r.json().await.unwrap();
            if now["status"] != "running" {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writers push images sharing layers through two nodes, into the default registry and one
/// that is deleted whole half-way, while tags and repositories are deleted and collections run
/// back to back on both nodes with a short grace period. Afterwards every tag pulls whole, and
/// once everything is deleted and collected, storage is back where it started. Several nodes
/// need PostgreSQL (an SQLite file is one process's database): on SQLite both "nodes" are one.
async fn collection_under_concurrent_pushes_and_deletes_loses_nothing(b: Backend) {
    let a = Server::start_with(b, &["--gc-grace", "2s"]).await;
    let second = match b {
        Backend::Sqlite => None,
        _ => Some(a.second_node().await),
    };
    let bn = second.as_ref().unwrap_or(&a);
    let before = stored(&a).await;
    let owner = reqwest::Client::new();
    let r = owner
        .post(a.url("/api/v1/registries"))
        .bearer_auth(OWNER_KEY)
        .json(&json!({ "name": "doomed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (name, secret) = a
        .create_token("doomed", "writer", common::ALL_SCOPES())
        .await
        .unwrap();
    let doomed_client = common::basic_client(&name, &secret);
    let nodes = [(a.base.clone(), a.port), (bn.base.clone(), bn.port)];
    let node = |i: usize, doomed: bool| Node {
        client: if doomed {
            doomed_client.clone()
        } else {
            a.client.clone()
        },
        base: nodes[i % 2].0.clone(),
        host: doomed.then(|| format!("doomed.localhost:{}", nodes[i % 2].1)),
    };
    let layers: Vec<Vec<u8>> = (0..6)
        .map(|i| format!("shared layer {i} ").repeat(200).into_bytes())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = Duration::from_secs(12);

    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (stop, layers) = (stop.clone(), layers.clone());
        let doomed = w == 3;
        let nodes: Vec<Node> = (0..2).map(|i| node(i + w, doomed)).collect();
        tasks.push(tokio::spawn(async move {
            let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let (mut pushed, mut refused) = (0u32, Vec::new());
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let n = &nodes[(k % 2) as usize];
                let repo = format!("r{}", dice.roll(3));
                let outcome = async {
                    let config = n
                        .blob(&repo, format!("{{\"w\":{w},\"k\":{k}}}").as_bytes())
                        .await?;
                    let mut used = Vec::new();
                    for _ in 0..2 {
                        used.push(n.blob(&repo, &layers[dice.roll(6) as usize]).await?);
                    }
                    used.push(
                        n.blob(&repo, format!("own layer {w} {k}").as_bytes())
                            .await?,
                    );
                    let refs: Vec<&(String, usize)> = used.iter().collect();
                    n.manifest(
                        &repo,
                        &format!("t{}", dice.roll(4)),
                        &image(&config, &refs, None),
                    )
                    .await
                }
                .await;
                match outcome {
                    Ok(()) => pushed += 1,
                    // The doomed registry's pushes fail once it is gone (the upload session
                    // or the token went with it), in whatever way the moment gives.
                    Err(e) if doomed => {
                        assert!(!e.contains(" 500 "), "{e}");
                        break;
                    }
                    Err(e) => refused.push(e),
                }
            }
            (pushed, refused)
        }));
    }
    // Deleters: tags through /v2/, repositories through the API, the doomed registry half-way.
    let deleter = {
        let (stop, owner, nodes) = (
            stop.clone(),
            owner.clone(),
            [node(0, false), node(1, false)],
        );
        let base = a.base.clone();
        tokio::spawn(async move {
            let mut dice = Dice(42);
            let started = std::time::Instant::now();
            let mut doomed_gone = false;
            let mut deleted = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let repo = format!("r{}", dice.roll(3));
                if dice.roll(8) == 0 {
                    let r = owner
                        .delete(format!(
                            "{base}/api/v1/registries/default/repositories/{repo}"
                        ))
                        .bearer_auth(OWNER_KEY)
                        .send()
                        .await
                        .unwrap();
                    deleted += u32::from(r.status() == StatusCode::NO_CONTENT);
                } else {
                    let n = &nodes[dice.roll(2) as usize];
                    let r = n
                        .request(
                            reqwest::Method::DELETE,
                            &format!("/v2/{repo}/manifests/t{}", dice.roll(4)),
                        )
                        .send()
                        .await
                        .unwrap();
                    deleted += u32::from(r.status() == StatusCode::ACCEPTED);
                }
                if !doomed_gone && started.elapsed() > Duration::from_secs(6) {
                    let r = owner
                        .delete(format!("{base}/api/v1/registries/doomed"))
                        .bearer_auth(OWNER_KEY)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    assert_eq!(
                        status,
                        StatusCode::NO_CONTENT,
                        "{}",
                        r.text().await.unwrap_or_default()
                    );
                    doomed_gone = true;
                }
            }
            deleted
        })
    };
    // Collections back to back, alternating nodes, the instance's every third time.
    let collector = {
        let (stop, owner) = (stop.clone(), owner.clone());
        let bases = [a.base.clone(), bn.base.clone()];
        tokio::spawn(async move {
            let mut runs = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let path = if i % 3 == 0 {
                    "/api/v1/system/gc"
                } else {
                    "/api/v1/registries/default/gc"
                };
                runs.push(collect_once(&owner, &bases[i % 2], path).await);
            }
            runs
        })
    };
    tokio::time::sleep(churn).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pushed = 0;
    for t in tasks {
        let (n, refused) = t.await.unwrap();
        pushed += n;
        for e in &refused {
            // A push may lose its own race (a layer linked more than the grace period ago,
            // collected before its manifest, or a repository deleted under it): the client
            // sees a clear error and pushes again. Anything else is a fault.
            assert!(
                e.contains("MANIFEST_BLOB_UNKNOWN")
                    || e.contains("NAME_UNKNOWN")
                    || e.contains("401")
                    || e.contains("collected"),
                "{e}\n{}",
                [a.log(), bn.log()]
                    .concat()
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let deleted = deleter.await.unwrap();
    let runs = collector.await.unwrap();
    assert!(
        pushed > 20 && deleted > 5 && runs.len() > 3,
        "pushed {pushed}, deleted {deleted}, runs {}",
        runs.len()
    );
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let freed: i64 = runs.iter().filter_map(|r| r["blobs_freed"].as_i64()).sum();
    eprintln!(
        "stress ({b:?}): {pushed} images pushed, {deleted} tags and repositories deleted, {} collections freed {freed} blobs",
        runs.len()
    );

    // Zero lost blobs: every tag left pulls whole, through either node.
    let mut tags_checked = 0;
    for repo in ["r0", "r1", "r2"] {
        let r = a
            .client
            .get(a.url(&format!("/v2/{repo}/tags/list")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let list: Value = r.json().await.unwrap();
        for tag in list["tags"].as_array().cloned().unwrap_or_default() {
            let tag = tag.as_str().unwrap();
            pull(&a, repo, tag)
                .await
                .unwrap_or_else(|e| panic!("{repo}:{tag} lost content: {e}"));
            pull(bn, repo, tag)
                .await
                .unwrap_or_else(|e| panic!("{repo}:{tag} lost content: {e}"));
            tags_checked += 1;
        }
    }
    assert!(tags_checked > 0);

    // No garbage left: delete everything, wait out the grace period, collect.
    for repo in ["r0", "r1", "r2"] {
        owner
            .delete(a.url(&format!("/api/v1/registries/default/repositories/{repo}")))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let run = collect_once(&owner, &a.base, "/api/v1/system/gc").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        stored(&a).await,
        before,
        "storage is back to where it started"
    );
    let system = owner_get(&a, "/api/v1/system").await;
    assert_eq!(system["stored_bytes"], 0);
}

mod stress {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_disk() {
        collection_under_concurrent_pushes_and_deletes_loses_nothing(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        collection_under_concurrent_pushes_and_deletes_loses_nothing(Backend::PostgresS3).await
    }
}

mod collection {
    use super::*;
    on_every_configuration!(frees_what_nothing_references_and_keeps_the_rest);
}

mod store_error {
    use super::*;
    // The fault is made on disk; the database side runs on both.
    on_both_backends!(a_store_error_fails_the_run_and_a_later_run_retries);
}

mod quota {
    use super::*;
    on_both_backends!(storage_is_counted_and_a_quota_refuses_pushes_beyond_it);
}

mod race {
    use super::*;
    on_both_backends!(
        a_push_during_a_run_keeps_its_blobs,
        a_run_killed_with_its_node_is_failed_and_the_next_completes_it
    );
}
