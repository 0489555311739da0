//! The benchmark driver behind `bench/run`: runs every scenario against wharf and the
//! reference registry in the same run, prints a table with ratios and writes bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

struct Target {
    label: &'static str,
    base: String,
    client: Client,
    pid: u32,
    /// `Authorization` header value, for wrk.
    auth: Option<String>,
}

struct Sizes {
    blob: u64,
    images: usize,
    tags: usize,
    repos: usize,
    wrk_seconds: u32,
}

/// One row of the results: a figure for each registry, and which direction is better.
struct Row {
    scenario: String,
    unit: &'static str,
    wharf: f64,
    reference: f64,
    higher_is_better: bool,
}

impl Row {
    /// How many times better wharf is (above 1: wharf ahead).
    fn ratio(&self) -> f64 {
        if self.higher_is_better {
            self.wharf / self.reference.max(f64::MIN_POSITIVE)
        } else {
            self.reference / self.wharf.max(f64::MIN_POSITIVE)
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn required(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("wharf-bench: missing {name}");
        std::process::exit(2)
    })
}

fn client(auth: Option<&str>) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = auth {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(a) {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

fn rss_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Resets a process's peak RSS so that the next reading covers one scenario only.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Writes `size` pseudo-random bytes to a file and returns its sha256 digest.
fn make_file(path: &Path, size: u64) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("bench file"),
    );
    let mut h = Sha256::new();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write bench file");
        left -= n as u64;
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn location(base: &str, r: &reqwest::Response) -> String {
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    }
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn file_body(path: &Path, offset: u64, len: u64) -> reqwest::Body {
    let mut f = tokio::fs::File::open(path).await.expect("open bench file");
    if offset > 0 {
        use tokio::io::AsyncSeekExt;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .expect("seek");
    }
    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        f.take(len),
        1 << 20,
    ))
}

/// Monolithic (POST + PUT) or chunked (PATCHes of `chunk` bytes, then PUT) push; MiB/s.
async fn push_blob(
    t: &Target,
    repo: &str,
    path: &Path,
    size: u64,
    digest: &str,
    chunk: Option<u64>,
) -> f64 {
    let started = Instant::now();
    let r = t
        .client
        .post(format!("{}/v2/{repo}/blobs/uploads/", t.base))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{} POST upload", t.label);
    let mut loc = location(&t.base, &r);
    match chunk {
        None => {
            let r = t
                .client
                .put(with_digest(&loc, digest))
                .header("content-length", size)
                .body(file_body(path, 0, size).await)
                .send()
                .await
                .expect("put");
            assert_eq!(r.status(), StatusCode::CREATED, "{} PUT", t.label);
        }
        Some(chunk) => {
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let r = t
                    .client
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .header("content-length", len)
                    .header("content-range", format!("{offset}-{}", offset + len - 1))
                    .body(file_body(path, offset, len).await)
                    .send()
                    .await
                    .expect("patch");
                assert_eq!(r.status(), StatusCode::ACCEPTED, "{} PATCH", t.label);
                loc = location(&t.base, &r);
                offset += len;
            }
            let r = t
                .client
                .put(with_digest(&loc, digest))
                .header("content-length", 0)
                .send()
                .await
                .expect("put");
            assert_eq!(r.status(), StatusCode::CREATED, "{} PUT", t.label);
        }
    }
    mib_per_s(size, started.elapsed())
}

async fn pull_blob(t: &Target, repo: &str, digest: &str, size: u64) -> f64 {
    let started = Instant::now();
    let r = t
        .client
        .get(format!("{}/v2/{repo}/blobs/{digest}", t.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "{} GET blob", t.label);
    let mut n = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(c) = stream.next().await {
        n += c.expect("body").len() as u64;
    }
    assert_eq!(n, size);
    mib_per_s(size, started.elapsed())
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

async fn put_blob(t: &Target, repo: &str, data: Bytes) {
    let digest = sha(&data);
    let r = t
        .client
        .post(format!("{}/v2/{repo}/blobs/uploads/", t.base))
        .send()
        .await
        .expect("post");
    let loc = location(&t.base, &r);
    let r = t
        .client
        .put(with_digest(&loc, &digest))
        .body(data)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED, "{} blob", t.label);
}

fn image(i: usize) -> (Bytes, Bytes, Bytes) {
    let config = Bytes::from(format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{i}}}"
    ));
    let layer = Bytes::from(format!("layer {i} ").repeat(100));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer), "size": layer.len() }],
    })).expect("manifest");
    (config, layer, Bytes::from(manifest))
}

