//! Garbage collection: how long collecting N blobs takes (wharf's online run against the
//! reference's offline `garbage-collect`), and what a running collection costs concurrent
//! pushes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::json;

use crate::{concurrently, sha, try_put_blob, Table, Target};

/// How each registry collects: wharf through its API with an administrator key, the
/// reference by running its `garbage-collect` command on its configuration.
#[derive(Clone)]
pub(crate) enum Collect {
    Api { key: String },
    Offline { config: PathBuf },
}

/// An image of its own for run `tag` and index `i`: a config and a layer, both small.
fn gc_image(tag: &str, i: usize) -> (Bytes, Bytes, Bytes) {
    let config = Bytes::from(format!("{{\"os\":\"linux\",\"gc\":\"{tag}\",\"n\":{i}}}"));
    let layer = Bytes::from(format!("gc layer {tag} {i} ").repeat(20));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer), "size": layer.len() }],
    }))
    .expect("manifest");
    (config, layer, Bytes::from(manifest))
}

/// Pushes `images` images (two blobs each) under `tag`, then deletes their manifests: what is
/// left is garbage for the next collection.
async fn make_garbage(t: &Arc<Target>, tag: &'static str, images: usize) {
    let (_, failed) = push_rate(t, tag, images).await;
    assert_eq!(failed, 0, "{}: pushes failed", t.label);
    let tp = t.clone();
    concurrently(images, 8, move |i| {
        let t = tp.clone();
        async move {
            let (_, _, m) = gc_image(tag, i);
            let repo = format!("gc-{tag}/app{}", i % 50);
            let r = t
                .client
                .delete(format!("{}/v2/{repo}/manifests/{}", t.base, sha(&m)))
                .send()
                .await
                .expect("delete manifest");
            assert_eq!(r.status(), StatusCode::ACCEPTED, "{} delete", t.label);
        }
    })
    .await;
}

