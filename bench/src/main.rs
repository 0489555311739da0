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
use serde_json::json;
use sha2::{Digest, Sha256};

mod gc;

struct Target {
    label: &'static str,
    base: String,
    client: Client,
    pid: u32,
    /// `Authorization` header value, for wrk.
    auth: Option<String>,
}

struct Sizes {
    /// Blob sizes for the push and pull rows (quick: 256 MiB; full: 256 MiB and 1 GiB).
    blobs: Vec<u64>,
    images: usize,
    tags: usize,
    repos: usize,
    wrk_seconds: u32,
    /// Registry sizes, in manifests, at which the same operations are timed (cost growth).
    growth: [usize; 2],
    /// Each throughput figure is the median of this many runs.
    runs: usize,
    /// Unreferenced blobs a collection frees, at two sizes.
    gc: [usize; 2],
    /// Images pushed with and without a collection running.
    gc_pushes: usize,
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

/// CPU time (user + system) a process has used so far, in seconds; 0 if it is gone.
fn cpu_secs(pid: u32) -> f64 {
    stat_secs(&pid.to_string(), 11)
}

/// Waits until server `pid` is idle (at most a tick of CPU in 100 ms, for 3 s at most): a push
/// leaves work behind it (an upload of a blob already stored is dropped in the background, and
/// its pages with it), which belongs to that push and not to whatever is measured next.
async fn settle(pid: u32) {
    for _ in 0..30 {
        let before = cpu_secs(pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cpu_secs(pid) - before <= 0.011 {
            return;
        }
    }
}

/// CPU time (user + system) of this process's children that have ended (curl), in seconds.
fn children_cpu_secs() -> f64 {
    stat_secs("self", 13)
}

/// Two CPU times of /proc/`pid`/stat added up, from the `skip`th field after the command name.
fn stat_secs(pid: &str, skip: usize) -> f64 {
    /// Linux reports times in clock ticks of 1/100 s (USER_HZ) on every architecture it runs
    /// this bench on.
    const TICKS_PER_SEC: f64 = 100.0;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces:
            // utime and stime are the 14th and 15th fields of the line, 12th and 13th here;
            // cutime and cstime (children waited for) the next two.
            let rest = s.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(skip);
            let user: f64 = f.next()?.parse().ok()?;
            let system: f64 = f.next()?.parse().ok()?;
            Some((user + system) / TICKS_PER_SEC)
        })
        .unwrap_or(0.0)
}

/// Resets a registry's peak RSS so that the next reading covers one scenario only. A request
/// first makes sure that wharf's token is verified: the first use of a token (and the first
/// after its minute in the cache) hashes the secret with argon2id, which takes 19 MiB for a
/// moment whatever the scenario, and the reference runs without authentication.
async fn reset_peak(t: &Target) {
    let _ = t.client.get(format!("{}/v2/", t.base)).send().await;
    let _ = std::fs::write(format!("/proc/{}/clear_refs", t.pid), "5");
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

/// Bytes `offset..offset + len` of the test blob as a request body, from memory: the client
/// then only writes to the socket and takes as little of the shared cores as it can (reading
/// the file chunk by chunk made it the slowest part of a push).
fn data_body(data: &Bytes, offset: u64, len: u64) -> reqwest::Body {
    reqwest::Body::from(data.slice(offset as usize..(offset + len) as usize))
}

/// Monolithic (POST + PUT) or chunked (PATCHes of `chunk` bytes, then PUT) push; MiB/s.
async fn push_blob(t: &Target, repo: &str, data: &Bytes, digest: &str, chunk: Option<u64>) -> f64 {
    let size = data.len() as u64;
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
                .body(data_body(data, 0, size))
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
                    .body(data_body(data, offset, len))
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

/// Pulls the blob with curl into /dev/null; MiB/s. curl, not this process's HTTP client: on two
/// cores the client shares the CPU with the server, and a heavier client hides the difference
/// between servers (reqwest here measured 1.2x where curl measured 1.75x).
async fn pull_blob(t: &Target, repo: &str, digest: &str, size: u64) -> f64 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sf",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
    ]);
    if let Some(a) = &t.auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd
        .arg(format!("{}/v2/{repo}/blobs/{digest}", t.base))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{} GET blob", t.label);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let n: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let secs: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::MAX);
    assert_eq!(n, size, "{} pulled {n} of {size} bytes", t.label);
    mib_per_s(size, Duration::from_secs_f64(secs))
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Pushes a blob with a POST and a PUT (the reference takes no monolithic POST); false when
/// the registry refused it.
async fn try_put_blob(t: &Target, repo: &str, data: Bytes) -> bool {
    let digest = sha(&data);
    let started = t
        .client
        .post(format!("{}/v2/{repo}/blobs/uploads/", t.base))
        .send()
        .await;
    let Ok(started) = started else {
        return false;
    };
    if started.status() != StatusCode::ACCEPTED {
        return false;
    }
    let loc = location(&t.base, &started);
    let r = t
        .client
        .put(with_digest(&loc, &digest))
        .body(data)
        .send()
        .await;
    matches!(r, Ok(r) if r.status() == StatusCode::CREATED)
}

