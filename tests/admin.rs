//! Registries as tenants through the management API and the `wharf` CLI: isolation by host
//! name with a real client, irreversible deletes, admin-key permissions, the audit log, and
//! the OpenAPI document checked by schemathesis.

mod common;
#[path = "console/console.rs"]
mod console;
#[path = "../crates/wharf-scan/tests/support/mod.rs"]
mod support;

use std::net::ToSocketAddrs;

use common::images::{docker_dir, files, Skopeo};
use common::{cli, cli_err, cli_ok, expect_error, sha256, Backend, Server, OWNER_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TENANT_ARGS: &[&str] = &["--base-domain", "wharf.test", "--locations", "eu,us"];

/// The tests reach registries by host name; scripts/test maps these to 127.0.0.1.
fn require_test_hosts() {
    for host in ["alpha.wharf.test", "beta.wharf.test"] {
        let ok = (host, 80)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.any(|a| a.ip().is_loopback()));
        assert!(
            ok,
            "{host} must resolve to 127.0.0.1: add it to /etc/hosts (scripts/test does)"
        );
    }
}

async fn api(
    s: &Server,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = s.client.request(method, s.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("api request")
}

async fn expect_problem(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status, "{}", r.url());
    assert_eq!(header_of(&r, "content-type"), "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], status);
    p["detail"].as_str().expect("detail").to_string()
}

fn header_of(r: &reqwest::Response, name: &str) -> String {
    common::header(r, name)
}

async fn registries_are_isolated_tenants(b: Backend) {
    require_test_hosts();
    let s = Server::start_with(b, &[TENANT_ARGS, &["--gc-grace", "1s"]].concat()).await;
    let work = tempfile::tempdir().unwrap();
    let skopeo = Skopeo::new(work.path());

    // One registry from the CLI, one from the API.
    let out = cli_ok(
        &s,
        &[
            "registry",
            "create",
            "alpha",
            "--location",
            "eu",
            "--gc-weekdays",
            "mon,thu",
            "--gc-time",
            "02:30",
        ],
    );
    assert!(
        out.contains("created registry alpha at alpha.wharf.test"),
        "{out}"
    );
    let r = api(
        &s,
        OWNER_KEY,
        Method::POST,
        "/api/v1/registries",
        Some(json!({ "name": "beta", "location": "us", "scanning": true })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let beta: Value = r.json().await.unwrap();
    assert_eq!(beta["hostname"], "beta.wharf.test");
    assert_eq!(beta["scanning"], true);

    // The same repository name holds different content in each; both share one layer.
    let (a_dir, b_dir) = (work.path().join("a"), work.path().join("b"));
    let a_manifest = docker_dir(&a_dir, &[100, 101]);
    let b_manifest = docker_dir(&b_dir, &[100, 102]);
    let at = |host: &str| format!("docker://{host}.wharf.test:{}/team/app:v1", s.port);
    for host in ["alpha", "beta"] {
        let (name, secret) = s
            .create_token(host, "pusher", common::ALL_SCOPES())
            .await
            .unwrap();
        skopeo.login(&format!("{host}.wharf.test:{}", s.port), &name, &secret);
    }
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", a_dir.display()),
        &at("alpha"),
    ]);
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", b_dir.display()),
        &at("beta"),
    ]);
    for (host, manifest) in [("alpha", &a_manifest), ("beta", &b_manifest)] {
        let info: Value =
            serde_json::from_slice(&skopeo.run(&["inspect", "--tls-verify=false", &at(host)]))
                .unwrap();
        assert_eq!(info["Digest"], sha256(manifest), "{host}");
    }
    // The bare host is the default registry, which holds neither.
    let catalog: Value = s
        .send(Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], json!([]));

    let list: Value = serde_json::from_str(&cli_ok(&s, &["registry", "list", "--json"])).unwrap();
    let alpha = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "alpha")
        .unwrap();
    assert_eq!(alpha["location"], "eu");
    assert_eq!(alpha["repository_count"], 1);
    assert_eq!(alpha["artifact_count"], 1);
    assert!(alpha["storage_bytes"].as_i64().unwrap() > 40_000);
    assert_eq!(
        alpha["gc_schedule"],
        json!({ "weekdays": ["mon", "thu"], "time": "02:30" })
    );
    let table = cli_ok(&s, &["registry", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alpha") && l.contains("alpha.wharf.test")),
        "{table}"
    );
    let repos: Value =
        serde_json::from_str(&cli_ok(&s, &["repo", "list", "alpha", "--json"])).unwrap();
    assert_eq!(repos[0]["name"], "team/app");
    assert_eq!(repos[0]["tag_count"], 1);

    // Delete alpha: its content goes, beta's (and the shared layer) stays.
    let blob_file = |digest: &str| {
        s.data_dir()
            .join("blobs/sha256")
            .join(&digest[7..9])
            .join(&digest[7..])
    };
    let a_files = files(&a_dir);
    let only_alpha: Vec<&String> = a_files
        .keys()
        .filter(|k| !files(&b_dir).contains_key(*k) && k.len() == 64)
        .collect();
    assert!(!only_alpha.is_empty());
    for f in &only_alpha {
        assert!(blob_file(&format!("sha256:{f}")).exists());
    }
    let out = cli_ok(&s, &["registry", "delete", "alpha", "--yes"]);
    assert!(out.contains("deleted registry alpha"));
    // Deleting drops references; the instance's collection frees the content (its grace
    // period of a second has passed since the push).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = cli_ok(&s, &["gc", "run", "--instance"]);
    assert!(out.contains("succeeded: freed 0 manifests"), "{out}");
    for f in &only_alpha {
        assert!(
            !blob_file(&format!("sha256:{f}")).exists(),
            "alpha-only blob {f} must be freed"
        );
    }
    let err = skopeo
        .try_run(&["inspect", "--tls-verify=false", &at("alpha")])
        .unwrap_err();
    assert!(err.contains("404"), "{err}");
    let r = s
        .client
        .get(s.url("/v2/"))
        .header("host", format!("alpha.wharf.test:{}", s.port))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no registry named \"alpha\""));
    let back = work.path().join("b-back");
    skopeo.run(&[
        "copy",
        "--src-tls-verify=false",
        &at("beta"),
        &format!("dir:{}", back.display()),
    ]);
    let (mut want, mut got) = (files(&b_dir), files(&back));
    want.remove("version");
    got.remove("version");
    assert_eq!(want, got, "beta is untouched");
    let r = api(&s, OWNER_KEY, Method::GET, "/api/v1/registries/alpha", None).await;
    expect_problem(r, 404).await;

    // The name is free again, and the new registry is empty.
    cli_ok(&s, &["registry", "create", "alpha", "--location", "us"]);
    let (n, sec) = s
        .create_token("alpha", "lister", common::ALL_SCOPES())
        .await
        .unwrap();
    let r = common::basic_client(&n, &sec)
        .get(s.url("/v2/_catalog"))
        .header("host", format!("alpha.wharf.test:{}", s.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["repositories"], json!([]));

    // Repository delete.
    let r = api(
        &s,
        OWNER_KEY,
        Method::DELETE,
        "/api/v1/registries/beta/repositories/team/app",
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(skopeo
        .try_run(&["inspect", "--tls-verify=false", &at("beta")])
        .is_err());
    let r = api(
        &s,
        OWNER_KEY,
        Method::DELETE,
        "/api/v1/registries/beta/repositories/team/app",
        None,
    )
    .await;
    expect_problem(r, 404).await;

    // Every change is in the audit log with its actor.
    let audit: Value = api(&s, OWNER_KEY, Method::GET, "/api/v1/audit?limit=100", None)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["registry"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("registry.create", "alpha"),
        ("registry.create", "beta"),
        ("registry.delete", "alpha"),
        ("repository.delete", "beta"),
    ] {
        assert!(
            actions.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {actions:?}"
        );
    }
    assert!(audit["items"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin-key:bootstrap#"));
    let only_beta: Value = api(
        &s,
        OWNER_KEY,
        Method::GET,
        "/api/v1/audit?registry=beta",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(only_beta["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["registry"] == "beta"));
    let out = cli_ok(&s, &["audit", "--registry", "alpha"]);
    assert!(
        out.lines()
            .filter(|l| l.contains("registry.create"))
            .count()
            == 2,
        "{out}"
    );
}

async fn registry_rules_and_bad_input(b: Backend) {
    let s = Server::start_with(b, TENANT_ARGS).await;
    let create = |body: Value| {
        api(
            &s,
            OWNER_KEY,
            Method::POST,
            "/api/v1/registries",
            Some(body),
        )
    };
    for (name, needle) in [
        ("ab", "at least 3"),
        (&"a".repeat(64) as &str, "at most 63"),
        ("Team", "lowercase"),
        ("1team", "start with a lowercase letter"),
        ("team-", "end with a lowercase letter or a digit"),
        ("te_am", "only lowercase letters"),
    ] {
        let detail =
            expect_problem(create(json!({ "name": name, "location": "eu" })).await, 422).await;
        assert!(detail.contains(needle), "{name}: {detail}");
    }
    let detail = expect_problem(
        create(json!({ "name": "gamma", "location": "mars" })).await,
        422,
    )
    .await;
    assert!(detail.contains("eu, us"), "{detail}");
    // With several locations offered, one must be chosen.
    let detail = expect_problem(create(json!({ "name": "gamma" })).await, 422).await;
    assert!(detail.contains("choose one of: eu, us"), "{detail}");
    create(json!({ "name": "gamma", "location": "eu" })).await;
    expect_problem(
        create(json!({ "name": "gamma", "location": "eu" })).await,
        409,
    )
    .await;
    let detail = expect_problem(
        create(json!({ "name": "delta", "location": "eu", "colour": "red" })).await,
        422,
    )
    .await;
    assert!(detail.contains("unknown field"), "{detail}");
    expect_problem(create(json!(["delta", "eu"])).await, 422).await;
    expect_problem(create(json!({ "name": "delta", "location": "eu", "gc_schedule": { "time": "25:00", "weekdays": ["mon"] } })).await, 422).await;
    for cron in ["every day", "99 99 99 99 99", "0 0 31 2 * *"] {
        let detail = expect_problem(
            create(json!({ "name": "delta", "location": "eu", "gc_schedule": { "cron": cron } }))
                .await,
            422,
        )
        .await;
        assert!(detail.contains("gc_schedule.cron"), "{cron}: {detail}");
    }
    let r = s
        .client
        .post(s.url("/api/v1/registries"))
        .bearer_auth(OWNER_KEY)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400).await;
    let r = s
        .client
        .post(s.url("/api/v1/registries"))
        .bearer_auth(OWNER_KEY)
        .body("name=delta")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415).await;
    let huge = json!({ "name": "delta", "location": "x".repeat(100_000) });
    expect_problem(create(huge).await, 413).await;
    expect_problem(
        api(
            &s,
            OWNER_KEY,
            Method::GET,
            "/api/v1/registries?limit=0",
            None,
        )
        .await,
        400,
    )
    .await;
    expect_problem(
        api(
            &s,
            OWNER_KEY,
            Method::GET,
            "/api/v1/registries?limit=abc",
            None,
        )
        .await,
        400,
    )
    .await;
    expect_problem(
        api(&s, OWNER_KEY, Method::GET, "/api/v1/nothing", None).await,
        404,
    )
    .await;
    // Nothing of the above was created.
    let list: Value = api(&s, OWNER_KEY, Method::GET, "/api/v1/registries", None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "gamma"]);

    // Scanning: on at any time, never off again.
    let patch = |body: Value| {
        api(
            &s,
            OWNER_KEY,
            Method::PATCH,
            "/api/v1/registries/gamma",
            Some(body),
        )
    };
    let r: Value = patch(json!({ "scanning": true, "gc_schedule": { "cron": "0 3 * * 1" } }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["scanning"], true);
    assert_eq!(r["gc_schedule"], json!({ "cron": "0 3 * * 1" }));
    // The next run: a Monday at 03:00 UTC, ahead.
    let next = r["gc_next_run"].as_str().expect("gc_next_run");
    let at = humantime::parse_rfc3339(next).expect("RFC 3339");
    assert!(at > std::time::SystemTime::now());
    assert!(next.ends_with("T03:00:00Z"), "{next}");
    let detail = expect_problem(patch(json!({ "scanning": false })).await, 409).await;
    assert!(detail.contains("cannot be switched off"));
    let r: Value = patch(json!({ "gc_schedule": null }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["gc_schedule"], Value::Null);
    assert_eq!(r["scanning"], true);

    // Pagination.
    for n in ["p1", "p2", "p3"].map(|p| format!("{p}-reg")) {
        create(json!({ "name": n, "location": "us" })).await;
    }
    let page: Value = api(
        &s,
        OWNER_KEY,
        Method::GET,
        "/api/v1/registries?limit=2",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let page2: Value = api(
        &s,
        OWNER_KEY,
        Method::GET,
        &format!("/api/v1/registries?limit=2&after={next}"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page2["items"][0]["name"], "p1-reg");

    // The CLI: one readable line and a non-zero exit for every failure.
    let err = cli_err(
        &s,
        Some(OWNER_KEY),
        &["registry", "create", "Bad", "--location", "eu"],
    );
    assert!(
        err.contains("lowercase") && err.contains("HTTP 422"),
        "{err}"
    );
    let err = cli_err(&s, Some(OWNER_KEY), &["registry", "show", "nope"]);
    assert!(err.contains("no registry named \"nope\""), "{err}");
    let err = cli_err(&s, None, &["registry", "list"]);
    assert!(err.contains("no administrator key"), "{err}");
    let err = cli_err(&s, Some("wak_wrong"), &["registry", "list"]);
    assert!(err.contains("HTTP 401"), "{err}");
    let err = cli_err(&s, Some(OWNER_KEY), &["registry", "delete", "gamma"]);
    assert!(err.contains("pass --yes"), "{err}");
    let out = cli(
        &s,
        Some(OWNER_KEY),
        &["registry", "list", "--url", "http://127.0.0.1:9"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach wharf"));
    cli_ok(&s, &["registry", "show", "gamma"]);

    // The config file under the user's config directory supplies URL and key.
    let home = s.dir.path().join("cli-home");
    std::fs::create_dir_all(home.join(".config/wharf")).unwrap();
    std::fs::write(
        home.join(".config/wharf/config.toml"),
        format!("url = \"{}\"\nkey = \"{OWNER_KEY}\"\n", s.base),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["registry", "show", "gamma", "--json"])
        .env("HOME", &home)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_KEY")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["name"], "gamma");
}

/// Each permission against each endpoint: exactly the right status.
async fn admin_key_permission_matrix(b: Backend) {
    let s = Server::start(b).await;
    let mut keys = Vec::new();
    for (name, perms) in [
        ("reader", vec!["registry:read"]),
        ("writer", vec!["registry:write"]),
        ("deleter", vec!["registry:delete"]),
        ("owner2", vec!["owner"]),
    ] {
        let r = api(
            &s,
            OWNER_KEY,
            Method::POST,
            "/api/v1/admin-keys",
            Some(json!({ "name": name, "permissions": perms })),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let k: Value = r.json().await.unwrap();
        assert!(k["secret"]
            .as_str()
            .unwrap()
            .starts_with(k["prefix"].as_str().unwrap()));
        keys.push((name, k["secret"].as_str().unwrap().to_string()));
    }
    // A victim registry per key that may delete.
    for (name, _) in &keys {
        api(
            &s,
            OWNER_KEY,
            Method::POST,
            "/api/v1/registries",
            Some(json!({ "name": format!("victim-{name}"), "location": "default" })),
        )
        .await;
    }
    // (method, path, body, permission, status when allowed)
    let endpoints: Vec<(Method, String, Option<Value>, &str, u16)> = vec![
        (
            Method::GET,
            "/api/v1/registries".into(),
            None,
            "registry:read",
            200,
        ),
        (
            Method::GET,
            "/api/v1/registries/default".into(),
            None,
            "registry:read",
            200,
        ),
        (
            Method::GET,
            "/api/v1/registries/default/repositories".into(),
            None,
            "registry:read",
            200,
        ),
        (
            Method::GET,
            "/api/v1/audit".into(),
            None,
            "registry:read",
            200,
        ),
        (
            Method::POST,
            "/api/v1/registries".into(),
            Some(json!({ "name": "NAME", "location": "default" })),
            "registry:write",
            201,
        ),
        (
            Method::PATCH,
            "/api/v1/registries/default".into(),
            Some(json!({})),
            "registry:write",
            200,
        ),
        (
            Method::DELETE,
            "/api/v1/registries/victim-NAME".into(),
            None,
            "registry:delete",
            204,
        ),
        (
            Method::DELETE,
            "/api/v1/registries/default/repositories/nope".into(),
            None,
            "registry:delete",
            404,
        ),
        (Method::GET, "/api/v1/admin-keys".into(), None, "owner", 200),
        (
            Method::POST,
            "/api/v1/admin-keys".into(),
            Some(json!({ "name": "made-by-NAME", "permissions": ["registry:read"] })),
            "owner",
            201,
        ),
        (
            Method::DELETE,
            "/api/v1/admin-keys/999999".into(),
            None,
            "owner",
            404,
        ),
    ];
    for (key_name, secret) in &keys {
        let held = match *key_name {
            "reader" => "registry:read",
            "writer" => "registry:write",
            "deleter" => "registry:delete",
            _ => "owner",
        };
        for (method, path, body, needed, ok_status) in &endpoints {
            let path = path.replace("NAME", key_name);
            let body = body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace("NAME", &format!("by-{key_name}")))
                    .unwrap()
            });
            let allowed = held == "owner" || held == *needed;
            let r = api(&s, secret, method.clone(), &path, body).await;
            let want = if allowed { *ok_status } else { 403 };
            assert_eq!(r.status().as_u16(), want, "{key_name} {method} {path}");
        }
    }
    // No key, a wrong key, a malformed header, a revoked key: 401 everywhere.
    for (method, path, _, _, _) in &endpoints {
        let r = s
            .client
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header_of(&r, "www-authenticate"),
            "Bearer realm=\"wharf-api\""
        );
        expect_problem(r, 401).await;
        expect_problem(
            api(&s, "wak_not-a-key", method.clone(), path, None).await,
            401,
        )
        .await;
        let r = s
            .client
            .request(method.clone(), s.url(path))
            .header("authorization", format!("Basic {OWNER_KEY}"))
            .send()
            .await
            .unwrap();
        expect_problem(r, 401).await;
    }
    let listed: Value = api(&s, OWNER_KEY, Method::GET, "/api/v1/admin-keys", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains(&keys[0].1),
        "secrets are never listed"
    );
    let reader_id = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "reader")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let out = cli_ok(
        &s,
        &["admin-key", "revoke", &reader_id.to_string(), "--yes"],
    );
    assert!(out.contains("revoked"));
    expect_problem(
        api(&s, &keys[0].1, Method::GET, "/api/v1/registries", None).await,
        401,
    )
    .await;
    let table = cli_ok(&s, &["admin-key", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("reader") && l.contains("revoked")),
        "{table}"
    );
    // Keys created from the CLI print their secret once.
    let out = cli_ok(
        &s,
        &[
            "admin-key",
            "create",
            "ci-bot",
            "--permission",
            "registry:read",
        ],
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once; store it now): "))
        .unwrap();
    assert_eq!(
        api(&s, secret, Method::GET, "/api/v1/registries", None)
            .await
            .status(),
        200
    );
    let err = cli_err(
        &s,
        Some(OWNER_KEY),
        &[
            "admin-key",
            "create",
            "bad",
            "--permission",
            "registry:admin",
        ],
    );
    assert!(err.contains("HTTP 422"), "{err}");
    // The log never holds a secret.
    let log = s.log();
    assert!(!log.contains(OWNER_KEY) && !log.contains(secret) && !log.contains(&keys[3].1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_key_is_printed_once() {
    let mut s = Server::start_opts(Backend::Sqlite, &[], None).await;
    let key_line = |log: &str| {
        log.lines()
            .filter(|l| l.contains("bootstrap owner key"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let lines = key_line(&s.log());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let key = lines[0].rsplit(' ').next().unwrap().to_string();
    assert!(key.starts_with("wak_"));
    assert_eq!(
        api(&s, &key, Method::GET, "/api/v1/admin-keys", None)
            .await
            .status(),
        200
    );
    s.restart().await;
    assert_eq!(key_line(&s.log()).len(), 1, "not printed again");
    assert_eq!(
        api(&s, &key, Method::GET, "/api/v1/admin-keys", None)
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_registry_hosts_are_refused() {
    let s = Server::start_with(
        Backend::Sqlite,
        &["--base-domain", "wharf.test", "--default-registry", ""],
    )
    .await;
    let get = |host: &str| {
        s.anon
            .get(s.url("/v2/"))
            .header("host", host.to_string())
            .send()
    };
    expect_error(get("nobody.wharf.test").await.unwrap(), 404, "NAME_UNKNOWN").await;
    expect_error(get("127.0.0.1").await.unwrap(), 404, "NAME_UNKNOWN").await;
    expect_error(get("a.b.wharf.test").await.unwrap(), 404, "NAME_UNKNOWN").await;
    api(
        &s,
        OWNER_KEY,
        Method::POST,
        "/api/v1/registries",
        Some(json!({ "name": "team", "location": "default" })),
    )
    .await;
    // The registry exists: now the answer is the login challenge, not an unknown host.
    assert_eq!(get("team.wharf.test:443").await.unwrap().status(), 401);
    assert_eq!(get("TEAM.WHARF.TEST").await.unwrap().status(), 401);
}

/// The served OpenAPI document, checked against the running server by schemathesis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_under_schemathesis() {
    let s = Server::start_with(Backend::Sqlite, TENANT_ARGS).await;
    let doc: Value = s
        .send(Method::GET, "/api/v1/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let out = tokio::task::spawn_blocking({
        let url = s.url("/api/v1/openapi.json");
        let scratch = s.dir.path().to_path_buf();
        move || {
            // schemathesis keeps a cache in its working directory; keep it out of the tree.
            std::process::Command::new("schemathesis")
                .current_dir(scratch)
                .args([
                    "run",
                    &url,
                    "--checks",
                    "all",
                    // Rules no schema states (a token expiry at least an hour ahead, unique
                    // names) turn some schema-valid requests away with 409/422 by design.
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--max-examples",
                    "40",
                    "--header",
                ])
                .arg(format!("Authorization: Bearer {OWNER_KEY}"))
                .env("NO_COLOR", "1")
                .output()
                .expect("schemathesis is installed (scripts/test installs it)")
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !s.log().contains("status=500"),
        "no request may fail with 500"
    );
}

/// A command whose reader has gone (`wharf ... | head -0`) ends quietly, as other tools do,
/// instead of panicking on its first print.
#[test]
fn commands_end_quietly_when_their_reader_has_gone() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["ref", "check", "alpha.wharf.test:5000/team/app:v1"])
        .stdout(writer)
        .output()
        .expect("run wharf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{err}");
}

#[test]
fn ref_check_names_the_wrong_part() {
    let run = |r: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["ref", "check", r, "--json"])
            .output()
            .unwrap()
    };
    let out = run("alpha.wharf.test:5000/team/app:v1");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({ "registry": "alpha.wharf.test:5000", "namespace": "team", "repository": "app", "tag": "v1", "digest": null })
    );
    for (r, part) in [
        ("bad..host.com/app", "registry host"),
        ("Team/app", "namespace"),
        ("team/App", "repository"),
        ("app:-x", "tag"),
        ("app@sha256:12", "digest"),
    ] {
        let out = run(r);
        assert_eq!(out.status.code(), Some(1), "{r}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("wharf: error: invalid {part}")),
            "{r}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1);
    }
}

/// Maintenance mode: an administrator makes a registry read-only; pulls go on, every kind of
/// write gets the read-only error, and ending it lets pushes in again.
async fn maintenance_mode_refuses_writes_while_pulls_go_on(b: Backend) {
    let s = Server::start(b).await;
    let digest = s.push_blob("maint/app", b"layer bytes").await;
    let config = s.push_blob("maint/app", b"{}").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": 11 }],
    })
    .to_string();
    let media = "application/vnd.oci.image.manifest.v1+json";
    let r = s
        .push_manifest("maint/app", "v1", media, manifest.as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let open = s.start_upload("maint/app").await;

    let out = cli_ok(
        &s,
        &["registry", "update", "default", "--read-only", "true"],
    );
    assert!(out.contains("read-only"), "{out}");
    let shown = cli_ok(&s, &["registry", "show", "default", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&shown).unwrap()["read_only"],
        true
    );

    // Reads go on.
    let r = s
        .send(Method::GET, &format!("/v2/maint/app/blobs/{digest}"))
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer bytes");
    let r = s.send(Method::GET, "/v2/maint/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.send(Method::GET, &open).await.status(),
        StatusCode::NO_CONTENT
    );
    // Every write is refused, saying why.
    let writes = [
        s.send(Method::POST, "/v2/maint/app/blobs/uploads/").await,
        s.client.patch(s.url(&open)).body("x").send().await.unwrap(),
        s.push_manifest("maint/app", "v2", media, manifest.as_bytes())
            .await,
        s.send(Method::DELETE, &format!("/v2/maint/app/blobs/{digest}"))
            .await,
        s.send(Method::DELETE, "/v2/maint/app/manifests/v1").await,
    ];
    for r in writes {
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("read-only for maintenance"), "{message}");
    }
    // Bad input.
    let err = cli_err(
        &s,
        Some(OWNER_KEY),
        &["registry", "update", "default", "--read-only", "maybe"],
    );
    assert!(err.contains("maybe"), "{err}");
    let r = s
        .anon
        .patch(s.url("/api/v1/registries/default"))
        .bearer_auth(OWNER_KEY)
        .json(&json!({ "read_only": "yes" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Ended: pushes are taken again, the session opened before included.
    cli_ok(
        &s,
        &["registry", "update", "default", "--read-only", "false"],
    );
    s.push_blob("maint/app", b"after").await;
    let r = s
        .push_manifest("maint/app", "v2", media, manifest.as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

use console::console_in_a_browser;

on_both_backends!(
    console_in_a_browser,
    registries_are_isolated_tenants,
    registry_rules_and_bad_input,
    admin_key_permission_matrix,
    maintenance_mode_refuses_writes_while_pulls_go_on,
);
