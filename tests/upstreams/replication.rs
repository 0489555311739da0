//! Push replication end to end: skopeo pushes to wharf, and a rule copies the image (index
//! children and a referrer included) to a second `wharf serve`; with that upstream stopped the
//! copy is retried with back-off and arrives once it is back, while the push itself succeeds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api;
use crate::common::images::{docker_dir, oci_layout, Skopeo};
use crate::common::{cli_ok, cli_with_input, sha256, Backend, Server};

/// The rule as the API shows it, once `done(rule)` holds (or the test fails after a minute).
async fn rule_when(s: &Server, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, rule) = api(
            s,
            reqwest::Method::GET,
            &format!("/api/v1/registries/default/replications/{name}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{rule}");
        if done(&rule) {
            return rule;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not get there: {rule}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn history(s: &Server, name: &str) -> Vec<Value> {
    let (status, page) = api(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/registries/default/replications/{name}/history"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The digest the upstream's tag names, if it has it.
async fn upstream_digest(up: &Server, repo: &str, reference: &str) -> Option<String> {
    let r = up
        .client
        .head(up.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .expect("head");
    (r.status() == 200).then(|| {
        r.headers()["docker-content-digest"]
            .to_str()
            .expect("digest")
            .to_string()
    })
}

pub(super) async fn push_replication(backend: Backend) {
    let s = Server::start_with(backend, &["--replication-backoff", "1s"]).await;
    let mut up = Server::start(Backend::Sqlite).await;
    let up_host = format!("127.0.0.1:{}", up.port);
    let (pusher, push_secret) = up
        .create_token(
            "default",
            "pusher",
            json!([{ "type": "repository", "path": "mirror/*", "actions": ["pull", "push"] }]),
        )
        .await
        .expect("pusher");
    let out = cli_with_input(
        &s,
        &[
            "upstream",
            "create",
            "default",
            &format!("http://{up_host}"),
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

    // Bad rules are refused with the field named.
    for (body, want, says) in [
        (
            json!({ "name": "Bad Name", "repositories": "*", "upstream": up_host }),
            422,
            "rule name",
        ),
        (
            json!({ "name": "rel", "repositories": "team//x", "upstream": up_host }),
            422,
            "repositories",
        ),
        (
            json!({ "name": "rel", "repositories": "*", "tags": "v 1", "upstream": up_host }),
            422,
            "tags",
        ),
        (
            json!({ "name": "rel", "repositories": "*", "target": "{name}//x", "upstream": up_host }),
            422,
            "target",
        ),
        (
            json!({ "name": "rel", "repositories": "*", "upstream": "elsewhere.example" }),
            422,
            "no upstream",
        ),
    ] {
        let (status, problem) = api(
            &s,
            reqwest::Method::POST,
            "/api/v1/registries/default/replications",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or("").contains(says),
            "{problem}"
        );
    }
    cli_ok(
        &s,
        &[
            "replication",
            "create",
            "default",
            "release",
            "--repositories",
            "team/*",
            "--tags",
            "v*",
            "--upstream",
            &up_host,
            "--target",
            "mirror/{name}",
        ],
    );

    // A two-platform index tagged v1, a signature of it, and a tag the rule leaves alone.
    let work = tempfile::tempdir().expect("tempdir");
    let skopeo = Skopeo::new(work.path());
    let host = format!("127.0.0.1:{}", s.port);
    let (name, secret) = s.tester.clone().expect("tester");
    skopeo.login(&host, &name, &secret);
    let src = work.path().join("src");
    let index = oci_layout(&src);
    for tag in ["v1", "latest"] {
        skopeo.run(&[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &format!("docker://{host}/team/app:{tag}"),
        ]);
    }
    let empty = s.push_blob("team/app", b"{}").await;
    let signature = s.push_blob("team/app", b"a signature of the index").await;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2 },
        "layers": [{ "mediaType": "application/octet-stream", "digest": signature, "size": 24 }],
        "subject": { "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(&index), "size": index.len() },
    }))
    .expect("referrer");
    let r = s
        .push_manifest(
            "team/app",
            &sha256(&referrer),
            "application/vnd.oci.image.manifest.v1+json",
            &referrer,
        )
        .await;
    assert_eq!(r.status(), 201);

    let rule = rule_when(&s, "release", |r| r["status"]["succeeded"] == 2).await;
    assert_eq!(rule["status"]["failed"], 0, "{rule}");
    assert_eq!(
        upstream_digest(&up, "mirror/team/app", "v1").await,
        Some(sha256(&index))
    );
    assert_eq!(
        upstream_digest(&up, "mirror/team/app", "latest").await,
        None
    );
    let r = up
        .send(
            reqwest::Method::GET,
            &format!("/v2/mirror/team/app/referrers/{}", sha256(&index)),
        )
        .await;
    let referrers: Value = r.json().await.expect("referrers");
    assert_eq!(
        referrers["manifests"][0]["digest"],
        sha256(&referrer),
        "{referrers}"
    );
    let (name, secret) = up.tester.clone().expect("tester");
    skopeo.login(&up_host, &name, &secret);
    let copied = work.path().join("copied");
    skopeo.run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{up_host}/mirror/team/app:v1"),
        &format!("oci:{}:v1", copied.display()),
    ]);

    // The upstream goes away: the push succeeds, the copy is retried with back-off, and it
    // arrives once the upstream is back.
    up.stop();
    let dsrc = work.path().join("docker");
    let v2 = docker_dir(&dsrc, &[41, 42]);
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", dsrc.display()),
        &format!("docker://{host}/team/app:v2"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let retried = loop {
        let jobs = history(&s, "release").await;
        let job = jobs.first().cloned().expect("a job for v2");
        if job["attempts"].as_i64().unwrap_or(0) >= 2 && job["status"] == "pending" {
            break job;
        }
        assert!(Instant::now() < deadline, "not retried: {job}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(retried["tag"], "v2");
    assert!(retried["next_attempt_at"].is_string(), "{retried}");
    let error = retried["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") || error.contains("not answer"),
        "{error}"
    );
    assert!(!error.contains(&push_secret));
    up.start_again().await;
    rule_when(&s, "release", |r| r["status"]["succeeded"] == 3).await;
    assert_eq!(
        upstream_digest(&up, "mirror/team/app", "v2").await,
        Some(sha256(&v2))
    );
    let shown = cli_ok(&s, &["replication", "history", "default", "release"]);
    assert!(
        shown.contains("succeeded") && shown.contains("team/app:v2"),
        "{shown}"
    );

    // Switched off, a push is not copied; the rule and then its upstream can go.
    cli_ok(
        &s,
        &["replication", "update", "default", "release", "--disable"],
    );
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", dsrc.display()),
        &format!("docker://{host}/team/app:v3"),
    ]);
    assert_eq!(history(&s, "release").await.len(), 3);
    let (status, problem) = api(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/registries/default/upstreams/{up_host}"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    cli_ok(
        &s,
        &["replication", "delete", "default", "release", "--yes"],
    );
    let listed: Value =
        serde_json::from_str(&cli_ok(&s, &["replication", "list", "default", "--json"]))
            .expect("list");
    assert_eq!(listed, json!([]));
    assert!(
        !s.log().contains(&push_secret),
        "the upstream's secret is never logged"
    );
}