async fn put_blob(t: &Target, repo: &str, data: Bytes) {
    assert!(try_put_blob(t, repo, data).await, "{} blob", t.label);
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

/// Runs `count` jobs, `width` at a time; returns jobs per second.
async fn concurrently<F, Fut>(count: usize, width: usize, job: F) -> f64
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
        .buffer_unordered(width)
        .collect::<Vec<_>>()
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

/// Pushes and pulls images `first..first + n` (new ones each run); images/s of each.
async fn small_images(t: &Arc<Target>, first: usize, n: usize) -> (f64, f64) {
    let tp = t.clone();
    let push = concurrently(n, 8, move |i| {
        let t = tp.clone();
        let i = first + i;
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
    let pull = concurrently(n, 8, move |i| {
        let t = tp.clone();
        let i = first + i;
        async move {
            let (c, l, _) = image(i);
            let repo = format!("small/app{}", i % 50);
            get_ok(&t, &format!("/v2/{repo}/manifests/v{i}")).await;
            for d in [sha(&c), sha(&l)] {
                get_ok(&t, &format!("/v2/{repo}/blobs/{d}")).await;
            }
        }
    })
    .await;
    (push, pull)
}

/// Median and 99th percentile, in milliseconds, of `n` sequential calls of `op`.
async fn timed<F, Fut>(n: usize, op: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        op(i).await;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    percentiles(&mut ms)
}

/// A GET that must answer 200 (manifests are asked for as OCI), body read and dropped.
async fn get_ok(t: &Target, path: &str) {
    let r = t
        .client
        .get(format!("{}{path}", t.base))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "{} {path}", t.label);
    let _ = r.bytes().await;
}

/// Median and 99th percentile of `n` sequential GETs of `path`, in milliseconds.
async fn latency(t: &Target, path: &str, n: usize) -> (f64, f64) {
    timed(n, |_| get_ok(t, path)).await
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
    let (p50, p99) = percentiles(&mut all);
    (all.len() as f64 / seconds as f64, p50, p99)
}

/// The median and 99th percentile of some figures (0 for none).
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |i: usize| {
        v.get(i.min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (at(v.len() / 2), at(v.len() * 99 / 100))
}

/// The median of some figures.
fn middle(v: &mut [f64]) -> f64 {
    percentiles(v).0
}

/// The median of `runs` figures from `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        v.push(f().await);
    }
    middle(&mut v)
}

/// How fast this machine hashes the file: `openssl dgst -sha256` (SHA instructions), MiB/s.
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

/// How fast one core of this machine seals with AES-256-GCM (openssl speed, 64 KiB blocks),
/// MiB/s: the least work encryption at rest adds to every byte pushed or pulled.
fn aes_limit() -> f64 {
    let out = Command::new("openssl")
        .args(["speed", "-elapsed", "-seconds", "2", "-bytes", "65536"])
        .args(["-evp", "aes-256-gcm"])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    // The result line: "AES-256-GCM  2398322.69k", in thousands of bytes per second.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("AES-256-GCM"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .map(|k| k * 1000.0 / 1048576.0)
        .expect("openssl speed prints the AES-256-GCM rate")
}

/// How fast this machine writes the file durably to the disk the registries use: a copy with
/// `dd conv=fdatasync`, MiB/s. A push that must be durable before it is acknowledged cannot be
/// faster than this.
fn durable_write_limit(path: &Path, size: u64, work: &Path) -> f64 {
    let dest = work.join("dd.bin");
    let started = Instant::now();
    let out = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", dest.display()))
        .args(["bs=1M", "conv=fdatasync", "status=none"])
        .output()
        .expect("dd");
    assert!(out.status.success());
    let figure = mib_per_s(size, started.elapsed());
    let _ = std::fs::remove_file(dest);
    figure
}

/// Collects rows: a figure for each registry, in the order of `targets` (wharf, reference).
#[derive(Default)]
struct Table {
    /// The columns' names, for the notes.
    columns: [String; 2],
    /// With the columns encryption on and off: this machine's AES-256-GCM rate, MiB/s.
    aes: Option<f64>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn add(&mut self, scenario: impl Into<String>, unit: &'static str, higher: bool, f: [f64; 2]) {
        self.rows.push(Row {
            scenario: scenario.into(),
            unit,
            wharf: f[0],
            reference: f[1],
            higher_is_better: higher,
        });
    }
}

/// Blob push (monolithic and 16 MiB chunks) and pull at every size, with peak memory.
async fn blob_rows(targets: &[Arc<Target>; 2], sizes: &Sizes, work: &Path, table: &mut Table) {
    for &size in &sizes.blobs {
        let mb = size >> 20;
        let path = work.join(format!("blob-{mb}.bin"));
        eprintln!("preparing a {mb} MiB test file...");
        let digest = make_file(&path, size);
        let data = Bytes::from(std::fs::read(&path).expect("read the bench file"));
        let disk = median(sizes.runs, || async {
            durable_write_limit(&path, size, work)
        })
        .await;
        // The hashing limit is measured in every run, just before its pushes: this shared
        // machine's speed drifts by a fifth within minutes, so a push is held against the limit
        // measured beside it.
        let mut hashes = Vec::with_capacity(sizes.runs);
        // Runs alternate between the registries, so that a slow spell of this shared machine
        // falls on both rather than on one.
        let repo = format!("bench/b{mb}");
        let mut runs = [[vec![], vec![], vec![]], [vec![], vec![], vec![]]];
        let mut f = [[0.0f64; 5]; 2];
        // CPU seconds each server and this client spent on the monolithic pushes, each
        // server and curl (the pull's client) on the pulls, and each server on the chunked
        // pushes.
        let mut cpu = [[0.0f64; 5]; 2];
        let me = std::process::id();
        for run in 0..sizes.runs {
            hashes.push(hashing_limit(&path, size));
            for (i, t) in targets.iter().enumerate() {
                eprintln!(
                    "{}: {mb} MiB blob push and pull, run {}...",
                    t.label,
                    run + 1
                );
                reset_peak(t).await;
                let (server, client) = (cpu_secs(t.pid), cpu_secs(me));
                runs[i][0].push(push_blob(t, &repo, &data, &digest, None).await);
                settle(t.pid).await;
                cpu[i][0] += cpu_secs(t.pid) - server;
                cpu[i][1] += cpu_secs(me) - client;
                f[i][3] = f[i][3].max(rss_kib(t.pid, "VmHWM:") / 1024.0);
                let chunk = Some(16 << 20);
                let server = cpu_secs(t.pid);
                runs[i][1].push(push_blob(t, &repo, &data, &digest, chunk).await);
                settle(t.pid).await;
                cpu[i][4] += cpu_secs(t.pid) - server;
                reset_peak(t).await;
                let (server, curl) = (cpu_secs(t.pid), children_cpu_secs());
                runs[i][2].push(pull_blob(t, &repo, &digest, size).await);
                cpu[i][2] += cpu_secs(t.pid) - server;
                cpu[i][3] += children_cpu_secs() - curl;
                f[i][4] = f[i][4].max(rss_kib(t.pid, "VmHWM:") / 1024.0);
            }
        }
        // The goals' ratios, each taken within one run (before the medians sort the runs).
        let goals =
            table.aes.map(|_| {
                let limits: Vec<f64> = hashes.iter().map(|h| h.min(disk)).collect();
                [
                ("monolithic push, encryption on / off", paired(&runs[0][0], &runs[1][0]), 0.9),
                ("pull, encryption on / off", paired(&runs[0][2], &runs[1][2]), 0.9),
                (
                    "16 MiB chunks / monolithic push, encryption on",
                    paired(&runs[0][1], &runs[0][0]),
                    0.9,
                ),
                (
                    "monolithic push, encryption on / the binding limit (the lower of the run's \
                     hashing limit and the durable-write limit)",
                    paired(&runs[0][0], &limits),
                    0.8,
                ),
            ]
            });
        let hash = middle(&mut hashes);
        for (i, r) in runs.iter_mut().enumerate() {
            for (k, v) in r.iter_mut().enumerate() {
                f[i][k] = middle(v);
            }
        }
        let col = |k: usize| [f[0][k], f[1][k]];
        table.add(
            format!("blob push {mb} MiB, monolithic"),
            "MiB/s",
            true,
            col(0),
        );
        table.add(
            format!("blob push {mb} MiB, 16 MiB chunks"),
            "MiB/s",
            true,
            col(1),
        );
        table.add(format!("blob pull {mb} MiB"), "MiB/s", true, col(2));
        // Per GiB moved, over all runs.
        let per_gib = (sizes.runs as u64 * size) as f64 / (1u64 << 30) as f64;
        let cpu_col = |k: usize| [cpu[0][k] / per_gib, cpu[1][k] / per_gib];
        table.add(
            format!("server CPU per GiB, {mb} MiB monolithic push"),
            "s",
            false,
            cpu_col(0),
        );
        table.add(
            format!("server CPU per GiB, {mb} MiB push in 16 MiB chunks"),
            "s",
            false,
            cpu_col(4),
        );
        table.add(
            format!("server CPU per GiB, {mb} MiB pull"),
            "s",
            false,
            cpu_col(2),
        );
        table.add(
            format!("peak RSS during {mb} MiB push"),
            "MiB",
            false,
            col(3),
        );
        table.add(
            format!("peak RSS during {mb} MiB pull"),
            "MiB",
            false,
            col(4),
        );
        // Server and client share this machine's cores: together they can move no more than
        // cores / (CPU seconds per MiB of both).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // MiB/s for column `i`, from the CPU of its server and client counted at those indexes.
        let bound = |i: usize, server: usize, client: usize| {
            cores * 1024.0 / ((cpu[i][server] + cpu[i][client]) / per_gib)
        };
        let cpu_limit = bound(0, 0, 1);
        table.notes.push(format!(
            "{mb} MiB: hashing limit (openssl dgst -sha256) {hash:.0} MiB/s, durable-write limit \
             (dd conv=fdatasync on the registries' disk) {disk:.0} MiB/s; wharf's monolithic push \
             reaches {:.0}% of the hashing limit and {:.0}% of the durable-write limit. A push \
             cost wharf {:.2} s and this client {:.2} s of CPU per GiB, so {cores:.0} cores could \
             carry at most {cpu_limit:.0} MiB/s ({:.0}% of the hashing limit) even with no disk.",
            f[0][0] / hash * 100.0,
            f[0][0] / disk * 100.0,
            cpu[0][0] / per_gib,
            cpu[0][1] / per_gib,
            cpu_limit / hash * 100.0
        ));
        let [a, b] = table.columns.clone();
        let (push, pull) = (
            [cpu_limit, bound(1, 0, 1)],
            [bound(0, 2, 3), bound(1, 2, 3)],
        );
        table.notes.push(format!(
            "{mb} MiB, what {cores:.0} cores can carry, server and client together: a pull cost \
             {a} {:.2} s and {b} {:.2} s of server CPU per GiB, and curl {:.2} s, so at most \
             {:.0} and {:.0} MiB/s (ratio {:.2}); a monolithic push, with this client, at most \
             {:.0} and {:.0} MiB/s (ratio {:.2}).",
            cpu[0][2] / per_gib,
            cpu[1][2] / per_gib,
            (cpu[0][3] + cpu[1][3]) / 2.0 / per_gib,
            pull[0],
            pull[1],
            pull[0] / pull[1],
            push[0],
            push[1],
            push[0] / push[1],
        ));
        if let Some(aes) = table.aes {
            // The least encryption can cost: every byte through AES once, added to what the
            // off column's server and client spent, and nothing else.
            let least = 1024.0 / aes;
            let best = |server: usize, client: usize| {
                let off = (cpu[1][server] + cpu[1][client]) / per_gib;
                off / (off + least)
            };
            table.notes.push(format!(
                "{mb} MiB, encryption's least cost: AES-256-GCM at this machine's rate ({aes:.0} \
                 MiB/s, openssl, one core) takes {least:.2} s of CPU per GiB. Added to the \
                 encryption-off column's server and client CPU, and nothing else, the cores \
                 would allow at most {:.2} of its rate on a pull and {:.2} on a monolithic \
                 push; measured: {:.2} and {:.2}.",
                best(2, 3),
                best(0, 1),
                f[0][2] / f[1][2],
                f[0][0] / f[1][0],
            ));
        }
        if let Some(goals) = goals {
            let lines: Vec<String> = goals
                .iter()
                .map(|(what, (mid, low, high), goal)| {
                    let met = if *mid >= *goal { "met" } else { "not met" };
                    format!("- {what}: {mid:.2} (runs {low:.2}-{high:.2}); goal {goal:.2}: {met}")
                })
                .collect();
            table.notes.push(format!(
                "{mb} MiB, the goals, each the median of the runs' own ratios (a run's figures \
                 are taken seconds apart, so a slow spell of this shared machine falls on both \
                 sides of a ratio):\n\n{}",
                lines.join("\n")
            ));
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The median, lowest and highest of the ratios `a[r] / b[r]` of figures taken in the same run.
fn paired(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(0.0, f64::max);
    (middle(&mut ratios), low, high)
}

async fn small_image_rows(targets: &[Arc<Target>; 2], sizes: &Sizes, table: &mut Table) {
    let n = sizes.images;
    // Medians of the runs, which alternate between the registries (as the blob rows do).
    let mut runs = [[vec![], vec![]], [vec![], vec![]]];
    for run in 0..sizes.runs {
        for (i, t) in targets.iter().enumerate() {
            eprintln!("{}: {n} small images, run {}...", t.label, run + 1);
            let (push, pull) = small_images(t, run * n, n).await;
            runs[i][0].push(push);
            runs[i][1].push(pull);
        }
    }
    let mut f = [(0.0, 0.0); 2];
    for (i, r) in runs.iter_mut().enumerate() {
        f[i] = (middle(&mut r[0]), middle(&mut r[1]));
    }
    table.add(
        format!("small-image push, {n} images, concurrency 8"),
        "images/s",
        true,
        [f[0].0, f[1].0],
    );
    table.add(
        format!("small-image pull, {n} images, concurrency 8"),
        "images/s",
        true,
        [f[0].1, f[1].1],
    );
}

/// Manifest GET (wrk) and HEAD under 32 connections, medians of `runs`, and peak memory.
async fn manifest_rows(targets: &[Arc<Target>; 2], sizes: &Sizes, table: &mut Table) {
    let mut f = [[0.0; 6]; 2];
    let mut gets = [vec![], vec![]];
    let mut heads = [vec![], vec![]];
    for t in targets {
        let (c, l, m) = image(0);
        put_blob(t, "load/app", c).await;
        put_blob(t, "load/app", l).await;
        put_manifest(t, "load/app", "v0", m).await;
        reset_peak(t).await;
    }
    // Runs alternate between the registries (see blob_rows).
    for run in 0..sizes.runs {
        for (i, t) in targets.iter().enumerate() {
            eprintln!(
                "{}: manifest GET/HEAD under load, run {}...",
                t.label,
                run + 1
            );
            let url = format!("{}/v2/load/app/manifests/v0", t.base);
            gets[i].push(wrk(t, "GET", &url, sizes.wrk_seconds));
            heads[i].push(load(t, reqwest::Method::HEAD, &url, sizes.wrk_seconds).await);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        f[i][5] = rss_kib(t.pid, "VmHWM:") / 1024.0;
        // The run with the median rate gives the latencies, so that they belong together.
        gets[i].sort_by(|a, b| a.0.total_cmp(&b.0));
        heads[i].sort_by(|a, b| a.0.total_cmp(&b.0));
        let (g, h) = (gets[i][gets[i].len() / 2], heads[i][heads[i].len() / 2]);
        f[i][..5].copy_from_slice(&[g.0, g.1, g.2, h.0, h.2]);
    }
    let col = |k: usize| [f[0][k], f[1][k]];
    table.add("manifest GET, wrk 32 connections", "req/s", true, col(0));
    table.add("manifest GET p50", "ms", false, col(1));
    table.add("manifest GET p99", "ms", false, col(2));
    table.add("manifest HEAD, 32 connections", "req/s", true, col(3));
    table.add("manifest HEAD p99", "ms", false, col(4));
    table.add("peak RSS under load", "MiB", false, col(5));
}

/// Tag list of one repository with many tags, and a catalog page among many repositories.
async fn listing_rows(targets: &[Arc<Target>; 2], sizes: &Sizes, table: &mut Table) {
    let mut f = [[0.0; 2]; 2];
    for (i, t) in targets.iter().enumerate() {
        eprintln!(
            "{}: {} tags and {} repositories...",
            t.label, sizes.tags, sizes.repos
        );
        let (c, l, m) = image(0);
        put_blob(t, "many/tags", c).await;
        put_blob(t, "many/tags", l).await;
        let tp = t.clone();
        concurrently(sizes.tags, 16, move |i| {
            let (t, m) = (tp.clone(), m.clone());
            async move { put_manifest(&t, "many/tags", &format!("t{i:06}"), m).await }
        })
        .await;
        let tp = t.clone();
        concurrently(sizes.repos, 16, move |i| {
            let t = tp.clone();
            async move { put_blob(&t, &format!("many/repo{i:06}"), Bytes::from_static(b"r")).await }
        })
        .await;
        f[i][0] = latency(t, "/v2/many/tags/tags/list", 20).await.0;
        f[i][1] = latency(t, "/v2/_catalog?n=1000", 20).await.0;
    }
    table.add(
        format!("tag list of {} tags, p50", sizes.tags),
        "ms",
        false,
        [f[0][0], f[1][0]],
    );
    table.add(
        format!(
            "catalog page of 1000 (of {}+ repositories), p50",
            sizes.repos
        ),
        "ms",
        false,
        [f[0][1], f[1][1]],
    );
}

/// A distinct manifest per `i`, over one config and one layer, in one of 100 repositories.
fn growth_manifest(i: usize) -> (String, Bytes) {
    let (c, l, _) = image(0);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&c), "size": c.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&l), "size": l.len() }],
        "annotations": { "n": i.to_string() },
    }))
    .expect("manifest");
    (format!("growth/r{:02}", i % 100), Bytes::from(m))
}