async fn put_manifest(t: &Target, repo: &str, reference: &str, m: Bytes) {
    let r = t
        .client
        .put(format!("{}/v2/{repo}/manifests/{reference}", t.base))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), StatusCode::CREATED, "{} manifest", t.label);
}

/// Runs `count` jobs at concurrency 8; returns jobs per second.
async fn concurrently<F, Fut>(count: usize, job: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let started = Instant::now();
    futures_util::stream::iter(0..count)
        .map(|i| {
            let job = job.clone();
            async move { job(i).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn small_images(t: &Arc<Target>, n: usize) -> (f64, f64) {
    let tp = t.clone();
    let push = concurrently(n, move |i| {
        let t = tp.clone();
        async move {
            let (c, l, m) = image(i);
            let repo = format!("small/app{}", i % 50);
            put_blob(&t, &repo, c).await;
            put_blob(&t, &repo, l).await;
            put_manifest(&t, &repo, &format!("v{i}"), m).await;
        }
    })
    .await;
    let tp = t.clone();
    let pull = concurrently(n, move |i| {
        let t = tp.clone();
        async move {
            let (c, l, _) = image(i);
            let repo = format!("small/app{}", i % 50);
            let r = t
                .client
                .get(format!("{}/v2/{repo}/manifests/v{i}", t.base))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), StatusCode::OK);
            let _ = r.bytes().await;
            for d in [sha(&c), sha(&l)] {
                let r = t
                    .client
                    .get(format!("{}/v2/{repo}/blobs/{d}", t.base))
                    .send()
                    .await
                    .expect("blob");
                assert_eq!(r.status(), StatusCode::OK);
                let _ = r.bytes().await;
            }
        }
    })
    .await;
    (push, pull)
}

/// Median and 99th percentile of `n` sequential GETs, in milliseconds.
async fn latency(t: &Target, path: &str, n: usize) -> (f64, f64) {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = t
            .client
            .get(format!("{}{path}", t.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{} {path}", t.label);
        let _ = r.bytes().await;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[n / 2], ms[(n * 99 / 100).min(n - 1)])
}

/// wrk against a URL: requests per second, p50 and p99 latency in ms.
fn wrk(t: &Target, method: &str, url: &str, seconds: u32) -> (f64, f64, f64) {
    let script = std::env::temp_dir().join(format!("wharf-bench-{method}.lua"));
    let _ = std::fs::write(&script, format!("wrk.method = \"{method}\"\n"));
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"]);
    if let Some(a) = &t.auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is installed by bench/run");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_string()))
            .map(|v| {
                let (num, unit) =
                    v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
                let n: f64 = num.parse().unwrap_or(0.0);
                match unit {
                    "us" => n / 1000.0,
                    "s" => n * 1000.0,
                    _ => n,
                }
            })
            .unwrap_or(0.0)
    };
    if text.contains("Non-2xx") {
        eprintln!("wrk saw errors against {}: {text}", t.label);
    }
    (rps, pct("50%"), pct("99%"))
}

/// Requests from 32 concurrent connections for `seconds`: requests per second, p50 and p99 in
/// ms. Used for HEAD, which wrk cannot measure (it waits for a body a HEAD answer never has).
async fn load(
    t: &Arc<Target>,
    method: reqwest::Method,
    url: &str,
    seconds: u32,
) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (t, url, method) = (t.clone(), url.to_string(), method.clone());
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let r = t
                    .client
                    .request(method.clone(), &url)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    ms.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            ms
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    if all.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let n = all.len();
    (
        n as f64 / seconds as f64,
        all[n / 2],
        all[(n * 99 / 100).min(n - 1)],
    )
}

fn hashing_limit(path: &Path, size: u64) -> f64 {
    let started = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    mib_per_s(size, started.elapsed())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let sizes = if full {
        Sizes {
            blob: 1 << 30,
            images: 1000,
            tags: 10_000,
            repos: 10_000,
            wrk_seconds: 15,
        }
    } else {
        Sizes {
            blob: 256 << 20,
            images: 300,
            tags: 2_000,
            repos: 2_000,
            wrk_seconds: 5,
        }
    };
    let wharf_auth = arg(&args, "--wharf-auth");
    let targets = [
        Arc::new(Target {
            label: "wharf",
            base: required(&args, "--wharf"),
            client: client(wharf_auth.as_deref()),
            pid: required(&args, "--wharf-pid").parse().expect("pid"),
            auth: wharf_auth.clone(),
        }),
        Arc::new(Target {
            label: "reference",
            base: required(&args, "--reference"),
            client: client(None),
            pid: required(&args, "--reference-pid").parse().expect("pid"),
            auth: None,
        }),
    ];
    let work = PathBuf::from(required(&args, "--work"));
    let out_path = PathBuf::from(required(&args, "--out"));
    let commit = arg(&args, "--commit").unwrap_or_default();

    // Before any request: the servers as they start.
    let at_start: Vec<f64> = targets
        .iter()
        .map(|t| rss_kib(t.pid, "VmRSS:") / 1024.0)
        .collect();

    let blob_path = work.join("blob.bin");
    eprintln!("preparing a {} MiB test file...", sizes.blob >> 20);
    let digest = make_file(&blob_path, sizes.blob);
    let limit = hashing_limit(&blob_path, sizes.blob);
    let mut rows: Vec<Row> = Vec::new();
    let mut both = |scenario: String, unit: &'static str, higher: bool, w: f64, r: f64| {
        rows.push(Row {
            scenario,
            unit,
            wharf: w,
            reference: r,
            higher_is_better: higher,
        });
    };
    let mb = sizes.blob >> 20;
    both(
        "resident memory idle at start".into(),
        "MiB",
        false,
        at_start[0],
        at_start[1],
    );

    let mut figures: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for (i, t) in targets.iter().enumerate() {
        eprintln!("{}: blob push and pull...", t.label);
        reset_peak(t.pid);
        let mono = push_blob(t, "bench/mono", &blob_path, sizes.blob, &digest, None).await;
        let peak_push = rss_kib(t.pid, "VmHWM:") / 1024.0;
        let chunked = push_blob(
            t,
            "bench/chunked",
            &blob_path,
            sizes.blob,
            &digest,
            Some(16 << 20),
        )
        .await;
        reset_peak(t.pid);
        let pull = pull_blob(t, "bench/mono", &digest, sizes.blob).await;
        let peak_pull = rss_kib(t.pid, "VmHWM:") / 1024.0;
        figures[i].extend([mono, chunked, pull, peak_push, peak_pull]);
    }
    both(
        format!("blob push {mb} MiB, monolithic"),
        "MiB/s",
        true,
        figures[0][0],
        figures[1][0],
    );
    both(
        format!("blob push {mb} MiB, 16 MiB chunks"),
        "MiB/s",
        true,
        figures[0][1],
        figures[1][1],
    );
    both(
        format!("blob pull {mb} MiB"),
        "MiB/s",
        true,
        figures[0][2],
        figures[1][2],
    );
    both(
        format!("peak RSS during {mb} MiB push"),
        "MiB",
        false,
        figures[0][3],
        figures[1][3],
    );
    both(
        format!("peak RSS during {mb} MiB pull"),
        "MiB",
        false,
        figures[0][4],
        figures[1][4],
    );

    let mut small = Vec::new();
    for t in &targets {
        eprintln!("{}: {} small images...", t.label, sizes.images);
        small.push(small_images(t, sizes.images).await);
    }
    both(
        format!("small-image push, {} images, concurrency 8", sizes.images),
        "images/s",
        true,
        small[0].0,
        small[1].0,
    );
    both(
        format!("small-image pull, {} images, concurrency 8", sizes.images),
        "images/s",
        true,
        small[0].1,
        small[1].1,
    );

    let mut manifest_figs = Vec::new();
    for t in &targets {
        eprintln!("{}: manifest GET/HEAD under wrk...", t.label);
        reset_peak(t.pid);
        let url = format!("{}/v2/small/app0/manifests/v0", t.base);
        let get = wrk(t, "GET", &url, sizes.wrk_seconds);
        let head = load(t, reqwest::Method::HEAD, &url, sizes.wrk_seconds).await;
        let peak = rss_kib(t.pid, "VmHWM:") / 1024.0;
        manifest_figs.push((get, head, peak));
    }
    let (w, r) = (&manifest_figs[0], &manifest_figs[1]);
    both(
        "manifest GET, wrk 32 connections".into(),
        "req/s",
        true,
        w.0 .0,
        r.0 .0,
    );
    both("manifest GET p50".into(), "ms", false, w.0 .1, r.0 .1);
    both("manifest GET p99".into(), "ms", false, w.0 .2, r.0 .2);
    both(
        "manifest HEAD, 32 connections".into(),
        "req/s",
        true,
        w.1 .0,
        r.1 .0,
    );
    both("manifest HEAD p99".into(), "ms", false, w.1 .2, r.1 .2);
    both("peak RSS under wrk".into(), "MiB", false, w.2, r.2);

    let mut listing = Vec::new();
    for t in &targets {
        eprintln!(
            "{}: {} tags and {} repositories...",
            t.label, sizes.tags, sizes.repos
        );
        let (c, l, m) = image(0);
        put_blob(t, "many/tags", c).await;
        put_blob(t, "many/tags", l).await;
        let tp = t.clone();
        concurrently(sizes.tags, move |i| {
            let (t, m) = (tp.clone(), m.clone());
            async move { put_manifest(&t, "many/tags", &format!("t{i:06}"), m).await }
        })
        .await;
        let tp = t.clone();
        concurrently(sizes.repos, move |i| {
            let t = tp.clone();
            async move { put_blob(&t, &format!("many/repo{i:06}"), Bytes::from_static(b"r")).await }
        })
        .await;
        let tags = latency(t, "/v2/many/tags/tags/list", 20).await;
        let catalog = latency(t, "/v2/_catalog?n=1000", 20).await;
        listing.push((tags, catalog));
    }
    both(
        format!("tag list of {} tags, p50", sizes.tags),
        "ms",
        false,
        listing[0].0 .0,
        listing[1].0 .0,
    );
    both(
        format!(
            "catalog page of 1000 (of {}+ repositories), p50",
            sizes.repos
        ),
        "ms",
        false,
        listing[0].1 .0,
        listing[1].1 .0,
    );
    for t in &targets {
        let idle = rss_kib(t.pid, "VmRSS:") / 1024.0;
        figures.push(vec![idle]);
    }
    both(
        "resident memory after the run".into(),
        "MiB",
        false,
        figures[2][0],
        figures[3][0],
    );

    // The table.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1048576.0
            })
        })
        .unwrap_or(0.0);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# wharf benchmark results\n");
    let _ = writeln!(md, "- date: {date}\n- machine: {cores} cores, {mem:.0} GiB\n- wharf commit: {commit}\n- mode: {}\n- reference: CNCF distribution (Debian docker-registry 2.8.2), filesystem storage\n- hashing limit on this machine (openssl dgst -sha256, {mb} MiB): {limit:.0} MiB/s\n", if full { "full" } else { "quick" });
    let _ = writeln!(
        md,
        "Ratio: how many times better wharf is (above 1: wharf ahead).\n"
    );
    let _ = writeln!(
        md,
        "| scenario | unit | wharf | reference | ratio |\n|---|---|---:|---:|---:|"
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.2} |",
            r.scenario,
            r.unit,
            r.wharf,
            r.reference,
            r.ratio()
        );
    }
    let push_share = rows
        .iter()
        .find(|r| r.scenario.starts_with("blob push") && r.scenario.ends_with("monolithic"))
        .map_or(0.0, |r| r.wharf / limit * 100.0);
    let _ = writeln!(
        md,
        "\nwharf monolithic push reaches {push_share:.0}% of the hashing limit."
    );
    println!("{md}");
    std::fs::write(&out_path, md).expect("write results");
    let _: Option<Value> = None;
}
