//! Encryption at rest: content (blobs, manifests and their annotations) and stored secrets (the
//! JWT signing key) are sealed under data keys wrapped by a master key that wharf creates on an
//! embedded first start; a missing or wrong key stops the start with a line that names it;
//! stored ciphertext that was tampered with is refused, never served.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Backend, Server};
use reqwest::{Method, StatusCode};

/// Written into every layer, config and manifest of the tests: it must appear nowhere in
/// storage.
const MARKER: &[u8] = b"WHARF-MARKER-7f3a9c";
/// Plaintext bytes per sealed segment.
const SEGMENT: usize = 64 * 1024;

fn marked(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + MARKER.len());
    let mut n = 0u64;
    while out.len() < len {
        out.extend_from_slice(MARKER);
        out.extend_from_slice(format!("{n:08}").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails if the marker is in any stored file, object or database row (in the clear, or as the
/// hex a database dump writes binary columns in).
async fn assert_marker_nowhere(s: &Server) {
    let hex = hex::encode(MARKER);
    for (path, bytes) in common::files_under(&s.data_dir()) {
        if let Some(at) = bytes.windows(MARKER.len()).position(|w| w == MARKER) {
            let around = &bytes[at.saturating_sub(200)..(at + 100).min(bytes.len())];
            panic!(
                "{} holds the marker: {}",
                path.display(),
                String::from_utf8_lossy(around)
            );
        }
    }
    for (key, bytes) in s.s3_objects().await {
        assert!(!bytes.is_empty(), "object {key} was read");
        assert!(!contains(&bytes, MARKER), "object {key} holds the marker");
    }
    let dump = s.pg_dump();
    assert!(
        !dump.contains(std::str::from_utf8(MARKER).unwrap_or_default()) && !dump.contains(&hex),
        "the database holds the marker"
    );
}

/// Sends `piece` as the upload's bytes from offset `at` (a PATCH).
async fn patch_at(s: &Server, loc: &str, at: usize, piece: &[u8]) -> reqwest::Response {
    s.client
        .patch(s.url(loc))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{at}-{}", at + piece.len() - 1))
        .body(piece.to_vec())
        .send()
        .await
        .expect("patch")
}

/// Finishes the upload at `loc` as `digest` (a PUT with no body).
async fn put_digest(s: &Server, loc: &str, digest: &str) -> reqwest::Response {
    let sep = if loc.contains('?') { '&' } else { '?' };
    s.client
        .put(s.url(&format!("{loc}{sep}digest={digest}")))
        .send()
        .await
        .expect("put")
}

/// Pushes `data` in chunks of `chunk` bytes (PATCH, then PUT): several stored parts.
async fn push_chunked(s: &Server, repo: &str, data: &[u8], chunk: usize) -> String {
    let digest = common::sha256(data);
    let mut loc = s.start_upload(repo).await;
    let mut at = 0;
    for piece in data.chunks(chunk) {
        let r = patch_at(s, &loc, at, piece).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        loc = common::header(&r, "location");
        at += piece.len();
    }
    assert_eq!(
        put_digest(s, &loc, &digest).await.status(),
        StatusCode::CREATED
    );
    digest
}

async fn get_bytes(s: &Server, path: &str, range: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut req = s.client.get(s.url(path));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    // A response cut short (the server found damage after it started) fails here or in the
    // body.
    let Ok(r) = req.send().await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Vec::new());
    };
    let status = r.status();
    match r.bytes().await {
        Ok(b) => (status, b.to_vec()),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Vec::new()),
    }
}

/// An image whose layer, config and manifest (annotations too) carry the marker; the layer is
/// pushed in chunks and the config whole. Returns the digests of layer and config, and the
/// manifest's bytes.
async fn push_marked_image(s: &Server, repo: &str) -> (Vec<u8>, String, Vec<u8>, String, Vec<u8>) {
    let layer = marked(3 * SEGMENT + 777);
    let layer_digest = push_chunked(s, repo, &layer, 100_000).await;
    let config = marked(500);
    let config_digest = s.push_blob(repo, &config).await;
    let marker = std::str::from_utf8(MARKER).unwrap_or_default();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len(), "annotations": { "note": marker } }],
        "annotations": { "org.example.note": marker },
    }))
    .expect("json");
    let r = s
        .push_manifest(
            repo,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    (layer, layer_digest, config, config_digest, manifest)
}

