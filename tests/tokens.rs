//! Robot tokens: clients log in as with any managed registry (HTTP Basic or the Bearer token
//! flow), scopes decide exactly what each token may do, and revocation applies at once.

mod common;

use std::time::Duration;

use common::images::{docker_dir, Skopeo};
use common::{
    basic_client, cli_ok, expect_error, header, peak_rss_kib, sha256, Backend, Server, ALL_SCOPES,
    OWNER_KEY,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn repo_scope(path: &str, actions: &[&str]) -> Value {
    json!({ "type": "repository", "path": path, "actions": actions })
}

async fn api(s: &Server, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = s.anon.request(method, s.url(path)).bearer_auth(OWNER_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// Pushes a small image as the tester token; returns the manifest digest.
async fn seed(s: &Server, repo: &str, tag: &str) -> String {
    let config = format!("{{\"repo\":\"{repo}\"}}").into_bytes();
    s.push_blob(repo, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [],
    })).unwrap();
    let r = s
        .push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    sha256(&manifest)
}

/// A JWT from /auth/token for `name:secret` and the given scopes.
async fn jwt(s: &Server, creds: Option<(&str, &str)>, scopes: &[&str]) -> reqwest::Response {
    // `service` is optional; leaving it out keeps the helper independent of the base domain.
    let mut url = "/auth/token?".to_string();
    for sc in scopes {
        url.push_str(&format!("scope={sc}&"));
    }
    let mut req = s.anon.get(s.url(&url));
    if let Some((n, p)) = creds {
        req = req.basic_auth(n, Some(p));
    }
    req.send().await.unwrap()
}

async fn bearer_token(s: &Server, name: &str, secret: &str, scopes: &[&str]) -> String {
    let r = jwt(s, Some((name, secret)), scopes).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn login_with_real_clients(b: Backend) {
    let s = Server::start(b).await;
    // The CLI prints everything a user needs, once.
    let out = cli_ok(
        &s,
        &[
            "token",
            "create",
            "default",
            "ci-push",
            "--scope",
            "repository:team/*:pull,push",
            "--scope",
            "registry",
            "--expires-in",
            "30d",
        ],
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once; store it now): "))
        .unwrap()
        .to_string();
    assert!(secret.starts_with("wrt_"));
    assert!(
        out.contains(&format!(
            "docker login 127.0.0.1:{} -u ci-push --password-stdin",
            s.port
        )),
        "{out}"
    );
    assert!(out.contains("\"auths\""), "{out}");
    assert!(
        out.contains("type: kubernetes.io/dockerconfigjson") && out.contains(".dockerconfigjson: "),
        "{out}"
    );
    let shown: Value = serde_json::from_str(&cli_ok(
        &s,
        &["token", "show", "default", "ci-push", "--json"],
    ))
    .unwrap();
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is never shown again"
    );
    assert_eq!(shown["enabled"], true);
    assert!(shown["expires_at"].as_str().unwrap().starts_with("20"));

    // skopeo logs in and copies with the token: the Bearer flow.
    let work = tempfile::tempdir().unwrap();
    let skopeo = Skopeo::new(work.path());
    let host = format!("127.0.0.1:{}", s.port);
    skopeo.login(&host, "ci-push", &secret);
    let src = work.path().join("img");
    let manifest = docker_dir(&src, &[7]);
    let dest = format!("docker://{host}/team/app:v1");
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", src.display()),
        &dest,
    ]);
    let info: Value =
        serde_json::from_slice(&skopeo.run(&["inspect", "--tls-verify=false", &dest])).unwrap();
    assert_eq!(info["Digest"], sha256(&manifest));
    // Outside its scopes the same login is refused.
    let err = skopeo
        .try_run(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("dir:{}", src.display()),
            &format!("docker://{host}/other/app:v1"),
        ])
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("denied")
            || err.contains("403")
            || err.contains("unauthorized"),
        "{err}"
    );
    // The flow on the wire: challenge, token endpoint, then bearer requests.
    let log = s.log();
    assert!(
        log.contains("path=/auth/token status=200"),
        "token endpoint used"
    );
    assert!(log.contains("path=/v2/ status=401"), "challenge seen");
    assert!(!log.contains(&secret), "secrets never reach the log");

    // The same by hand: challenge, token, bearer.
    let r = s.anon.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        format!(
            "Bearer realm=\"http://127.0.0.1:{}/auth/token\",service=\"default.localhost\"",
            s.port
        )
    );
    let r = s
        .anon
        .get(s.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "www-authenticate").ends_with(",scope=\"repository:team/app:pull\""));
    let token = bearer_token(&s, "ci-push", &secret, &["repository:team/app:pull,push"]).await;
    assert!(!s.log().contains(&token), "JWTs never reach the log");
    let r = s
        .anon
        .get(s.url("/v2/team/app/manifests/v1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The OAuth2 form gives the same.
    let r = s
        .anon
        .post(s.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "ci-push"),
            ("password", secret.as_str()),
            ("service", "default.localhost"),
            ("scope", "repository:team/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    let r = s
        .anon
        .get(s.url("/v2/team/app/tags/list"))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Basic straight on /v2/ works too.
    let r = basic_client("ci-push", &secret)
        .get(s.url("/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Pushes, pulls and token changes are in the audit log with the acting token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit: Value = api(&s, Method::GET, "/api/v1/audit?limit=100", None)
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    let has = |action: &str, actor: &str| {
        items
            .iter()
            .any(|e| e["action"] == action && e["actor"].as_str().unwrap().starts_with(actor))
    };
    assert!(has("manifest.push", "token:ci-push#"));
    assert!(has("manifest.pull", "token:ci-push#"));
    assert!(has("token.create", "admin-key:bootstrap#"));
}

/// Each action × allowed/denied × exact name, prefix pattern, `*`, and a pattern that must not
/// match: the exact status.
async fn scope_matrix(b: Backend) {
    let s = Server::start(b).await;
    for repo in ["team/app", "teams/app", "other"] {
        seed(&s, repo, "v1").await;
    }
    let tokens = [
        ("exact", vec![repo_scope("team/app", &["pull"])]),
        ("prefix", vec![repo_scope("team/*", &["pull", "push"])]),
        (
            "star",
            vec![
                repo_scope("*", &["pull", "push", "delete"]),
                json!({ "type": "registry" }),
            ],
        ),
        (
            "nomatch",
            vec![repo_scope("other/*", &["pull", "push", "delete"])],
        ),
        ("catalog", vec![json!({ "type": "registry" })]),
    ];
    let mut secrets = Vec::new();
    for (name, scopes) in &tokens {
        secrets.push(
            s.create_token("default", name, json!(scopes))
                .await
                .unwrap()
                .1,
        );
    }
    // (token, repository) -> allowed actions
    let allowed = |token: &str, repo: &str, action: &str| -> bool {
        match (token, action) {
            ("exact", "pull") => repo == "team/app",
            ("prefix", "pull" | "push") => repo == "team/app",
            ("star", _) => true,
            _ => false,
        }
    };
    for ((name, _), secret) in tokens.iter().zip(&secrets) {
        let c = basic_client(name, secret);
        for repo in ["team/app", "teams/app"] {
            // pull
            let r = c
                .get(s.url(&format!("/v2/{repo}/manifests/v1")))
                .send()
                .await
                .unwrap();
            let want = if allowed(name, repo, "pull") {
                200
            } else {
                403
            };
            assert_eq!(r.status().as_u16(), want, "{name} pull {repo}");
            // push
            let r = c
                .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
                .send()
                .await
                .unwrap();
            let want = if allowed(name, repo, "push") {
                202
            } else {
                403
            };
            assert_eq!(r.status().as_u16(), want, "{name} push {repo}");
            if want == 403 {
                expect_error(r, 403, "DENIED").await;
            }
            // delete (a tag made for it)
            seed(&s, repo, "gone").await;
            let r = c
                .delete(s.url(&format!("/v2/{repo}/manifests/gone")))
                .send()
                .await
                .unwrap();
            let want = if allowed(name, repo, "delete") {
                202
            } else {
                403
            };
            assert_eq!(r.status().as_u16(), want, "{name} delete {repo}");
        }
        // catalog: needs the registry scope, lists only what the token may pull.
        let r = c.get(s.url("/v2/_catalog")).send().await.unwrap();
        match *name {
            "star" => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(
                    body["repositories"],
                    json!(["other", "team/app", "teams/app"])
                );
            }
            "catalog" => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(
                    body["repositories"],
                    json!([]),
                    "no pull right, nothing listed"
                );
            }
            _ => assert_eq!(r.status(), 403, "{name} catalog"),
        }
    }
    // Anonymous: 401 for every action.
    for (method, path) in [
        (Method::GET, "/v2/team/app/manifests/v1"),
        (Method::POST, "/v2/team/app/blobs/uploads/"),
        (Method::DELETE, "/v2/team/app/manifests/v1"),
        (Method::GET, "/v2/_catalog"),
    ] {
        expect_error(
            s.anon.request(method, s.url(path)).send().await.unwrap(),
            401,
            "UNAUTHORIZED",
        )
        .await;
    }
    // A JWT grants what was asked and allowed, nothing more.
    let jwt = bearer_token(
        &s,
        "exact",
        &secrets[0],
        &["repository:team/app:pull,push", "repository:teams/app:pull"],
    )
    .await;
    let c = |m: Method, p: &str| s.anon.request(m, s.url(p)).bearer_auth(&jwt).send();
    assert_eq!(
        c(Method::GET, "/v2/team/app/manifests/v1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c(Method::POST, "/v2/team/app/blobs/uploads/")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        c(Method::GET, "/v2/teams/app/manifests/v1")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        c(Method::GET, "/v2/other/manifests/v1")
            .await
            .unwrap()
            .status(),
        403,
        "not in the JWT"
    );
}

async fn revocation_and_expiry_apply_at_once(b: Backend) {
    let s = Server::start_with(b, &["--min-token-lifetime", "1"]).await;
    seed(&s, "app", "v1").await;
    let (name, secret) = s
        .create_token(
            "default",
            "robot",
            json!([repo_scope("app", &["pull"]), repo_scope("*", &["pull"])]),
        )
        .await
        .unwrap();
    let basic = basic_client(&name, &secret);
    let jwt = bearer_token(&s, &name, &secret, &["repository:app:pull"]).await;
    let pull_basic = || basic.get(s.url("/v2/app/manifests/v1")).send();
    let pull_jwt = || {
        s.anon
            .get(s.url("/v2/app/manifests/v1"))
            .bearer_auth(&jwt)
            .send()
    };
    assert_eq!(pull_basic().await.unwrap().status(), 200);
    assert_eq!(pull_jwt().await.unwrap().status(), 200);

    cli_ok(&s, &["token", "disable", "default", "robot"]);
    assert_eq!(pull_basic().await.unwrap().status(), 401);
    assert_eq!(
        pull_jwt().await.unwrap().status(),
        401,
        "an issued JWT dies with its token"
    );
    cli_ok(&s, &["token", "enable", "default", "robot"]);
    assert_eq!(pull_basic().await.unwrap().status(), 200);
    assert_eq!(pull_jwt().await.unwrap().status(), 200);

    // Removing scopes narrows the token at once, JWTs included.
    let shown: Value = api(
        &s,
        Method::GET,
        "/api/v1/registries/default/tokens/robot",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    for scope in shown["scopes"].as_array().unwrap() {
        cli_ok(
            &s,
            &[
                "token",
                "scope",
                "remove",
                "default",
                "robot",
                &scope["id"].to_string(),
            ],
        );
    }
    assert_eq!(pull_basic().await.unwrap().status(), 403);
    assert_eq!(pull_jwt().await.unwrap().status(), 403);
    let add_pull_scope = || {
        cli_ok(
            &s,
            &[
                "token",
                "scope",
                "add",
                "default",
                "robot",
                "repository:app:pull",
            ],
        )
    };
    add_pull_scope();
    assert_eq!(pull_basic().await.unwrap().status(), 200);
    // A scope can be removed as it was written, too; one the token lacks is named.
    let err = common::cli_err(
        &s,
        Some(OWNER_KEY),
        &[
            "token",
            "scope",
            "remove",
            "default",
            "robot",
            "repository:app:pull,push",
        ],
    );
    assert!(err.contains("has no scope"), "{err}");
    cli_ok(
        &s,
        &[
            "token",
            "scope",
            "remove",
            "default",
            "robot",
            "repository:app:pull",
        ],
    );
    assert_eq!(pull_basic().await.unwrap().status(), 403);
    add_pull_scope();
    assert_eq!(pull_basic().await.unwrap().status(), 200);

    cli_ok(&s, &["token", "delete", "default", "robot", "--yes"]);
    assert_eq!(pull_basic().await.unwrap().status(), 401);
    assert_eq!(pull_jwt().await.unwrap().status(), 401);

    // Expiry (lifetime floor lowered to one second for the test): refused, then deleted.
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3))
            .to_string();
    let r = api(&s, Method::POST, "/api/v1/registries/default/tokens", Some(json!({ "name": "brief", "scopes": [repo_scope("app", &["pull"])], "expires_at": soon }))).await;
    assert_eq!(r.status(), 201);
    let brief = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let c = basic_client("brief", &brief);
    assert_eq!(
        c.get(s.url("/v2/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        c.get(s.url("/v2/app/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = api(
        &s,
        Method::GET,
        "/api/v1/registries/default/tokens/brief",
        None,
    )
    .await;
    assert_eq!(
        r.status(),
        404,
        "an expired token is deleted, not only refused"
    );
    let audit: Value = api(&s, Method::GET, "/api/v1/audit?limit=100", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "token.expire" && e["detail"]["token"] == "brief"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_must_be_an_hour_ahead() {
    let s = Server::start(Backend::Sqlite).await;
    let create = |expires: String| {
        api(
            &s,
            Method::POST,
            "/api/v1/registries/default/tokens",
            Some(
                json!({ "name": "later", "scopes": [repo_scope("app", &["pull"])], "expires_at": expires }),
            ),
        )
    };
    let in_30_min =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1800))
            .to_string();
    for bad in [
        "2000-01-01T00:00:00Z".to_string(),
        in_30_min,
        "tomorrow".to_string(),
    ] {
        let r = create(bad.clone()).await;
        assert_eq!(r.status(), 422, "{bad}");
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("expires_at"), "{p}");
    }
    let in_2h =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(7200))
            .to_string();
    assert_eq!(create(in_2h).await.status(), 201);
}

async fn bad_credentials_are_refused(b: Backend) {
    let s = Server::start_with(b, &["--base-domain", "wharf.test"]).await;
    seed(&s, "app", "v1").await;
    let (name, secret) = s
        .create_token("default", "good", json!([repo_scope("*", &["pull"])]))
        .await
        .unwrap();
    let pull = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap() };
    let url = s.url("/v2/app/manifests/v1");
    for (label, r) in [
        (
            "wrong password",
            pull(s.anon.get(&url).basic_auth(&name, Some("wrt_wrong"))).await,
        ),
        (
            "unknown token",
            pull(s.anon.get(&url).basic_auth("nobody", Some(&secret))).await,
        ),
        (
            "malformed header",
            pull(s.anon.get(&url).header("authorization", "Basic !!!")).await,
        ),
        (
            "unknown scheme",
            pull(s.anon.get(&url).header("authorization", "Digest x")).await,
        ),
        (
            "forged jwt",
            pull(
                s.anon
                    .get(&url)
                    .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"),
            )
            .await,
        ),
    ] {
        assert_eq!(r.status(), 401, "{label}");
        expect_error(r, 401, "UNAUTHORIZED").await;
    }
    // Another registry's token, and a JWT issued for another registry.
    api(
        &s,
        Method::POST,
        "/api/v1/registries",
        Some(json!({ "name": "other", "location": "default" })),
    )
    .await;
    let (on, os) = s
        .create_token("other", "good", json!([repo_scope("*", &["pull"])]))
        .await
        .unwrap();
    let r = s
        .anon
        .get(&url)
        .basic_auth(&on, Some(&os))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token of another registry");
    let r = s
        .anon
        .get(s.url("/auth/token?service=other.wharf.test&scope=repository:app:pull"))
        .header("host", "other.wharf.test")
        .basic_auth(&on, Some(&os))
        .send()
        .await
        .unwrap();
    let other_jwt = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .anon
        .get(&url)
        .bearer_auth(&other_jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a JWT for another service");
    // The token endpoint: bad scope strings, another service, wrong credentials.
    for (bad, needle) in [
        ("repository:app", "not of the form"),
        ("repository:App:pull", "invalid"),
        ("repository:app:fly", "unknown action"),
        ("org:x:y", "not of the form"),
    ] {
        let r = jwt(&s, Some((&name, &secret)), &[bad]).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{bad}: {body}"
        );
    }
    let r = s
        .anon
        .get(s.url("/auth/token?service=elsewhere"))
        .basic_auth(&name, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        jwt(&s, Some((&name, "wrt_wrong")), &["repository:app:pull"])
            .await
            .status(),
        401
    );
    // Token definitions that break the rules.
    for (body, needle) in [
        (
            json!({ "name": "p", "scopes": [repo_scope("app", &["pull"])] }),
            "at least 3",
        ),
        (
            json!({ "name": "pusher", "scopes": [repo_scope("app", &["push"])] }),
            "push requires pull",
        ),
        (
            json!({ "name": "pusher", "scopes": [] }),
            "at least one scope",
        ),
        (
            json!({ "name": "pusher", "scopes": [repo_scope("App", &["pull"])] }),
            "path",
        ),
        (
            json!({ "name": "good", "scopes": [repo_scope("app", &["pull"])] }),
            "already has a token",
        ),
    ] {
        let r = api(
            &s,
            Method::POST,
            "/api/v1/registries/default/tokens",
            Some(body.clone()),
        )
        .await;
        assert!(matches!(r.status().as_u16(), 409 | 422), "{body}");
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }
    let err = common::cli_err(
        &s,
        Some(OWNER_KEY),
        &[
            "token",
            "create",
            "default",
            "pusher",
            "--scope",
            "repository:app:push",
        ],
    );
    assert!(err.contains("push requires pull"), "{err}");
    assert!(!s.log().contains(&secret) && !s.log().contains(&os));
}

async fn public_repositories_allow_anonymous_pull(b: Backend) {
    let s = Server::start(b).await;
    let digest = seed(&s, "open/app", "v1").await;
    seed(&s, "closed", "v1").await;
    let anon_pull = |repo: &str| {
        s.anon
            .get(s.url(&format!("/v2/{repo}/manifests/v1")))
            .send()
    };
    assert_eq!(anon_pull("open/app").await.unwrap().status(), 401);
    cli_ok(&s, &["repo", "update", "default", "open/app", "--public"]);
    let r = anon_pull("open/app").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(anon_pull("closed").await.unwrap().status(), 401);
    // Anonymous clients still cannot push, and the token flow hands out pull only.
    assert_eq!(
        s.anon
            .post(s.url("/v2/open/app/blobs/uploads/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = jwt(
        &s,
        None,
        &["repository:open/app:pull,push", "repository:closed:pull"],
    )
    .await;
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.anon
            .get(s.url("/v2/open/app/manifests/v1"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.anon
            .get(s.url("/v2/closed/manifests/v1"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The catalog shows a token what it may pull: public repositories included.
    let (name, secret) = s
        .create_token(
            "default",
            "lister",
            json!([{ "type": "registry" }, repo_scope("other/*", &["pull"])]),
        )
        .await
        .unwrap();
    let body: Value = basic_client(&name, &secret)
        .get(s.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["repositories"], json!(["open/app"]));
    let listed: Value =
        serde_json::from_str(&cli_ok(&s, &["repo", "list", "default", "--json"])).unwrap();
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "open/app")
            .unwrap()["public"],
        true
    );
    cli_ok(&s, &["repo", "update", "default", "open/app", "--private"]);
    assert_eq!(anon_pull("open/app").await.unwrap().status(), 401);
}

/// Many connections presenting a secret the node has not checked yet (or a wrong one) do not
/// each run the slow hash at once: one check per secret, at most one hash per core. Each
/// argon2id hash takes 19 MiB; 64 at once took the server past 600 MiB.
async fn concurrent_first_logins_hash_in_bounded_memory(b: Backend) {
    let s = Server::start(b).await;
    let (name, secret) = s
        .create_token("default", "crowd", ALL_SCOPES())
        .await
        .expect("token");
    // Forget the peak of the token's creation, which hashed the secret once.
    std::fs::write(format!("/proc/{}/clear_refs", s.pid()), "5").expect("reset peak RSS");
    let good = basic_client(&name, &secret);
    let bad = basic_client(&name, "wrong-secret");
    let mut calls = Vec::new();
    for i in 0..64 {
        let (c, url) = (if i % 2 == 0 { &good } else { &bad }, s.url("/v2/"));
        calls.push(async move { c.get(url).send().await.expect("GET /v2/").status() });
    }
    let statuses = futures_util::future::join_all(calls).await;
    for (i, st) in statuses.iter().enumerate() {
        assert_eq!(st.as_u16(), if i % 2 == 0 { 200 } else { 401 }, "call {i}");
    }
    let peak_mib = peak_rss_kib(s.pid()).expect("VmHWM") / 1024;
    assert!(peak_mib < 150, "peak RSS {peak_mib} MiB");
}

on_both_backends!(
    concurrent_first_logins_hash_in_bounded_memory,
    login_with_real_clients,
    scope_matrix,
    revocation_and_expiry_apply_at_once,
    bad_credentials_are_refused,
    public_repositories_allow_anonymous_pull,
);

/// podman (Debian's) logs in, pushes and pulls with a token; its storage lives in a temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_logs_in_pushes_and_pulls() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = Server::start(Backend::Sqlite).await;
    let (name, secret) = s
        .create_token(
            "default",
            "podder",
            json!([repo_scope("team/*", &["pull", "push"])]),
        )
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", s.port);
    let podman = |args: &[&str]| {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(args)
            .env("REGISTRY_AUTH_FILE", work.path().join("auth.json"))
            .env("HOME", work.path());
        cmd
    };
    let run = |args: &[&str]| {
        let out = podman(args)
            .output()
            .expect("podman is installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut login = podman(&[
        "login",
        "--tls-verify=false",
        "-u",
        &name,
        "--password-stdin",
        &host,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    assert!(
        login.wait_with_output().unwrap().status.success(),
        "podman login"
    );

    let (layer, _) = common::images::layer("podman-file", 77);
    let tar = work.path().join("layer.tar");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut raw).unwrap();
    std::fs::write(&tar, raw).unwrap();
    let id = run(&["import", tar.to_str().unwrap(), "localhost/podman-test:v1"]);
    let remote = format!("{host}/team/podman:v1");
    run(&["tag", "localhost/podman-test:v1", &remote]);
    run(&["push", "--tls-verify=false", &remote]);
    run(&["rmi", "-f", &remote, "localhost/podman-test:v1"]);
    run(&["pull", "--tls-verify=false", &remote]);
    let pulled = run(&["images", "--no-trunc", "--format", "{{.ID}}", &remote]);
    assert_eq!(
        pulled.trim_start_matches("sha256:"),
        id.trim_start_matches("sha256:")
    );
    // Outside the token's scopes the push is refused.
    let other = format!("{host}/other/podman:v1");
    run(&["tag", &remote, &other]);
    let out = podman(&["push", "--tls-verify=false", &other])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!s.log().contains(&secret));
}