/// Runs one collection to its end; returns how long it took and the blobs it freed (wharf's
/// report; the reference does not say), or why it failed.
async fn collect(t: &Target, how: &Collect) -> Result<(Duration, Option<i64>), String> {
    let started = Instant::now();
    match how {
        Collect::Api { key } => {
            let admin = reqwest::Client::new();
            let r = admin
                .post(format!("{}/api/v1/registries/default/gc", t.base))
                .bearer_auth(key)
                .json(&json!({}))
                .send()
                .await
                .expect("start gc");
            assert_eq!(r.status(), StatusCode::ACCEPTED, "gc run");
            let run: serde_json::Value = r.json().await.expect("run");
            let path = format!("{}/api/v1/registries/default/gc/runs/{}", t.base, run["id"]);
            loop {
                let now: serde_json::Value = admin
                    .get(&path)
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("run status")
                    .json()
                    .await
                    .expect("run json");
                if now["status"] != "running" {
                    if now["status"] != "succeeded" {
                        return Err(now.to_string());
                    }
                    return Ok((started.elapsed(), now["blobs_freed"].as_i64()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Collect::Offline { config } => {
            let config = config.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("docker-registry")
                    .args(["garbage-collect", "--delete-untagged"])
                    .arg(config)
                    .env_remove("AWS_CA_BUNDLE")
                    .output()
            })
            .await
            .expect("garbage-collect")
            .expect("run docker-registry garbage-collect");
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(err.lines().last().unwrap_or_default().to_string());
            }
            Ok((started.elapsed(), None))
        }
    }
}

/// Pushes one image; false when the registry refused any part of it.
async fn try_push(t: &Target, repo: &str, tag: &str, (c, l, m): (Bytes, Bytes, Bytes)) -> bool {
    for blob in [c, l] {
        if !try_put_blob(t, repo, blob).await {
            return false;
        }
    }
    let r = t
        .client
        .put(format!("{}/v2/{repo}/manifests/{tag}", t.base))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .await;
    matches!(r, Ok(r) if r.status() == StatusCode::CREATED)
}

/// Pushes `n` small images of their own (concurrency 8); images pushed per second, and how
/// many pushes the registry refused.
async fn push_rate(t: &Arc<Target>, tag: &'static str, n: usize) -> (f64, usize) {
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tp, f) = (t.clone(), failed.clone());
    let rate = concurrently(n, 8, move |i| {
        let (t, failed) = (tp.clone(), f.clone());
        async move {
            let repo = format!("gc-{tag}/app{}", i % 50);
            if !try_push(&t, &repo, &format!("v{i}"), gc_image(tag, i)).await {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    let failed = failed.load(Ordering::Relaxed);
    (rate * (n - failed) as f64 / n.max(1) as f64, failed)
}

pub(crate) async fn gc_rows(
    targets: &[Arc<Target>; 2],
    collectors: &[Collect; 2],
    levels: [usize; 2],
    pushes: usize,
    table: &mut Table,
) {
    // GC duration: each level's garbage is made on both, then collected on both.
    for (level, tag) in levels.into_iter().zip(["small", "large"]) {
        let mut took = [0.0; 2];
        for (i, t) in targets.iter().enumerate() {
            eprintln!("{}: {level} blobs of garbage...", t.label);
            make_garbage(t, tag, level / 2).await;
            // wharf leaves alone what is younger than its grace period (bench/run: 1s).
            tokio::time::sleep(Duration::from_millis(1100)).await;
            eprintln!("{}: collecting them...", t.label);
            let (d, freed) = collect(t, &collectors[i])
                .await
                .unwrap_or_else(|e| panic!("{}: collection failed: {e}", t.label));
            if let Some(freed) = freed {
                assert!(
                    freed >= level as i64,
                    "{} freed {freed} of {level} blobs",
                    t.label
                );
            }
            took[i] = d.as_secs_f64();
        }
        table.add(
            format!(
                "GC of {level} unreferenced blobs ({} deleted images)",
                level / 2
            ),
            "s",
            false,
            took,
        );
    }

    // Push rate with and without a collection running: garbage first, so that the
    // collections running beside the pushes have work.
    let mut rates = [[0.0; 2]; 3];
    let mut refused = [0; 2];
    let mut overlap = [0.0; 2];
    let mut failed_runs = [0; 2];
    for (i, t) in targets.iter().enumerate() {
        eprintln!("{}: {pushes} pushes without GC...", t.label);
        let (rate, failed) = push_rate(t, "quiet", pushes).await;
        assert_eq!(failed, 0, "{}: pushes failed without GC", t.label);
        rates[0][i] = rate;
        // One collection with work to do (the larger level's garbage) beside the pushes: the
        // share of the push window it covered goes in the note.
        make_garbage(t, "one-run-garbage", levels[1] / 2).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        eprintln!("{}: {pushes} pushes during one collection...", t.label);
        let run = {
            let (t, how) = (t.clone(), collectors[i].clone());
            tokio::spawn(async move { collect(&t, &how).await })
        };
        let started = Instant::now();
        let (rate, failed) = push_rate(t, "one-run", pushes).await;
        let window = started.elapsed();
        rates[2][i] = rate;
        refused[i] += failed;
        match run.await.expect("collection") {
            Ok((took, _)) => {
                overlap[i] = (took.as_secs_f64() / window.as_secs_f64()).min(1.0) * 100.0;
            }
            Err(e) => {
                eprintln!("{}: the collection beside the pushes failed: {e}", t.label);
                failed_runs[i] += 1;
            }
        }
        make_garbage(t, "busy-garbage", levels[0] / 2).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        eprintln!("{}: {pushes} pushes while GC runs...", t.label);
        let done = Arc::new(AtomicBool::new(false));
        let looping = {
            let (t, done) = (t.clone(), done.clone());
            let how = collectors[i].clone();
            tokio::spawn(async move {
                let (mut runs, mut failed) = (0, 0);
                while !done.load(Ordering::Relaxed) {
                    failed += usize::from(collect(&t, &how).await.is_err());
                    runs += 1;
                }
                (runs, failed)
            })
        };
        let (rate, failed) = push_rate(t, "busy", pushes).await;
        rates[1][i] = rate;
        refused[i] += failed;
        done.store(true, Ordering::Relaxed);
        let (runs, failed) = looping.await.expect("gc loop");
        failed_runs[i] += failed;
        eprintln!(
            "{}: {runs} collections ran beside the pushes ({failed} failed)",
            t.label
        );
    }
    table.add(
        format!("small-image push, {pushes} images, no GC running"),
        "images/s",
        true,
        rates[0],
    );
    table.add(
        format!(
            "small-image push, {pushes} images, during one GC of {} blobs",
            levels[1]
        ),
        "images/s",
        true,
        rates[2],
    );
    table.add(
        format!("small-image push, {pushes} images, GC runs back to back"),
        "images/s",
        true,
        rates[1],
    );
    let loss =
        |row: usize, k: usize| (1.0 - rates[row][k] / rates[0][k].max(f64::MIN_POSITIVE)) * 100.0;
    table.notes.push(format!(
        "GC rows: wharf collects online (`POST /api/v1/registries/default/gc`, grace period 1s) \
         while it serves; the reference runs `docker-registry garbage-collect --delete-untagged`, \
         which its documentation says must not run beside pushes (it may delete layers a push is \
         using) and is timed here only for comparison. Push rate lost (images pushed whole per \
         second) during one collection: wharf {:.1}% (the collection ran through {:.0}% of the \
         pushes), reference {:.1}% ({:.0}%); with collections back to back: wharf {:.1}%, \
         reference {:.1}%. Goal for wharf: under 10% during a collection. Pushes refused in \
         both: wharf {} of {}, reference {} of {}. Collections that failed beside the pushes: \
         wharf {}, reference {} (a failed one's share of the window counts as 0%).",
        loss(2, 0),
        overlap[0],
        loss(2, 1),
        overlap[1],
        loss(1, 0),
        loss(1, 1),
        refused[0],
        2 * pushes,
        refused[1],
        2 * pushes,
        failed_runs[0],
        failed_runs[1],
    ));
}