/// The same operations timed with the registry holding `growth[0]` and then `growth[1]`
/// manifests: how each registry's cost grows with its size.
async fn growth_rows(targets: &[Arc<Target>; 2], sizes: &Sizes, table: &mut Table) {
    let levels = sizes.growth;
    // [target][level] = (GET p50, PUT p50, load rate)
    let mut f = [[(0.0, 0.0, 0.0); 2]; 2];
    for (i, t) in targets.iter().enumerate() {
        let (c, l, _) = image(0);
        for r in 0..100 {
            put_blob(t, &format!("growth/r{r:02}"), c.clone()).await;
            put_blob(t, &format!("growth/r{r:02}"), l.clone()).await;
        }
        let mut have = 0;
        for (k, &level) in levels.iter().enumerate() {
            eprintln!("{}: growing to {level} manifests...", t.label);
            let tp = t.clone();
            let rate = concurrently(level - have, 32, move |j| {
                let t = tp.clone();
                async move {
                    let n = have + j;
                    let (repo, m) = growth_manifest(n);
                    put_manifest(&t, &repo, &format!("t{n}"), m).await
                }
            })
            .await;
            have = level;
            // Tags spread over the whole registry, the same ones at both sizes.
            let get = timed(300, |j| {
                let n = (j * 7919) % levels[0];
                let (repo, _) = growth_manifest(n);
                async move { get_ok(t, &format!("/v2/{repo}/manifests/t{n}")).await }
            })
            .await
            .0;
            let put = timed(100, |j| {
                let (repo, m) = growth_manifest(levels[1] + k * 1000 + j);
                async move { put_manifest(t, &repo, &format!("p{k}-{j}"), m).await }
            })
            .await
            .0;
            f[i][k] = (get, put, rate);
        }
    }
    let [a, b] = levels;
    for (k, level) in levels.iter().enumerate() {
        table.add(
            format!("manifest GET p50 at {level} manifests"),
            "ms",
            false,
            [f[0][k].0, f[1][k].0],
        );
        table.add(
            format!("manifest PUT p50 at {level} manifests"),
            "ms",
            false,
            [f[0][k].1, f[1][k].1],
        );
    }
    table.add(
        format!("manifest GET p50 growth, {a} to {b} manifests"),
        "x",
        false,
        [f[0][1].0 / f[0][0].0, f[1][1].0 / f[1][0].0],
    );
    table.add(
        format!("manifest PUT p50 growth, {a} to {b} manifests"),
        "x",
        false,
        [f[0][1].1 / f[0][0].1, f[1][1].1 / f[1][0].1],
    );
    table.add(
        format!("manifest push rate from {a} to {b}, concurrency 32"),
        "req/s",
        true,
        [f[0][1].2, f[1][1].2],
    );
}

