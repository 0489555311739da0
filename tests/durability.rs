//! Uploads survive restarts, a `kill -9` leaves nothing partial visible, and blobs stream
//! through the server in constant memory.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{header, pseudo_random, sha256, Backend, Server};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

async fn upload_resumes_after_restart(b: Backend) {
    let mut s = Server::start(b).await;
    let data = pseudo_random(3 << 20, 11);
    let digest = sha256(&data);
    let half = data.len() / 2;
    let loc = s.start_upload("resume").await;
    let r = s
        .client
        .patch(s.url(&loc))
        .header("content-range", format!("0-{}", half - 1))
        .body(data[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    s.restart().await;

    let r = s.send(Method::GET, &loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), format!("0-{}", half - 1));
    let r = s
        .client
        .patch(s.url(&loc))
        .header("content-range", format!("{half}-{}", data.len() - 1))
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.send(Method::PUT, &format!("{loc}?digest={digest}")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = s
        .send(Method::GET, &format!("/v2/resume/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
}

/// Starts a request whose body is fed through a channel, so the test controls when bytes go.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

async fn kill_during_uploads_leaves_nothing_visible(b: Backend) {
    let mut s = Server::start(b).await;
    let committed = s.push_blob("crash", b"committed before the crash").await;
    let data = pseudo_random(8 << 20, 12);
    let digest = sha256(&data);
    let loc = s.start_upload("crash").await;

    // A chunked upload and a single-request upload, both cut off half-way by SIGKILL.
    let (tx1, body1) = channel_body();
    let patch = s.client.patch(s.url(&loc)).body(body1).send();
    let (tx2, body2) = channel_body();
    let post = s
        .client
        .post(s.url(&format!("/v2/crash/blobs/uploads/?digest={digest}")))
        .body(body2)
        .send();
    let feeder = async {
        for chunk in data[..4 << 20].chunks(256 << 10) {
            let _ = tx1.send(Bytes::copy_from_slice(chunk)).await;
            let _ = tx2.send(Bytes::copy_from_slice(chunk)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.kill();
        drop(tx1);
        drop(tx2);
    };
    let (r1, r2, ()) = tokio::join!(patch, post, feeder);
    assert!(r1.is_err() || !r1.unwrap().status().is_success());
    assert!(r2.is_err() || !r2.unwrap().status().is_success());

    s.start_again().await;
    // Nothing partial is visible, what was committed is there, the database answers.
    assert_eq!(
        s.send(Method::HEAD, &format!("/v2/crash/blobs/{digest}"))
            .await
            .status(),
        404
    );
    let r = s
        .send(Method::GET, &format!("/v2/crash/blobs/{committed}"))
        .await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        b"committed before the crash"
    );
    let catalog: Value = s
        .send(Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["crash"]));
    // The interrupted session holds no acknowledged bytes and can be completed from there.
    let r = s.send(Method::GET, &loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-0");
    let r = s
        .client
        .patch(s.url(&loc))
        .header("content-range", format!("0-{}", data.len() - 1))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.send(Method::PUT, &format!("{loc}?digest={digest}")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = s
        .send(Method::GET, &format!("/v2/crash/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
}

/// A 2 GiB blob goes through push and pull with the server's resident memory staying small:
/// bodies are streamed, never collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_blob_streams_in_flat_memory() {
    const SIZE: usize = 2 << 30;
    const CHUNK: usize = 1 << 20;
    const LIMIT_KIB: u64 = 100 * 1024;
    let s = Server::start(Backend::Sqlite).await;
    let base = pseudo_random(CHUNK, 13);
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let h = hasher.clone();
    let body = futures_util::stream::iter(0..SIZE / CHUNK).map(move |i| {
        let mut chunk = base.clone();
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        h.lock().unwrap().update(&chunk);
        Ok::<_, std::io::Error>(chunk)
    });
    let loc = s.start_upload("big").await;
    let r = s
        .client
        .patch(s.url(&loc))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let digest = format!(
        "sha256:{}",
        hex::encode(hasher.lock().unwrap().clone().finalize())
    );
    let r = s.send(Method::PUT, &format!("{loc}?digest={digest}")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let after_push = common::peak_rss_kib(s.pid()).expect("VmHWM");
    assert!(
        after_push < LIMIT_KIB,
        "peak RSS {after_push} KiB after a 2 GiB push"
    );

    let r = s
        .send(Method::GET, &format!("/v2/big/blobs/{digest}"))
        .await;
    assert_eq!(header(&r, "content-length"), SIZE.to_string());
    let mut stream = r.bytes_stream();
    let mut pulled = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len();
        pulled.update(&chunk);
    }
    assert_eq!(n, SIZE);
    assert_eq!(format!("sha256:{}", hex::encode(pulled.finalize())), digest);
    let after_pull = common::peak_rss_kib(s.pid()).expect("VmHWM");
    eprintln!("server peak RSS: {after_push} KiB after push, {after_pull} KiB after pull of 2 GiB");
    assert!(
        after_pull < LIMIT_KIB,
        "peak RSS {after_pull} KiB after a 2 GiB pull"
    );
}

on_both_backends!(
    upload_resumes_after_restart,
    kill_during_uploads_leaves_nothing_visible
);