async fn content_is_sealed_at_rest_and_pulls_unchanged(b: Backend) {
    let s = Server::start(b).await;
    let (layer, layer_digest, config, config_digest, manifest) =
        push_marked_image(&s, "sealed/app").await;
    // A referrer whose annotations carry the marker: the referrers API shows them opened.
    let marker = std::str::from_utf8(MARKER).unwrap_or_default();
    let manifest_digest = common::sha256(&manifest);
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sig",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [],
        "subject": { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len() },
        "annotations": { "signed-by": marker },
    }))
    .expect("json");
    let referrer_digest = common::sha256(&referrer);
    let r = s
        .push_manifest(
            "sealed/app",
            &referrer_digest,
            "application/vnd.oci.image.manifest.v1+json",
            &referrer,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    assert_marker_nowhere(&s).await;

    // Pulls return the bytes pushed, under their digests.
    let r = s.send(Method::GET, "/v2/sealed/app/manifests/v1").await;
    assert_eq!(common::header(&r, "docker-content-digest"), manifest_digest);
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    for (digest, data) in [(&layer_digest, &layer), (&config_digest, &config)] {
        let (status, got) = get_bytes(&s, &format!("/v2/sealed/app/blobs/{digest}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(got == *data, "blob {digest} differs");
    }
    let (_, index) = get_bytes(
        &s,
        &format!("/v2/sealed/app/referrers/{manifest_digest}"),
        None,
    )
    .await;
    let index: serde_json::Value = serde_json::from_slice(&index).expect("referrers");
    assert_eq!(index["manifests"][0]["annotations"]["signed-by"], marker);
    assert_eq!(index["manifests"][0]["size"], referrer.len());

    // Ranges at and across segment boundaries, the first and the last byte.
    let last = layer.len() - 1;
    for (start, end) in [
        (0, 0),
        (SEGMENT - 1, SEGMENT - 1),
        (SEGMENT, SEGMENT),
        (SEGMENT - 3, SEGMENT + 3),
        (SEGMENT + 1, 3 * SEGMENT + 1),
        (last, last),
        (2 * SEGMENT, last),
    ] {
        let (status, got) = get_bytes(
            &s,
            &format!("/v2/sealed/app/blobs/{layer_digest}"),
            Some(&format!("bytes={start}-{end}")),
        )
        .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{start}-{end}");
        assert!(got == layer[start..=end], "bytes {start}-{end} differ");
    }
}

/// Flips a byte of every stored copy of a blob (a file or an S3 object).
async fn tamper(s: &Server, digest: &str, at: usize) {
    let hex = digest.trim_start_matches("sha256:");
    let path = s.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex);
    if let Ok(mut bytes) = std::fs::read(&path) {
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
        return;
    }
    let objects = s.s3_objects().await;
    let (key, mut bytes) = objects
        .into_iter()
        .find(|(k, _)| k.ends_with(hex))
        .expect("the blob is stored");
    bytes[at] ^= 0x01;
    s.put_s3_object(&key, bytes).await;
}

async fn integrity_failures(s: &Server) -> u64 {
    let text = s
        .anon
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|l| l.starts_with("wharf_integrity_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn tampered_content_is_refused_logged_and_counted(b: Backend) {
    let s = Server::start(b).await;
    let (layer, layer_digest, _, config_digest, _) = push_marked_image(&s, "tamper/app").await;
    assert_eq!(integrity_failures(&s).await, 0);
    // A flipped byte in the first segment: refused before the response starts.
    tamper(&s, &config_digest, 40).await;
    let r = s
        .send(
            Method::GET,
            &format!("/v2/tamper/app/blobs/{config_digest}"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.text().await.unwrap_or_default().contains("integrity"));
    // In the third segment: the first two arrive, then the body breaks off; never wrong bytes.
    tamper(&s, &layer_digest, 24 + 2 * (SEGMENT + 16) + 5).await;
    let (status, got) = get_bytes(&s, &format!("/v2/tamper/app/blobs/{layer_digest}"), None).await;
    assert!(status != StatusCode::OK || got.is_empty(), "{status}");
    let (status, got) = get_bytes(
        &s,
        &format!("/v2/tamper/app/blobs/{layer_digest}"),
        Some(&format!("bytes=0-{}", 2 * SEGMENT - 1)),
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(got == layer[..2 * SEGMENT], "untouched segments still read");
    let log = s.log();
    assert!(
        log.contains(&format!("blob {config_digest}")),
        "the log names the object"
    );
    assert!(
        log.contains(&format!("blob {layer_digest}")),
        "the log names the object"
    );
    assert!(integrity_failures(&s).await >= 2);
}

/// The stored signing key: its length and the key id it names (its first byte is the id's
/// length), read straight from the database.
fn stored_signing_key(s: &Server) -> (usize, String) {
    stored_signing_keys(s)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Every stored signing key, oldest first, as [`stored_signing_key`] reads one.
fn stored_signing_keys(s: &Server) -> Vec<(usize, String)> {
    let out = match s.database_url() {
        Some(url) => Command::new("psql")
            .arg(url)
            .args([
                "-Atc",
                "select octet_length(secret), encode(substring(secret from 2 for get_byte(secret, 0)), 'escape') from signing_keys order by id",
            ])
            .output()
            .expect("psql"),
        None => Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3,sys\nfor (s,) in sqlite3.connect(sys.argv[1]).execute('select secret from signing_keys order by id'): \
                 print(f'{len(s)}|{s[1:1+s[0]].decode(\"latin-1\")}')",
            )
            .arg(s.data_dir().join("wharf.db"))
            .output()
            .expect("python3"),
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (len, id) = line.trim().split_once('|').unwrap_or((line, ""));
            (len.parse().unwrap_or(0), id.to_string())
        })
        .collect()
}

/// The key id in a JWT's header.
fn jwt_kid(jwt: &str) -> String {
    use base64::Engine;
    let header = jwt.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64 header");
    let header: serde_json::Value = serde_json::from_slice(&bytes).expect("json header");
    header["kid"].as_str().unwrap_or_default().to_string()
}

/// A JWT for the tester token, and whether it opens `/v2/`.
async fn jwt(s: &Server) -> String {
    let (name, secret) = s.tester.clone().expect("tester");
    let r = s
        .anon
        .get(s.url("/auth/token?scope=repository:app:pull"))
        .basic_auth(name, Some(secret))
        .send()
        .await
        .expect("token");
    let body: serde_json::Value = r.json().await.expect("json");
    body["token"].as_str().expect("token").to_string()
}

async fn accepted(s: &Server, jwt: &str) -> bool {
    let r = s
        .anon
        .get(s.url("/v2/"))
        .bearer_auth(jwt)
        .send()
        .await
        .expect("get");
    r.status() == StatusCode::OK
}

/// Encryption as `/readyz` and the admin API show it: the key id, or `None` when it is off.
async fn shown_key(s: &Server) -> Option<String> {
    let ready: serde_json::Value = s
        .anon
        .get(s.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    let system: serde_json::Value = s
        .anon
        .get(s.url("/api/v1/system"))
        .bearer_auth(common::OWNER_KEY)
        .send()
        .await
        .expect("system")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["encryption"], system["encryption"]);
    assert_eq!(system["storage"], "file");
    assert_eq!(
        system["encryption"]["enabled"],
        system["encryption"]["key_id"].is_string()
    );
    system["encryption"]["key_id"].as_str().map(String::from)
}

/// `wharf serve` on the server's data and database, expected to fail; its last line.
fn start_fails(s: &Server, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(s.data_dir())
        .envs(env.iter().copied());
    if let Some(url) = s.database_url() {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.output().expect("run wharf");
    assert!(!out.status.success(), "wharf started");
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last().unwrap_or_default().to_string()
}

async fn secrets_are_sealed_under_a_master_key_made_on_first_start(b: Backend) {
    let mut s = Server::start(b).await;
    let key_file = s.data_dir().join("master.key");
    let text = std::fs::read_to_string(&key_file).expect("master.key was created");
    let id = text.split(':').next().unwrap_or_default().to_string();
    assert!(id.starts_with('k'), "{text}");
    let mode = std::fs::metadata(&key_file)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(s.log().contains("created the master key file"));
    let (len, sealed_with) = stored_signing_key(&s);
    assert!(
        len > 32,
        "the signing key is stored sealed, not as its 32 bytes"
    );
    assert_eq!(sealed_with, id);
    let token = jwt(&s).await;
    assert!(accepted(&s, &token).await);
    assert_eq!(shown_key(&s).await, Some(id.clone()));
    let shown = common::cli_ok(&s, &["system"]);
    assert!(shown.contains(&format!("on (master key {id}")), "{shown}");

    // Without its key the server does not start, and says which key it needs.
    s.stop();
    let aside = s.dir.path().join("master.key.aside");
    std::fs::rename(&key_file, &aside).expect("move key");
    let line = start_fails(&s, &[]);
    assert!(
        line.contains(&format!("master key \"{id}\" is needed")),
        "{line}"
    );
    assert!(!key_file.exists(), "no new key was made in its place");
    // Nor with another key.
    let other = format!("other:{}", "ab".repeat(32));
    let line = start_fails(&s, &[("WHARF_MASTER_KEY", &other)]);
    assert!(line.contains(&id) && line.contains("\"other\""), "{line}");
    // With it back, the signing key opens: JWTs issued before still verify.
    std::fs::rename(&aside, &key_file).expect("restore key");
    s.start_again().await;
    assert!(accepted(&s, &token).await);
}

async fn secrets_in_the_clear_are_sealed_when_encryption_is_switched_on(b: Backend) {
    let mut s = Server::start_with(b, &["--encryption", "false"]).await;
    assert!(!s.data_dir().join("master.key").exists());
    assert_eq!(stored_signing_key(&s).0, 32);
    assert_eq!(shown_key(&s).await, None);
    assert!(common::cli_ok(&s, &["system"]).contains("encryption:  off"));
    let token = jwt(&s).await;
    let (layer, layer_digest, _, _, manifest) = push_marked_image(&s, "before/app").await;
    s.set_extra_args(&[]);
    s.restart().await;
    // Content stored in the clear still pulls, whole and by range.
    let r = s.send(Method::GET, "/v2/before/app/manifests/v1").await;
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    let path = format!("/v2/before/app/blobs/{layer_digest}");
    assert!(get_bytes(&s, &path, None).await.1 == layer);
    let (status, got) = get_bytes(&s, &path, Some("bytes=70000-70009")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(got == layer[70000..70010]);
    // Encrypted in place: afterwards no stored byte is in the clear, and it pulls the same.
    let out = common::cli_ok(&s, &["keys", "encrypt-existing"]);
    assert!(
        out.contains("done: 2 blobs and 1 manifests sealed"),
        "{out}"
    );
    assert_marker_nowhere(&s).await;
    let out = common::cli_ok(&s, &["keys", "encrypt-existing"]);
    assert!(
        out.contains("done: 0 blobs and 0 manifests sealed (2 blobs checked"),
        "{out}"
    );
    let r = s.send(Method::GET, "/v2/before/app/manifests/v1").await;
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    assert!(get_bytes(&s, &path, None).await.1 == layer);
    let (_, got) = get_bytes(&s, &path, Some("bytes=70000-70009")).await;
    assert!(got == layer[70000..70010]);
    let (len, sealed_with) = stored_signing_key(&s);
    assert!(
        len > 32 && sealed_with.starts_with('k'),
        "{len} {sealed_with}"
    );
    assert!(accepted(&s, &token).await, "the same key, sealed");
    assert_eq!(shown_key(&s).await, Some(sealed_with));
    // Switching encryption off again needs the key: the secret stays sealed.
    s.stop();
    let line = start_fails(&s, &[("WHARF_ENCRYPTION", "false")]);
    assert!(line.contains("encryption is off"), "{line}");
}

/// The ids of the master keys in the server's key file, in order.
fn key_file_ids(s: &Server) -> Vec<String> {
    let text = std::fs::read_to_string(s.data_dir().join("master.key")).expect("key file");
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter(|id| !id.trim().is_empty())
        .map(String::from)
        .collect()
}

async fn keys_status(s: &Server) -> serde_json::Value {
    s.anon
        .get(s.url("/api/v1/system/keys"))
        .bearer_auth(common::OWNER_KEY)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json")
}

/// Pulls every image in a loop, checking bytes, until told to stop; returns how many pulls
/// it made.
fn pull_loop(
    s: &Server,
    images: Vec<(String, Vec<u8>, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let (client, base) = (s.client.clone(), s.base.clone());
    tokio::spawn(async move {
        let mut pulls = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (repo, layer, digest) in &images {
                let url = format!("{base}/v2/{repo}/blobs/{digest}");
                let got = client.get(url).send().await.expect("pull");
                assert_eq!(got.status(), StatusCode::OK, "pull during rotation");
                assert!(got.bytes().await.expect("bytes") == *layer, "bytes differ");
                pulls += 1;
            }
        }
        pulls
    })
}

async fn master_key_rotates_under_pulls_and_a_restart(b: Backend) {
    let mut s = Server::start_with(b, &["--rewrap-rate", "40"]).await;
    let old = key_file_ids(&s);
    assert_eq!(old.len(), 1);
    let mut images = Vec::new();
    for i in 0..8 {
        let repo = format!("rotate/app{i}");
        let (layer, digest, _, _, _) = push_marked_image(&s, &repo).await;
        images.push((repo, layer, digest));
    }
    let before = keys_status(&s).await;
    let total = before["data_keys"][0]["data_keys"].as_i64().unwrap_or(0);
    assert!(total >= 40, "{before}");

    let old_jwt = jwt(&s).await;
    assert_eq!(jwt_kid(&old_jwt), "k1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pulls = pull_loop(&s, images.clone(), stop.clone());
    let out = common::cli_ok(&s, &["keys", "rotate", "--no-wait"]);
    // JWTs are signed by a new key from now on; those signed before still verify.
    let new_jwt = jwt(&s).await;
    assert_eq!(jwt_kid(&new_jwt), "k2");
    assert!(accepted(&s, &old_jwt).await && accepted(&s, &new_jwt).await);
    let ids = key_file_ids(&s);
    assert_eq!(
        ids.len(),
        2,
        "the new key goes first, the old one stays: {ids:?}"
    );
    assert_eq!(ids[1], old[0]);
    let new = ids[0].clone();
    assert!(out.contains(&new), "{out}");
    // Pushes go on under the new key while the old one is being replaced.
    let (pushed, pushed_digest, _, _, _) = push_marked_image(&s, "rotate/during").await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(pulls.await.expect("pull loop") > 0);
    let midway = keys_status(&s).await;
    let pending = midway["pending"].as_i64().unwrap_or(0);
    assert!(
        pending > 0 && pending < total,
        "killed mid-rotation: {midway}"
    );

    // Killed mid-rotation: on restart the rewrap goes on from where it was.
    s.kill();
    s.start_again().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pulls = pull_loop(&s, images.clone(), stop.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = keys_status(&s).await;
        if status["pending"] == 0 && status["loaded"].as_array().map_or(0, Vec::len) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation did not finish: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(pulls.await.expect("pull loop") > 0);
    assert_eq!(
        key_file_ids(&s),
        vec![new.clone()],
        "the old key is retired"
    );
    let signing = stored_signing_keys(&s);
    assert_eq!(
        signing.len(),
        2,
        "the previous JWT key stays until its JWTs expire"
    );
    assert!(
        signing.iter().all(|(_, by)| *by == new),
        "JWT keys resealed: {signing:?}"
    );
    assert!(accepted(&s, &old_jwt).await && accepted(&s, &new_jwt).await);
    assert!(s.log().contains("rotation done"));

    // With only the new key, everything still pulls, the image pushed midway too.
    s.restart().await;
    images.push(("rotate/during".to_string(), pushed, pushed_digest));
    for (repo, layer, digest) in &images {
        let path = format!("/v2/{repo}/blobs/{digest}");
        assert!(get_bytes(&s, &path, None).await.1 == *layer, "{path}");
        let r = s
            .send(Method::GET, &format!("/v2/{repo}/manifests/v1"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The CLI follows a rotation to its end.
    let out = common::cli_ok(&s, &["keys", "status", "--json"]);
    assert!(out.contains(&new), "{out}");
    let out = common::cli_ok(&s, &["keys", "rotate"]);
    assert!(out.contains("the old key is retired"), "{out}");
    let ids = key_file_ids(&s);
    assert!(ids.len() == 1 && ids[0] != new, "{ids:?}");
}

async fn rotation_is_refused_without_encryption_or_a_key_file(b: Backend) {
    let s = Server::start_with(b, &["--encryption", "false"]).await;
    let err = common::cli_err(&s, Some(common::OWNER_KEY), &["keys", "rotate"]);
    assert!(err.contains("encryption at rest is off"), "{err}");
}

/// One value from the server's database, as text.
fn db_value(s: &Server, sql: &str) -> String {
    let out = match s.database_url() {
        Some(url) => Command::new("psql").arg(url).args(["-Atc", sql]).output().expect("psql"),
        None => Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute(sys.argv[2]).fetchone(); c.commit(); print('' if r is None else r[0])")
            .arg(s.data_dir().join("wharf.db"))
            .arg(sql)
            .output()
            .expect("python3"),
    };
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The data key id a sealed object's header names (sealed whole, or an upload's part
/// closed at commit).
fn header_key(bytes: &[u8]) -> Option<String> {
    [b"WHARFSE1", b"WHARFSE2"]
        .iter()
        .find_map(|magic| bytes.strip_prefix(magic.as_slice()))
        .and_then(|rest| rest.get(..16))
        .map(hex::encode)
}

/// Every stored object of a registry with its own key: files or S3 objects under `scopes/`.
async fn scoped_objects(s: &Server) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = match std::fs::metadata(s.data_dir().join("scopes")) {
        Ok(_) => common::files_under(&s.data_dir().join("scopes"))
            .into_iter()
            .map(|(_, b)| b)
            .collect(),
        Err(_) => Vec::new(),
    };
    out.extend(
        s.s3_objects()
            .await
            .into_iter()
            .filter(|(k, _)| k.contains("/scopes/"))
            .map(|(_, b)| b),
    );
    out
}

async fn a_registry_with_its_own_key_keeps_its_content_apart(b: Backend) {
    let mut s = Server::start_with(b, &["--base-domain", "wharf.test", "--gc-grace", "1s"]).await;
    let instance = key_file_ids(&s)[0].clone();
    // A bad key creates nothing.
    let err = common::cli_err(
        &s,
        Some(common::OWNER_KEY),
        &["registry", "create", "beta", "--own-key", "zz"],
    );
    assert!(err.contains("64 hex digits"), "{err}");
    let r = s
        .anon
        .get(s.url("/api/v1/registries/beta"))
        .bearer_auth(common::OWNER_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let out = common::cli_ok(&s, &["registry", "create", "alpha", "--own-key"]);
    let own = out
        .split("its own master key ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_string();
    assert!(own.starts_with("r-"), "{out}");

    // The same image in the default registry (instance key) and in alpha (its own key).
    let (layer, layer_digest, _, _, _) = push_marked_image(&s, "shared/app").await;
    let (name, secret) = s
        .create_token("alpha", "pusher", common::ALL_SCOPES())
        .await
        .expect("alpha exists");
    let (base, client) = (s.base.clone(), s.client.clone());
    s.base = format!("http://alpha.wharf.test:{}", s.port);
    s.client = common::basic_client(&name, &secret);
    let (_, alpha_digest, _, _, manifest) = push_marked_image(&s, "shared/app").await;
    assert_eq!(alpha_digest, layer_digest);
    let r = s.send(Method::GET, "/v2/shared/app/manifests/v1").await;
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    let path = format!("/v2/shared/app/blobs/{layer_digest}");
    assert!(get_bytes(&s, &path, None).await.1 == layer);
    assert_marker_nowhere(&s).await;

    // Stored once per key: alpha's objects are its own, and their data keys are wrapped by
    // its key, not the instance's.
    let copies = scoped_objects(&s).await;
    assert!(copies.len() >= 2, "alpha's blobs are stored apart");
    for object in &copies {
        let id = header_key(object).expect("sealed");
        let by = db_value(
            &s,
            &format!("select master_key from data_keys where id = '{id}'"),
        );
        assert_eq!(by, own, "data key {id}");
        assert_ne!(by, instance);
    }

    // A rotation of the instance key rewraps alpha's key: after the old key is retired (and
    // a restart, so that nothing is cached), alpha's content still opens. So does the first
    // chunk of an upload begun before: its hash was saved as it began (a long chunk is hashed
    // on after its answer), so the restarted node reads it back under alpha's key.
    let big = common::pseudo_random(3 << 20, 41);
    let half = big.len() / 2;
    let upload = s.start_upload("shared/big").await;
    let patch = |s: &Server, loc: &str, from: usize, to: usize| {
        s.client
            .patch(s.url(loc))
            .header("content-range", format!("{from}-{}", to - 1))
            .body(big[from..to].to_vec())
            .send()
    };
    let r = patch(&s, &upload, 0, half).await.expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (alpha_base, alpha_client) = (s.base.clone(), s.client.clone());
    s.base = base.clone();
    s.client = client.clone();
    let out = common::cli_ok(&s, &["keys", "rotate"]);
    assert!(out.contains("the old key is retired"), "{out}");
    s.restart().await;
    s.base = alpha_base;
    s.client = alpha_client;
    assert!(get_bytes(&s, &path, None).await.1 == layer);
    let r = patch(&s, &upload, half, big.len()).await.expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let big_digest = common::sha256(&big);
    let r = s
        .send(Method::PUT, &format!("{upload}?digest={big_digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "the digest of both chunks");
    let big_path = format!("/v2/shared/big/blobs/{big_digest}");
    assert!(get_bytes(&s, &big_path, None).await.1 == big);

    // Deleting alpha destroys its key: nothing wharf holds opens the copies taken before.
    s.base = base;
    s.client = client;
    common::cli_ok(&s, &["registry", "delete", "alpha", "--yes"]);
    for object in &copies {
        let id = header_key(object).expect("sealed");
        assert_eq!(data_key_rows(&s, &id), "0", "data key {id} is gone");
    }
    let keys = db_value(
        &s,
        &format!("select count(*) from registries where key_id = '{own}'"),
    );
    assert_eq!(keys, "0");
    assert!(!key_file_ids(&s).contains(&own));
    assert!(
        !scoped_objects(&s).await.is_empty(),
        "content waits for collection"
    );
    // The last blob of alpha's was pushed moments ago: collection spares content younger
    // than its grace period (1 s here).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    common::cli_ok(&s, &["gc", "run", "--instance"]);
    assert!(
        scoped_objects(&s).await.is_empty(),
        "alpha's content is removed"
    );
    // The default registry's copy is its own and still pulls.
    assert!(get_bytes(&s, &path, None).await.1 == layer);
}

mod content {
    use super::*;
    on_every_configuration!(
        content_is_sealed_at_rest_and_pulls_unchanged,
        tampered_content_is_refused_logged_and_counted,
        a_registry_with_its_own_key_keeps_its_content_apart,
    );
}

/// The data key the saved hash state of the server's one open upload is sealed under (its id
/// follows the 8-byte magic).
fn state_key(s: &Server) -> String {
    let sql = if s.database_url().is_some() {
        "select encode(substring(hash_state from 9 for 16), 'hex') from uploads"
    } else {
        "select lower(hex(substr(hash_state, 9, 16))) from uploads"
    };
    db_value(s, sql)
}

fn data_key_rows(s: &Server, id: &str) -> String {
    db_value(
        s,
        &format!("select count(*) from data_keys where id = '{id}'"),
    )
}

/// How many data keys the metadata store holds.
fn data_key_count(s: &Server) -> i64 {
    db_value(s, "select count(*) from data_keys")
        .parse()
        .expect("count")
}

/// Every chunk's hash state is sealed under a data key of its own; the next chunk's state
/// replaces it and retires its key, so an upload does not leave a key per chunk behind. A
/// refused chunk retires nothing, and the upload completes with the state it kept, whose key
/// then goes too; so does a cancelled upload's.
async fn a_chunked_upload_retires_the_keys_of_its_replaced_states(b: Backend) {
    let s = Server::start(b).await;
    let data = common::pseudo_random(3 * SEGMENT + 100, 29);
    let mut loc = s.start_upload("keys/app").await;
    let mut keys: Vec<String> = Vec::new();
    for (i, piece) in data.chunks(SEGMENT + 50).enumerate() {
        let r = patch_at(&s, &loc, i * (SEGMENT + 50), piece).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        loc = common::header(&r, "location");
        let key = state_key(&s);
        assert_eq!(key.len(), 32, "chunk {i}: the state is sealed ({key:?})");
        assert_eq!(data_key_rows(&s, &key), "1", "chunk {i}: its state's key");
        if let Some(before) = keys.last() {
            assert_ne!(&key, before);
            assert_eq!(data_key_rows(&s, before), "0", "chunk {i} retired {before}");
        }
        keys.push(key);
    }
    // A chunk at the wrong offset is refused and keeps the state and its key.
    let r = patch_at(&s, &loc, 0, &[0u8; 10]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let last = keys.last().cloned().unwrap_or_default();
    assert_eq!(state_key(&s), last);
    assert_eq!(data_key_rows(&s, &last), "1");
    let digest = common::sha256(&data);
    let r = put_digest(&s, &loc, &digest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        data_key_rows(&s, &last),
        "0",
        "the finished upload retired {last}"
    );
    let path = format!("/v2/keys/app/blobs/{digest}");
    assert!(get_bytes(&s, &path, None).await.1 == data);

    // A cancelled upload's state takes its key along.
    let loc = s.start_upload("keys/app").await;
    let r = patch_at(&s, &loc, 0, &data[..100]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = common::header(&r, "location");
    let key = state_key(&s);
    assert_eq!(data_key_rows(&s, &key), "1");
    let r = s.client.delete(s.url(&loc)).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        data_key_rows(&s, &key),
        "0",
        "the cancelled upload retired {key}"
    );
}

/// An upload left unfinished expires with its saved hash state, and the state's data key goes
/// with it.
async fn an_abandoned_upload_takes_its_state_key_when_it_expires(b: Backend) {
    let s = Server::start_with(b, &["--upload-max-age", "2s"]).await;
    let loc = s.start_upload("keys/app").await;
    let r = patch_at(&s, &loc, 0, b"abandoned").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = common::header(&r, "location");
    let key = state_key(&s);
    assert_eq!(data_key_rows(&s, &key), "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = s.client.get(s.url(&loc)).send().await.expect("status");
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned upload did not expire"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // The session's row goes first, its key right after it: wait for that too.
    while data_key_rows(&s, &key) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired upload kept its state's key {key}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A manifest pushed again (under another tag) keeps the copy already stored: the copy sealed
/// for the second push is dropped, and so are the data keys of its content and annotations.
/// Deleting the manifest deletes the keys of the stored copy.
async fn a_manifest_pushed_again_or_deleted_leaves_no_data_keys_behind(b: Backend) {
    let mut s = Server::start(b).await;
    let (_, _, _, _, manifest) = push_marked_image(&s, "again/app").await;
    let before = data_key_count(&s);
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let r = s
        .push_manifest("again/app", "v2", media_type, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Keys are recorded in batches before use, so the two taken for the dropped copy were
    // counted already: they go, and nothing else changes.
    let after = data_key_count(&s);
    assert_eq!(after, before - 2, "the dropped copy's two keys");
    let r = s.send(Method::GET, "/v2/again/app/manifests/v2").await;
    assert_eq!(r.bytes().await.expect("manifest").to_vec(), manifest);
    // A manifest refused for a layer the repository does not hold was sealed for nothing:
    // its two keys go.
    let missing = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": common::sha256(b"nowhere"), "size": 7 },
        "layers": [],
        "annotations": { "org.example.note": "refused" },
    }))
    .expect("json");
    let r = s
        .push_manifest("again/app", "v3", media_type, &missing)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        data_key_count(&s),
        after - 2,
        "the refused manifest's two keys"
    );

    let stored_keys = db_value(
        &s,
        "select content_key || ' ' || annotations_key from manifests",
    );
    let stored_keys: Vec<&str> = stored_keys.split(' ').collect();
    assert_eq!(stored_keys.len(), 2, "{stored_keys:?}");
    for key in &stored_keys {
        assert_eq!(data_key_rows(&s, key), "1", "{key} opens the stored copy");
    }
    // Annotations sealed before their key was recorded with the manifest (SQLite's migration
    // could not read it): the next start records it.
    db_value(&s, "update manifests set annotations_key = null");
    s.restart().await;
    let mut recorded = String::new();
    for _ in 0..100 {
        recorded = db_value(&s, "select annotations_key from manifests");
        // NULL reads as nothing through psql, as None through Python.
        if !recorded.is_empty() && recorded != "None" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        recorded, stored_keys[1],
        "the annotations' key, recorded again"
    );
    let digest = common::sha256(&manifest);
    let r = s
        .send(Method::DELETE, &format!("/v2/again/app/manifests/{digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for key in &stored_keys {
        assert_eq!(data_key_rows(&s, key), "0", "{key} went with the manifest");
    }
}

/// An upload's stored parts each have a data key: a blob pushed again (stored already) and a
/// cancelled upload leave none of theirs behind, and the stored blob keeps its own.
async fn uploads_that_keep_nothing_leave_no_part_keys_behind(b: Backend) {
    let s = Server::start(b).await;
    let data = common::pseudo_random(2 * SEGMENT + 5, 31);
    let digest = s.push_blob("parts/app", &data).await;
    // Keys are recorded in batches before use: the new part's key was counted already.
    let before = data_key_count(&s);
    assert_eq!(s.push_blob("parts/app", &data).await, digest);
    assert_eq!(
        data_key_count(&s),
        before - 1,
        "the second copy's part key went"
    );
    let path = format!("/v2/parts/app/blobs/{digest}");
    assert!(
        get_bytes(&s, &path, None).await.1 == data,
        "the stored copy opens"
    );

    // A cancelled upload: its part's key and its hash state's key go.
    let before = data_key_count(&s);
    let loc = s.start_upload("parts/app").await;
    let r = patch_at(&s, &loc, 0, &data[..1000]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = common::header(&r, "location");
    let r = s.client.delete(s.url(&loc)).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        data_key_count(&s),
        before - 2,
        "the part's and the state's keys went"
    );
}

/// Data keys are recorded a batch at a time, before use: a clean stop deletes those made and
/// not used, so what is left is the keys of what is stored: here the blob's (the signing keys
/// are wrapped by the master key itself).
async fn a_clean_stop_leaves_only_the_data_keys_in_use(b: Backend) {
    let mut s = Server::start(b).await;
    let data = common::pseudo_random(1000, 37);
    let digest = s.push_blob("stop/app", &data).await;
    let hex = digest.trim_start_matches("sha256:");
    let path = s.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex);
    let blob_key = header_key(&std::fs::read(path).expect("blob file")).expect("sealed");
    assert!(data_key_count(&s) > 1, "a batch of keys was made ahead");
    s.stop();
    assert_eq!(data_key_count(&s), 1, "left: the blob's key");
    assert_eq!(data_key_rows(&s, &blob_key), "1");
    s.start_again().await;
    let path = format!("/v2/stop/app/blobs/{digest}");
    assert!(get_bytes(&s, &path, None).await.1 == data);
}

on_both_backends!(
    a_clean_stop_leaves_only_the_data_keys_in_use,
    uploads_that_keep_nothing_leave_no_part_keys_behind,
    a_chunked_upload_retires_the_keys_of_its_replaced_states,
    a_manifest_pushed_again_or_deleted_leaves_no_data_keys_behind,
    an_abandoned_upload_takes_its_state_key_when_it_expires,
    master_key_rotates_under_pulls_and_a_restart,
    rotation_is_refused_without_encryption_or_a_key_file,
    secrets_are_sealed_under_a_master_key_made_on_first_start,
    secrets_in_the_clear_are_sealed_when_encryption_is_switched_on,
);