fn machine() -> (usize, f64) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1048576.0;
    (cores, mem)
}

const GROUPS: [&str; 6] = ["blob", "small", "manifest", "listing", "growth", "gc"];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let only: Vec<String> = arg(&args, "--only")
        .map(|o| o.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| GROUPS.iter().map(|g| g.to_string()).collect());
    if let Some(bad) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        eprintln!(
            "wharf-bench: unknown scenario group {bad:?}; the groups are {}",
            GROUPS.join(", ")
        );
        std::process::exit(2);
    }
    let sizes = if full {
        Sizes {
            blobs: vec![256 << 20, 1 << 30],
            images: 1000,
            tags: 10_000,
            repos: 10_000,
            wrk_seconds: 10,
            growth: [1_000, 100_000],
            runs: 3,
            gc: [10_000, 100_000],
            gc_pushes: 1000,
        }
    } else {
        Sizes {
            blobs: vec![256 << 20],
            images: 300,
            tags: 2_000,
            repos: 2_000,
            wrk_seconds: 3,
            growth: [1_000, 5_000],
            runs: 3,
            gc: [2_000, 10_000],
            gc_pushes: 300,
        }
    };
    // More runs where the two columns differ by less than this shared machine's spells do.
    let sizes = match arg(&args, "--runs").map(|r| r.parse::<usize>()) {
        Some(Ok(runs)) if runs > 0 => Sizes { runs, ..sizes },
        Some(_) => {
            eprintln!("--runs takes a number of runs, 1 or more");
            std::process::exit(2);
        }
        None => sizes,
    };
    let wharf_auth = arg(&args, "--wharf-auth");
    let reference_auth = arg(&args, "--reference-auth");
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
            client: client(reference_auth.as_deref()),
            pid: required(&args, "--reference-pid").parse().expect("pid"),
            auth: reference_auth.clone(),
        }),
    ];
    // The two columns' names and what the reference is: by default wharf against CNCF
    // distribution; `bench/run --encryption` puts wharf with encryption off in its place.
    let columns: Vec<String> = arg(&args, "--columns")
        .map(|c| c.split(',').map(str::to_string).collect())
        .filter(|c: &Vec<String>| c.len() == 2)
        .unwrap_or_else(|| vec!["wharf".to_string(), "reference".to_string()]);
    let reference_name = arg(&args, "--reference-name").unwrap_or_else(|| {
        "CNCF distribution (Debian docker-registry 2.8.2), filesystem storage".to_string()
    });
    let work = PathBuf::from(required(&args, "--work"));
    let out_path = PathBuf::from(required(&args, "--out"));
    let commit = arg(&args, "--commit").unwrap_or_default();

    let mut table = Table {
        columns: [columns[0].clone(), columns[1].clone()],
        aes: args
            .iter()
            .any(|a| a == "--encryption-bound")
            .then(aes_limit),
        ..Table::default()
    };
    // Before any request: the servers as they start.
    let rss = |k: usize| rss_kib(targets[k].pid, "VmRSS:") / 1024.0;
    table.add(
        "resident memory idle at start",
        "MiB",
        false,
        [rss(0), rss(1)],
    );
    let wanted = |g: &str| only.iter().any(|o| o == g);
    if wanted("blob") {
        blob_rows(&targets, &sizes, &work, &mut table).await;
    }
    if wanted("small") {
        small_image_rows(&targets, &sizes, &mut table).await;
    }
    if wanted("manifest") {
        manifest_rows(&targets, &sizes, &mut table).await;
    }
    if wanted("listing") {
        listing_rows(&targets, &sizes, &mut table).await;
    }
    if wanted("growth") {
        growth_rows(&targets, &sizes, &mut table).await;
    }
    if wanted("gc") {
        // wharf collects through its API; the reference with its offline command, or, where
        // the reference is another wharf, through that one's API.
        let wharf = arg(&args, "--wharf-admin-key").map(|key| gc::Collect::Api { key });
        let reference = match (
            arg(&args, "--reference-config"),
            arg(&args, "--reference-admin-key"),
        ) {
            (Some(config), _) => Some(gc::Collect::Offline {
                config: PathBuf::from(config),
            }),
            (None, Some(key)) => Some(gc::Collect::Api { key }),
            (None, None) => None,
        };
        match (wharf, reference) {
            (Some(w), Some(r)) => {
                gc::gc_rows(&targets, &[w, r], sizes.gc, sizes.gc_pushes, &mut table).await
            }
            _ => eprintln!(
                "wharf-bench: the gc rows need --wharf-admin-key and --reference-config (or \
                 --reference-admin-key); skipped"
            ),
        }
    }
    table.add(
        "resident memory after the run",
        "MiB",
        false,
        [rss(0), rss(1)],
    );

    let (cores, mem) = machine();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# wharf benchmark results\n");
    let _ = writeln!(
        md,
        "- date: {date}\n- machine: {cores} cores, {mem:.0} GiB\n- wharf commit: {commit}\n\
         - mode: {}{}\n- reference: {reference_name}\n- throughput and load rows: median of {} \
         runs\n",
        if full { "full" } else { "quick" },
        if only.len() < GROUPS.len() {
            format!(" (only {})", only.join(", "))
        } else {
            String::new()
        },
        sizes.runs
    );
    let _ = writeln!(
        md,
        "Ratio: how many times better the {} column is (above 1: it is ahead).\n",
        columns[0]
    );
    let _ = writeln!(
        md,
        "| scenario | unit | {} | {} | ratio |\n|---|---|---:|---:|---:|",
        columns[0], columns[1]
    );
    for r in &table.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            r.scenario,
            r.unit,
            r.wharf,
            r.reference,
            r.ratio()
        );
    }
    for n in &table.notes {
        let _ = writeln!(md, "\n{n}");
    }
    println!("{md}");
    std::fs::write(&out_path, md).expect("write results");
}
