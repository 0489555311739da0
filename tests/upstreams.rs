//! Upstream registries end to end: credentials stored per registry with the secret sealed and
//! never returned, and the connection test against a second, real `wharf serve` on loopback,
//! each cause produced for real (wrong secret, expired token, pull-only account, missing
//! repository, closed port, a server that is no registry).

#[path = "upstreams/cache.rs"]
mod cache;
mod common;
#[path = "upstreams/replication.rs"]
mod replication;

use std::time::Duration;

use common::{cli, cli_ok, cli_with_input, Backend, Server, OWNER_KEY};
use serde_json::{json, Value};

/// A secret no stored byte may show.
const SECRET_MARK: &str = "upstream-secret-MARK-7f3a";

async fn api(s: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = s.anon.request(method, s.url(path)).bearer_auth(OWNER_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(ctype, "application/problem+json", "{path}: {body}");
    }
    (status, body)
}

/// Runs the connection test of `host` and returns its report.
async fn test_of(s: &Server, host: &str, repository: Option<&str>, push: bool) -> Value {
    let (status, report) = api(
        s,
        reqwest::Method::POST,
        &format!("/api/v1/registries/default/upstreams/{host}/test"),
        Some(json!({ "repository": repository, "push": push })),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report
}

/// Points the stored credentials of `host` at another account.
async fn set_account(s: &Server, host: &str, username: &str, secret: &str) {
    let (status, body) = api(
        s,
        reqwest::Method::PATCH,
        &format!("/api/v1/registries/default/upstreams/{host}"),
        Some(json!({ "username": username, "secret": secret })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn upstream_credentials_and_connection_test(backend: Backend) {
    let s = Server::start(backend).await;
    // The upstream: another wharf, whose tokens may be made to expire in seconds.
    let up = Server::start_with(Backend::Sqlite, &["--min-token-lifetime", "1"]).await;
    let (pusher, push_secret) = up
        .create_token(
            "default",
            "pusher",
            json!([{ "type": "repository", "path": "team/*", "actions": ["pull", "push"] }]),
        )
        .await
        .expect("pusher");
    let (puller, pull_secret) = up
        .create_token(
            "default",
            "puller",
            json!([{ "type": "repository", "path": "team/*", "actions": ["pull"] }]),
        )
        .await
        .expect("puller");
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3))
            .to_string();
    let (status, short) = api(
        &up,
        reqwest::Method::POST,
        "/api/v1/registries/default/tokens",
        Some(json!({ "name": "short", "scopes": [{ "type": "repository", "path": "team/*", "actions": ["pull"] }], "expires_at": soon })),
    )
    .await;
    assert_eq!(status, 201, "{short}");
    let short_secret = short["secret"].as_str().expect("secret").to_string();
    let config = up.push_blob("team/app", b"{}").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [],
    });
    let r = up
        .push_manifest(
            "team/app",
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 201);

    // Created from the CLI, the secret on standard input; shown without it.
    let host = format!("127.0.0.1:{}", up.port);
    let url = format!("http://{host}");
    let out = cli_with_input(
        &s,
        &[
            "upstream",
            "create",
            "default",
            &url,
            "--username",
            &pusher,
            "--secret-stdin",
            "--description",
            "the other wharf",
        ],
        &format!("{push_secret}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value =
        serde_json::from_str(&cli_ok(&s, &["upstream", "list", "default", "--json"]))
            .expect("list");
    assert_eq!(listed[0]["host"], host.as_str(), "{listed}");
    assert_eq!(listed[0]["url"], url.as_str());
    assert_eq!(listed[0]["username"], pusher.as_str());
    assert!(
        !listed.to_string().contains(&push_secret),
        "the secret is never returned"
    );

    // Success, with the rights seen.
    let ok = test_of(&s, &host, Some("team/app"), true).await;
    assert_eq!(ok["cause"], "ok", "{ok}");
    assert_eq!(ok["rights"], json!(["pull", "push"]));
    let line = cli_ok(
        &s,
        &[
            "upstream",
            "test",
            "default",
            &host,
            "--repository",
            "team/app",
        ],
    );
    assert!(line.starts_with("ok: "), "{line}");
    // A repository that does not exist there.
    let missing = test_of(&s, &host, Some("team/nothing-here"), false).await;
    assert_eq!(missing["cause"], "repository_missing", "{missing}");
    // A pull-only account.
    set_account(&s, &host, &puller, &pull_secret).await;
    let pull_only = test_of(&s, &host, Some("team/app"), true).await;
    assert_eq!(pull_only["cause"], "no_push_rights", "{pull_only}");
    assert_eq!(pull_only["rights"], json!(["pull"]));
    // A wrong secret; the CLI says so and fails.
    set_account(&s, &host, &puller, "not-the-secret").await;
    let wrong = test_of(&s, &host, None, false).await;
    assert_eq!(wrong["cause"], "authentication_failed", "{wrong}");
    let err = cli(&s, Some(OWNER_KEY), &["upstream", "test", "default", &host]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stdout).contains("authentication_failed"));
    // An expired token.
    set_account(&s, &host, "short", &short_secret).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let expired = test_of(&s, &host, Some("team/app"), false).await;
    assert_eq!(expired["cause"], "token_expired", "{expired}");
    // A client of the upstream is told so too.
    let login = common::basic_client("short", &short_secret)
        .get(up.url("/v2/"))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 401);
    assert!(login
        .text()
        .await
        .unwrap_or_default()
        .contains("this token expired at"));

    // Rotation: the secret is replaced at once, and the time of it shown.
    let before = api(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/registries/default/upstreams/{host}"),
        None,
    )
    .await
    .1;
    let out = cli_with_input(
        &s,
        &[
            "upstream",
            "update",
            "default",
            &host,
            "--username",
            &pusher,
            "--secret-stdin",
        ],
        &push_secret,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = api(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/registries/default/upstreams/{host}"),
        None,
    )
    .await
    .1;
    assert!(
        after["secret_updated_at"].as_str() > before["secret_updated_at"].as_str(),
        "{after}"
    );
    assert_eq!(
        test_of(&s, &host, Some("team/app"), true).await["cause"],
        "ok"
    );

    // Not reachable: a closed port. Not a registry: a server that answers 404 to /v2/.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let (status, _) = api(
        &s,
        reqwest::Method::POST,
        "/api/v1/registries/default/upstreams",
        Some(
            json!({ "url": format!("http://127.0.0.1:{closed}"), "username": "x", "secret": "y" }),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = api(
        &s,
        reqwest::Method::POST,
        "/api/v1/registries/default/upstreams",
        Some(json!({ "url": "https://no-such-host.invalid", "username": "x", "secret": "y" })),
    )
    .await;
    assert_eq!(status, 201);
    let unknown = test_of(&s, "no-such-host.invalid", None, false).await;
    assert_eq!(unknown["cause"], "unreachable", "{unknown}");
    let down = test_of(&s, &format!("127.0.0.1:{closed}"), None, false).await;
    assert_eq!(down["cause"], "unreachable", "{down}");
    assert!(
        down["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{down}"
    );
    // A web server that is no registry: /v2/ answers an HTML page.
    let html_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(html_dir.path().join("v2")).expect("v2");
    std::fs::write(html_dir.path().join("v2/index.html"), "<html>hello</html>").expect("html");
    let html_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut html = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &html_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(html_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("http.server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", html_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = api(
        &s,
        reqwest::Method::POST,
        "/api/v1/registries/default/upstreams",
        Some(json!({ "url": format!("http://127.0.0.1:{html_port}"), "username": "x", "secret": "y" })),
    )
    .await;
    assert_eq!(status, 201);
    let not_registry = test_of(&s, &format!("127.0.0.1:{html_port}"), None, false).await;
    let _ = html.kill();
    let _ = html.wait();
    assert_eq!(
        not_registry["cause"], "unexpected_response",
        "{not_registry}"
    );
    assert_eq!(not_registry["status"], 200);
    assert!(
        not_registry["excerpt"]
            .as_str()
            .unwrap_or_default()
            .contains("<html>"),
        "{not_registry}"
    );

    // Bad input: a clear problem each, nothing stored.
    for (body, says) in [
        (
            json!({ "url": "registry.example.com", "username": "u", "secret": "s" }),
            "must start with",
        ),
        (
            json!({ "url": "https://r.example.com/v2/", "username": "u", "secret": "s" }),
            "no path",
        ),
        (
            json!({ "url": "https://u:p@r.example.com", "username": "u", "secret": "s" }),
            "credentials",
        ),
        (
            json!({ "url": "https://r.example.com", "username": "", "secret": "s" }),
            "username",
        ),
        (
            json!({ "url": "https://r.example.com", "username": "u", "secret": "" }),
            "secret",
        ),
        (
            json!({ "url": "https://r.example.com", "username": "u", "secret": "s", "ca_certificate": "not pem" }),
            "CA certificate",
        ),
        (
            json!({ "url": url, "username": "u", "secret": "s" }),
            "already",
        ),
    ] {
        let (status, problem) = api(
            &s,
            reqwest::Method::POST,
            "/api/v1/registries/default/upstreams",
            Some(body.clone()),
        )
        .await;
        assert!(status == 422 || status == 409, "{body}: {status} {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{body}: {problem}"
        );
    }
    let (status, problem) = api(
        &s,
        reqwest::Method::PATCH,
        &format!("/api/v1/registries/default/upstreams/{host}"),
        Some(json!({ "url": "https://elsewhere.example.com" })),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("fixed"),
        "{problem}"
    );
    let out = cli(
        &s,
        Some(OWNER_KEY),
        &[
            "upstream",
            "create",
            "default",
            "https://r.example.com",
            "--username",
            "u",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret-stdin"));
    let (status, _) = api(
        &s,
        reqwest::Method::GET,
        "/api/v1/registries/default/upstreams/nowhere.example.com",
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The secret sits nowhere in the clear: not in a stored file, not in the database.
    set_account(&s, &host, "marker", SECRET_MARK).await;
    for (path, bytes) in common::files_under(&s.data_dir()) {
        assert!(
            !bytes
                .windows(SECRET_MARK.len())
                .any(|w| w == SECRET_MARK.as_bytes()),
            "{} holds the secret",
            path.display()
        );
    }
    assert!(
        !s.pg_dump().contains(SECRET_MARK),
        "the database holds the secret"
    );
    assert!(
        !s.log().contains(SECRET_MARK) && !s.log().contains(&push_secret),
        "the log holds a secret"
    );

    // Every change is audited, the secrets not.
    let audit = cli_ok(&s, &["audit", "--registry", "default", "--json"]);
    for action in ["upstream.create", "upstream.update", "upstream.test"] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    assert!(!audit.contains(&push_secret) && !audit.contains(SECRET_MARK));

    // Deleted: gone, with its secret.
    cli_ok(&s, &["upstream", "delete", "default", &host, "--yes"]);
    let (status, _) = api(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/registries/default/upstreams/{host}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(cli_ok(&s, &["audit", "--registry", "default", "--json"]).contains("upstream.delete"));
}

/// Distribution's registry (Debian's docker-registry) on loopback, behind TLS with a CA made
/// for the test, with htpasswd (Basic) auth.
struct DockerRegistry {
    child: std::process::Child,
    port: u16,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it; returns the CA's PEM path.
fn certificates(dir: &std::path::Path) -> std::path::PathBuf {
    let at = |n: &str| dir.join(n);
    run(std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=wharf test CA", "-keyout"])
        .arg(at("ca.key"))
        .arg("-out")
        .arg(at("ca.crt")));
    run(std::process::Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(at("server.key"))
        .arg("-out")
        .arg(at("server.csr")));
    std::fs::write(at("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(std::process::Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(at("server.csr"))
        .arg("-CA")
        .arg(at("ca.crt"))
        .arg("-CAkey")
        .arg(at("ca.key"))
        .args(["-CAcreateserial", "-out"])
        .arg(at("server.crt"))
        .arg("-extfile")
        .arg(at("ext.cnf")));
    at("ca.crt")
}

fn docker_registry(dir: &std::path::Path, user: &str, password: &str) -> DockerRegistry {
    run(std::process::Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(dir.join("htpasswd"))
        .args([user, password]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
         http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {crt}\n    key: {key}\n\
         auth:\n  htpasswd:\n    realm: wharf-test\n    path: {htpasswd}\n",
        root = dir.join("data").display(),
        crt = dir.join("server.crt").display(),
        key = dir.join("server.key").display(),
        htpasswd = dir.join("htpasswd").display(),
    );
    std::fs::write(dir.join("config.yml"), config).expect("config");
    let child = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
        .spawn()
        .expect("docker-registry");
    // Owned at once: a failed start below still stops it (Drop).
    let registry = DockerRegistry { child, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return registry;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "docker-registry did not start: {}",
        std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
    );
}

/// An upstream behind TLS with a private CA: untrusted (with the certificate named) until its
/// CA is given; Basic auth, as distribution's htpasswd speaks it.
async fn tls_upstream_with_basic_auth(backend: Backend) {
    let s = Server::start(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certificates(dir.path());
    let registry = docker_registry(dir.path(), "robot", "robot-secret");
    let host = format!("127.0.0.1:{}", registry.port);
    let out = cli_with_input(
        &s,
        &[
            "upstream",
            "create",
            "default",
            &format!("https://{host}"),
            "--username",
            "robot",
            "--secret-stdin",
        ],
        "robot-secret",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let untrusted = test_of(&s, &host, None, false).await;
    assert_eq!(untrusted["cause"], "tls_untrusted", "{untrusted}");
    assert_eq!(
        untrusted["certificate"]["subject"], "CN=127.0.0.1",
        "{untrusted}"
    );
    assert_eq!(
        untrusted["certificate"]["issuer"], "CN=wharf test CA",
        "{untrusted}"
    );
    // With its CA: trusted; Basic auth; a new repository may be pushed to.
    cli_ok(
        &s,
        &[
            "upstream",
            "update",
            "default",
            &host,
            "--ca-file",
            ca.to_str().expect("path"),
        ],
    );
    let shown: Value = serde_json::from_str(&cli_ok(
        &s,
        &["upstream", "show", "default", &host, "--json"],
    ))
    .expect("show");
    assert_eq!(shown["custom_ca"], true);
    let ok = test_of(&s, &host, Some("team/new"), true).await;
    assert_eq!(ok["cause"], "ok", "{ok}");
    assert_eq!(ok["rights"], json!(["push"]));
    assert!(
        ok["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("first push creates it"),
        "{ok}"
    );
    let missing = test_of(&s, &host, Some("team/new"), false).await;
    assert_eq!(missing["cause"], "repository_missing", "{missing}");
    cache::through_distribution(&s, &host, dir.path()).await;
    set_account(&s, &host, "robot", "wrong").await;
    let wrong = test_of(&s, &host, None, false).await;
    assert_eq!(wrong["cause"], "authentication_failed", "{wrong}");
    // Back to the system's CAs only: untrusted again.
    cli_ok(&s, &["upstream", "update", "default", &host, "--no-ca"]);
    assert_eq!(
        test_of(&s, &host, None, false).await["cause"],
        "tls_untrusted"
    );
    drop(registry);
}

use cache::{faults_of_an_upstream, pull_through_cache};
use replication::push_replication;

on_both_backends!(
    upstream_credentials_and_connection_test,
    tls_upstream_with_basic_auth,
    pull_through_cache,
    faults_of_an_upstream,
    push_replication
);
