//! What a hostile or broken client meets: scopes hold on every route (mounts included), a JWT
//! dies with its token, and the server's limits (header and body timeouts, upload session cap
//! and age, range arithmetic, request rate) answer in the protocol's own error format.

mod common;

use std::time::{Duration, Instant};

use common::{
    basic_client, cli_ok, expect_error, header, pseudo_random, sha256, Backend, Server, OWNER_KEY,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn repo_scope(path: &str, actions: &[&str]) -> Value {
    json!([{ "type": "repository", "path": path, "actions": actions }])
}

async fn api(s: &Server, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = s.anon.request(method, s.url(path)).bearer_auth(OWNER_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("api request")
}

async fn set_rate_limit(s: &Server, limit: Value) -> reqwest::Response {
    let body = json!({ "rate_limit": limit });
    api(s, Method::PATCH, "/api/v1/registries/default", Some(body)).await
}

/// A JWT from the token endpoint for `name:secret` and one scope.
async fn bearer(s: &Server, name: &str, secret: &str, scope: &str) -> String {
    let r = s
        .anon
        .get(s.url(&format!("/auth/token?scope={scope}")))
        .basic_auth(name, Some(secret))
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("token json");
    body["token"].as_str().expect("token").to_string()
}

async fn authorization_holes(b: Backend) {
    let s = Server::start(b).await;
    // A private layer in secret/app, pushed by the full-access tester.
    let layer = pseudo_random(4096, 11);
    let digest = s.push_blob("secret/app", &layer).await;
    let (name, secret) = s
        .create_token(
            "default",
            "team-pusher",
            repo_scope("team/*", &["pull", "push"]),
        )
        .await
        .expect("token");
    let pusher = basic_client(&name, &secret);
    let jwt = bearer(&s, &name, &secret, "repository:team/x:pull,push").await;

    // Mounting from a repository the token may not pull opens a plain session, exactly as for
    // a digest that is not there, over Basic and Bearer alike.
    let absent = sha256(b"not stored anywhere");
    for (client_jwt, mount) in [(None, &digest), (None, &absent), (Some(&jwt), &digest)] {
        let mut req = s.anon.post(s.url(&format!(
            "/v2/team/x/blobs/uploads/?mount={mount}&from=secret/app"
        )));
        req = match client_jwt {
            Some(t) => req.bearer_auth(t),
            None => req.basic_auth(&name, Some(&secret)),
        };
        let r = req.send().await.expect("mount");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "mount of {mount}");
        assert!(header(&r, "location").contains("/blobs/uploads/"));
    }
    // The blob reached team/x by no route.
    let r = pusher
        .get(s.url(&format!("/v2/team/x/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    let r = pusher
        .get(s.url(&format!("/v2/secret/app/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    expect_error(r, 403, "DENIED").await;
    // From a public repository the mount is allowed: anyone may pull it anyway.
    cli_ok(&s, &["repo", "update", "default", "secret/app", "--public"]);
    let r = pusher
        .post(s.url(&format!(
            "/v2/team/x/blobs/uploads/?mount={digest}&from=secret/app"
        )))
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = pusher
        .get(s.url(&format!("/v2/team/x/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), layer.as_slice());

    // An upload's status needs only pull: a client holding a pull-only JWT may read it.
    let location = s.start_upload("team/y").await;
    let (reader, reader_secret) = s
        .create_token("default", "team-reader", repo_scope("team/*", &["pull"]))
        .await
        .expect("token");
    let pull_jwt = bearer(&s, &reader, &reader_secret, "repository:team/y:pull").await;
    let r = s
        .anon
        .get(s.url(&location))
        .bearer_auth(&pull_jwt)
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-0");
    // ...but not write to it.
    let r = s
        .anon
        .patch(s.url(&location))
        .bearer_auth(&pull_jwt)
        .body("abc")
        .send()
        .await
        .expect("patch");
    expect_error(r, 403, "DENIED").await;

    // A JWT dies with its token, even once a new token is created (on SQLite the new token
    // used to take the deleted one's id, and with it the old JWT's rights).
    let r = s
        .anon
        .get(s.url("/v2/team/y/tags/list"))
        .bearer_auth(&pull_jwt)
        .send()
        .await
        .expect("tags");
    assert_ne!(r.status(), StatusCode::UNAUTHORIZED);
    let r = api(
        &s,
        Method::DELETE,
        "/api/v1/registries/default/tokens/team-reader",
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.create_token("default", "newcomer", repo_scope("*", &["pull"]))
        .await
        .expect("token");
    let r = s
        .anon
        .get(s.url("/v2/team/y/tags/list"))
        .bearer_auth(&pull_jwt)
        .send()
        .await
        .expect("tags");
    expect_error(r, 401, "UNAUTHORIZED").await;

    // Without a public URL, the default registry's login line names the address wharf
    // listens on, which resolves everywhere (a `default.localhost` name does not).
    let r = api(
        &s,
        Method::POST,
        "/api/v1/registries/default/tokens",
        Some(json!({ "name": "login-check", "scopes": repo_scope("*", &["pull"]) })),
    )
    .await;
    let body: Value = r.json().await.expect("json");
    let address = format!("127.0.0.1:{}", s.port);
    assert_eq!(
        body["docker_login"],
        format!("docker login {address} -u login-check --password-stdin")
    );
    assert!(body["docker_config"]["auths"][&address].is_object());
}

/// Sends raw bytes on a fresh connection.
async fn raw(s: &Server, text: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    tcp.write_all(text.as_bytes()).await.expect("write");
    tcp
}

/// Whether the server closes `tcp` before `deadline`, while `trickle` (if any) is written to
/// it every half second as a slow client would.
async fn closed_by_server(tcp: &mut TcpStream, trickle: Option<&str>, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Some(t) = trickle {
            if tcp.write_all(t.as_bytes()).await.is_err() {
                return true;
            }
        }
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server answered (a timeout response) and will close; keep reading.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    false
}

async fn limits(b: Backend) {
    let mut s = Server::start_with(
        b,
        &[
            "--header-read-timeout",
            "2s",
            "--idle-timeout",
            "2s",
            "--upload-max-sessions",
            "3",
            "--upload-max-age",
            "6s",
        ],
    )
    .await;
    let auth = s.tester.clone().expect("tester");
    // Connections idle for 2 s are closed here; a pooled one could close under a request.
    s.client = common::basic_client_without_reuse(&auth.0, &auth.1);

    // Slow loris: 200 connections trickle header lines; a normal client is served meanwhile,
    // and every slow connection is dropped once its headers take longer than allowed.
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(raw(&s, "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n").await);
    }
    let r = s.send(Method::GET, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    let trickles = slow.into_iter().map(|mut tcp| async move {
        closed_by_server(&mut tcp, Some("X-Slow: 1\r\n"), deadline).await
    });
    let closed = futures_util::future::join_all(trickles).await;
    assert!(
        closed.iter().all(|c| *c),
        "a slow-loris connection stayed open"
    );
    let r = s.send(Method::GET, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);

    // An idle keep-alive connection is closed too.
    let mut idle = raw(&s, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    assert!(closed_by_server(&mut idle, None, deadline).await);

    // Content-Range arithmetic never wraps: the largest range is a 416, the session unchanged.
    let location = s.start_upload("lim/app").await;
    let r = s
        .client
        .patch(s.url(&location))
        .header("content-range", "0-18446744073709551615")
        .body("abc")
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-0");
    expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;

    // A body that stops arriving fails the request after the idle timeout; nothing is kept.
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.0, auth.1))
    };
    let mut stalled = raw(
        &s,
        &format!(
            "PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789"
        ),
    )
    .await;
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled body kept its request open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("BLOB_UPLOAD_INVALID"),
        "{answer}"
    );
    let r = s.client.get(s.url(&location)).send().await.expect("status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-0");

    // At most three sessions per repository: the fourth is a 429 that says what to do.
    s.start_upload("lim/app").await;
    let kept_alive = s.start_upload("lim/app").await;
    let r = s.send(Method::POST, "/v2/lim/app/blobs/uploads/").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&r, "retry-after").is_empty());
    expect_error(r, 429, "TOOMANYREQUESTS").await;
    // Other repositories have their own allowance.
    s.start_upload("lim/other").await;

    // Sessions untouched for the configured age go, with their files; one that keeps moving
    // stays. Data no session names (a node died before removing it) goes too.
    let uploads_dir = s.data_dir().join("uploads");
    let orphan = uploads_dir.join("0b7e6a35-orphan");
    std::fs::create_dir(&orphan).expect("orphan dir");
    std::fs::write(orphan.join("00000000000000000000-abc"), b"left over").expect("orphan part");
    let mut offset = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s
            .client
            .patch(s.url(&kept_alive))
            .header("content-range", format!("{offset}-{offset}"))
            .body("x")
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "the busy session expired");
        offset += 1;
        let r = s.client.get(s.url(&location)).send().await.expect("status");
        if r.status() == StatusCode::NOT_FOUND {
            expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned session was not removed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Only the busy session's file is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<_> = std::fs::read_dir(&uploads_dir)
            .expect("uploads dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if files.len() == 1 && kept_alive.ends_with(&files[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "upload files left: {files:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Room for new sessions again.
    s.start_upload("lim/app").await;

    // Request rate per token, set per registry: beyond it a 429 with Retry-After.
    let r = set_rate_limit(&s, json!(-1)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = set_rate_limit(&s, json!(5)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["rate_limit"], 5);
    let mut limited = None;
    for _ in 0..30 {
        let r = s.send(Method::GET, "/v2/").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = limited.expect("30 requests at once passed a limit of 5 per second");
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!(retry >= 1);
    expect_error(r, 429, "TOOMANYREQUESTS").await;
    // Another token has its own budget.
    let (other, other_secret) = s
        .create_token("default", "other-bot", repo_scope("*", &["pull"]))
        .await
        .expect("token");
    let r = basic_client(&other, &other_secret)
        .get(s.url("/v2/"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    // Cleared, the server's setting (no limit) applies again.
    let r = set_rate_limit(&s, json!(null)).await;
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..30 {
        assert_eq!(s.send(Method::GET, "/v2/").await.status(), StatusCode::OK);
    }
}

/// One value of a metric in the Prometheus text format, 0 if absent; `labels` must all match.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_move_with_pushes_and_pulls(b: Backend) {
    let s = Server::start(b).await;
    let scrape = || async {
        let r = s.anon.get(s.url("/metrics")).send().await.expect("metrics");
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.expect("text")
    };
    let before = scrape().await;
    let blob = pseudo_random(100_000, 3);
    let digest = s.push_blob("metrics/app", &blob).await;
    let r = s
        .send(Method::GET, &format!("/v2/metrics/app/blobs/{digest}"))
        .await;
    assert_eq!(r.bytes().await.expect("body").len(), blob.len());
    let r = s
        .anon
        .get(s.url("/v2/metrics/app/tags/list"))
        .send()
        .await
        .expect("anon");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.start_upload("metrics/app").await;
    let after = scrape().await;

    let blob_route = r#"route="/v2/{name}/blobs/{digest}""#;
    let pulls = |t: &str| {
        metric(
            t,
            "wharf_http_requests_total",
            &[blob_route, r#"status="200""#],
        )
    };
    assert_eq!(pulls(&after) - pulls(&before), 1.0, "{after}");
    let bytes_out = |t: &str| metric(t, "wharf_http_response_bytes_total", &[blob_route]);
    assert!(bytes_out(&after) - bytes_out(&before) >= blob.len() as f64);
    let bytes_in = |t: &str| metric(t, "wharf_http_request_bytes_total", &[]);
    assert!(bytes_in(&after) - bytes_in(&before) >= blob.len() as f64);
    let failures = |t: &str| {
        metric(
            t,
            "wharf_auth_failures_total",
            &[r#"reason="unauthenticated""#],
        )
    };
    assert!(failures(&after) > failures(&before));
    assert!(
        metric(
            &after,
            "wharf_http_request_duration_seconds_count",
            &[blob_route]
        ) >= 1.0
    );
    assert_eq!(metric(&after, "wharf_upload_sessions_open", &[]), 1.0);
    // No unbounded label and no secret: digests, repository names and tokens stay out.
    assert!(!after.contains(digest.trim_start_matches("sha256:")));
    assert!(!after.contains("metrics/app"));
    let secret = &s.tester.as_ref().expect("tester").1;
    assert!(!after.contains(secret.as_str()));
}

/// Behind a TLS proxy, the challenge's realm and every printed login use the public URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_is_what_clients_are_told() {
    let s = Server::start_with(
        Backend::Sqlite,
        &["--public-url", "https://registry.example.test:8443"],
    )
    .await;
    let r = s.anon.get(s.url("/v2/")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header(&r, "www-authenticate")
            .starts_with(r#"Bearer realm="https://registry.example.test:8443/auth/token""#),
        "{}",
        header(&r, "www-authenticate")
    );
    for (registry, address) in [
        ("default", "registry.example.test:8443"),
        ("alpha", "alpha.localhost:8443"),
    ] {
        if registry != "default" {
            let r = api(
                &s,
                Method::POST,
                "/api/v1/registries",
                Some(json!({ "name": registry })),
            )
            .await;
            assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "created without a location"
            );
        }
        let r = api(
            &s,
            Method::POST,
            &format!("/api/v1/registries/{registry}/tokens"),
            Some(json!({ "name": "ci-push", "scopes": repo_scope("*", &["pull"]) })),
        )
        .await;
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            body["docker_login"],
            format!("docker login {address} -u ci-push --password-stdin")
        );
        assert!(
            body["docker_config"]["auths"][address].is_object(),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_public_url_stops_the_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--public-url", "registry.example.test/v2"])
        .output()
        .expect("run wharf");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http:// or https://"), "{err}");
}

on_both_backends!(
    authorization_holes,
    limits,
    metrics_move_with_pushes_and_pulls
);
