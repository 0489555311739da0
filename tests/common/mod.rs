//! Shared harness of the end-to-end tests: starts the real `wharf` binary on a free loopback
//! port, on SQLite or on a fresh PostgreSQL database, and talks to it over HTTP.
#![allow(dead_code)]

pub mod images;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL for metadata and an S3 server (moto, on loopback) for content: the scale-out
    /// configuration.
    PostgresS3,
}

/// Generates one test per backend for each named `async fn name(Backend)` in the module.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Postgres).await })*
        }
    };
}

/// Generates one test per configuration (SQLite + disk, PostgreSQL + disk, PostgreSQL + S3)
/// for each named `async fn name(Backend)` in the module.
#[macro_export]
macro_rules! on_every_configuration {
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!($($name),*);
        mod postgres_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::PostgresS3).await })*
        }
    };
}

/// An S3 server on loopback (moto), one per test process, ended with it.
pub struct S3Server {
    pub endpoint: String,
    port: u16,
    child: Child,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_moto(port: u16) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl only sets this child's parent-death signal; it runs after fork, before
    // exec, and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .expect("moto_server is installed (scripts/test installs it)")
}

impl S3Server {
    /// The process's S3 server, started on first use.
    pub fn shared() -> &'static S3Server {
        static SERVER: std::sync::OnceLock<S3Server> = std::sync::OnceLock::new();
        SERVER.get_or_init(S3Server::start)
    }

    fn start() -> S3Server {
        // The parent-death signal follows the thread that spawned the child, so a thread that
        // lives as long as the test process spawns it (a test's thread ends with its test).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let port = free_port();
            let _ = tx.send((port, spawn_moto(port)));
            loop {
                std::thread::park();
            }
        });
        let (port, child) = rx.recv().expect("moto_server started");
        S3Server::ready(port, child)
    }

    /// An S3 server of the calling test's own, ended with it (or by [`S3Server::stop`]).
    pub fn private() -> S3Server {
        let port = free_port();
        S3Server::ready(port, spawn_moto(port))
    }

    fn ready(port: u16, child: Child) -> S3Server {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child,
        }
    }

    /// Stops the server as if it crashed (its buckets are in memory and gone with it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, empty.
    pub fn start_again(&mut self) {
        let fresh = S3Server::ready(self.port, spawn_moto(self.port));
        *self = fresh;
    }

    /// Creates an empty bucket and returns its name.
    pub async fn bucket(&self) -> String {
        let name = format!("wharf-{}", uuid::Uuid::new_v4().simple());
        // The server accepts connections a moment before it answers them.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::new()
                .put(format!("{}/{name}", self.endpoint))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return name,
                other => assert!(Instant::now() < deadline, "create bucket: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A PostgreSQL server of the calling test's own (initdb into a temporary directory), for
/// tests that stop the database; ended when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(|v| v.ok())
                    .map(|v| v.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .expect(
                "PostgreSQL server binaries in /usr/lib/postgresql (scripts/test installs them)",
            );
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = PrivatePostgres {
            port: free_port(),
            bin,
            dir,
        };
        if unsafe { libc::geteuid() } == 0 {
            // initdb and postgres refuse to run as root: the cluster belongs to `postgres`.
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(pg.dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        pg.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-D", &pg.data()],
        );
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program as the cluster's owner.
    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/wharf", self.port)
    }

    /// Stops the server at once, as a crash would.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The owner key every test server is bootstrapped with (through WHARF_BOOTSTRAP_KEY).
pub const OWNER_KEY: &str = "wak_test0owner0key0000000000000000000000000000";

pub fn postgres_base() -> String {
    std::env::var("WHARF_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A running wharf with its own data directory (and database).
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    database_url: Option<String>,
    /// Another node's data directory, shared with it (as on shared storage).
    shared_data: Option<PathBuf>,
    /// The first node drops the test database when it goes; a second node leaves it.
    owns_database: bool,
    extra_args: Vec<String>,
    bootstrap_key: Option<String>,
    /// Sends the default registry's full-access token (`tester`) with every request.
    pub client: Client,
    /// Sends no credentials.
    pub anon: Client,
    /// Name and secret of the `tester` token, when the default registry exists.
    pub tester: Option<(String, String)>,
}

/// Every right on every repository, and the catalog.
pub const ALL_SCOPES: fn() -> serde_json::Value = || {
    serde_json::json!([
        { "type": "registry" },
        { "type": "repository", "path": "*", "actions": ["pull", "push", "delete"] },
    ])
};

/// An HTTP client that sends `name:secret` as Basic credentials with every request.
pub fn basic_client(name: &str, secret: &str) -> Client {
    basic_client_builder(name, secret).build().expect("client")
}

/// The same, opening a new connection for every request: for servers whose idle timeout is so
/// short that a pooled connection may be closed just as a request is sent on it.
pub fn basic_client_without_reuse(name: &str, secret: &str) -> Client {
    basic_client_builder(name, secret)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn basic_client_builder(name: &str, secret: &str) -> reqwest::ClientBuilder {
    use base64::Engine;
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"))
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&value).expect("header"),
    );
    Client::builder().default_headers(headers)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Server::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, extra_args: &[&str]) -> Server {
        Server::start_opts(backend, extra_args, Some(OWNER_KEY)).await
    }

    /// `bootstrap_key: None` lets the server generate and print its own owner key.
    pub async fn start_opts(
        backend: Backend,
        extra_args: &[&str],
        bootstrap_key: Option<&str>,
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres | Backend::PostgresS3 => Some(format!(
                "{}/wharf_e2e_{}",
                postgres_base(),
                uuid::Uuid::new_v4().simple()
            )),
        };
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if backend == Backend::PostgresS3 {
            let s3 = S3Server::shared();
            let bucket = s3.bucket().await;
            extra_args.extend([
                "--storage".to_string(),
                format!("s3://{bucket}/wharf"),
                "--s3-endpoint".to_string(),
                s3.endpoint.clone(),
            ]);
        }
        let port = free_port();
        let mut server = Server {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            database_url,
            shared_data: None,
            owns_database: true,
            extra_args,
            bootstrap_key: bootstrap_key.map(String::from),
            client: Client::new(),
            anon: Client::new(),
            tester: None,
        };
        server.spawn().await;
        if bootstrap_key.is_some() {
            if let Some((name, secret)) =
                server.create_token("default", "tester", ALL_SCOPES()).await
            {
                server.client = basic_client(&name, &secret);
                server.tester = Some((name, secret));
            }
        }
        server
    }

    /// Creates a token through the API as the owner; `None` if the registry does not exist.
    pub async fn create_token(
        &self,
        registry: &str,
        name: &str,
        scopes: serde_json::Value,
    ) -> Option<(String, String)> {
        let r = self
            .anon
            .post(self.url(&format!("/api/v1/registries/{registry}/tokens")))
            .bearer_auth(OWNER_KEY)
            .json(&serde_json::json!({ "name": name, "scopes": scopes }))
            .send()
            .await
            .expect("create token");
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
        let body: serde_json::Value = r.json().await.expect("token json");
        Some((
            name.to_string(),
            body["secret"].as_str().expect("secret").to_string(),
        ))
    }

    /// The PostgreSQL database's URL; `None` on SQLite (`wharf.db` in the data directory).
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// The command-line arguments the next start uses, past the data directory and database.
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// The bucket this server stores in, as a client of its own; `None` when it stores on disk.
    fn s3_bucket(&self) -> Option<std::sync::Arc<dyn object_store::ObjectStore>> {
        let arg = |name: &str| {
            let at = self.extra_args.iter().position(|a| a == name)?;
            self.extra_args.get(at + 1).cloned()
        };
        let (storage, endpoint) = (arg("--storage")?, arg("--s3-endpoint")?);
        let rest = storage.trim_start_matches("s3://");
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("wharf-test")
            .with_secret_access_key("wharf-test")
            .build()
            .expect("S3 client");
        Some(std::sync::Arc::new(store))
    }

    /// Every object this server keeps in S3 (name, bytes); empty when it stores on disk.
    pub async fn s3_objects(&self) -> Vec<(String, Vec<u8>)> {
        use futures_util::TryStreamExt;
        let Some(bucket) = self.s3_bucket() else {
            return Vec::new();
        };
        let listed: Vec<_> = bucket.list(None).try_collect().await.expect("list bucket");
        let mut objects = Vec::new();
        for object in listed {
            let got = bucket.get(&object.location).await.expect("get object");
            let bytes = got.bytes().await.expect("object bytes");
            objects.push((object.location.to_string(), bytes.to_vec()));
        }
        objects
    }

    /// Replaces an object this server keeps in S3 (to tamper with it).
    pub async fn put_s3_object(&self, key: &str, bytes: Vec<u8>) {
        let bucket = self.s3_bucket().expect("S3 storage");
        bucket
            .put(&object_store::path::Path::from(key), bytes.into())
            .await
            .expect("put object");
    }

    /// The PostgreSQL database's contents as `pg_dump` writes them; empty on SQLite.
    pub fn pg_dump(&self) -> String {
        let Some(url) = &self.database_url else {
            return String::new();
        };
        let out = Command::new("pg_dump")
            .args(["--data-only", url])
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.shared_data {
            Some(d) => d.clone(),
            None => self.dir.path().join("data"),
        }
    }

    /// A second node sharing this one's database and content, on a port of its own, using the
    /// same `tester` token.
    pub async fn second_node(&self) -> Server {
        self.node_on(self.database_url.clone(), false).await
    }

    /// A node on this one's content and the given database (`None`: the SQLite database in
    /// this one's data directory); with `owns_database`, it drops the database when it goes.
    pub async fn node_on(&self, database_url: Option<String>, owns_database: bool) -> Server {
        let port = free_port();
        let mut node = Server {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("temp dir"),
            database_url,
            shared_data: Some(self.data_dir()),
            owns_database,
            extra_args: self.extra_args.clone(),
            bootstrap_key: self.bootstrap_key.clone(),
            client: self.client.clone(),
            anon: Client::new(),
            tester: self.tester.clone(),
        };
        node.spawn().await;
        node
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wharf.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .env("WHARF_LOG", "info,wharf_server=debug")
            // The test S3 server takes any credentials.
            .env("AWS_ACCESS_KEY_ID", "wharf-test")
            .env("AWS_SECRET_ACCESS_KEY", "wharf-test")
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        match &self.bootstrap_key {
            Some(k) => cmd.env("WHARF_BOOTSTRAP_KEY", k),
            None => cmd.env_remove("WHARF_BOOTSTRAP_KEY"),
        };
        self.child = Some(cmd.spawn().expect("start wharf"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("wharf exited with {status} during start:\n{}", self.log());
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "wharf not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server as an operator would (SIGTERM), waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Kills the server without warning (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, data directory and database.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub async fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, method: Method, path: &str) -> Response {
        self.client
            .request(method, self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Pushes a blob in a POST + PUT pair and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let loc = self.start_upload(repo).await;
        let r = self
            .client
            .put(self.url(&format!("{loc}?digest={digest}")))
            .body(data.to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    /// Starts an upload session and returns its Location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        header(&r, "location")
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(url) = self.database_url.as_ref().filter(|_| self.owns_database) {
            // Best effort: the database is created per test and useless afterwards.
            let (base, name) = url.rsplit_once('/').unwrap_or((url, ""));
            let _ = Command::new("psql")
                .arg(format!("{base}/postgres"))
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs the `wharf` CLI against this server with `key`, in an empty HOME.
pub fn cli(s: &Server, key: Option<&str>, args: &[&str]) -> std::process::Output {
    let home = s.dir.path().join("cli-home");
    std::fs::create_dir_all(&home).expect("cli home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(args)
        .env("WHARF_URL", &s.base)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null());
    match key {
        Some(k) => cmd.env("WHARF_KEY", k),
        None => cmd.env_remove("WHARF_KEY"),
    };
    cmd.output().expect("run wharf cli")
}

/// Every file below `dir` with its bytes (what a test searches for a secret left in the clear).
pub fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

/// Runs the CLI with `input` on standard input (secrets are read from there).
pub fn cli_with_input(s: &Server, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let home = s.dir.path().join("cli-home");
    std::fs::create_dir_all(&home).expect("cli home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("WHARF_URL", &s.base)
        .env("WHARF_KEY", OWNER_KEY)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wharf cli");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("wharf cli")
}

/// Runs the CLI and expects success; returns standard output.
pub fn cli_ok(s: &Server, args: &[&str]) -> String {
    let out = cli(s, Some(OWNER_KEY), args);
    assert!(
        out.status.success(),
        "wharf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI and expects failure with exactly one line on standard error; returns it.
pub fn cli_err(s: &Server, key: Option<&str>, args: &[&str]) -> String {
    let out = cli(s, key, args);
    assert!(!out.status.success(), "wharf {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("wharf: error: "), "{err}");
    err
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The `code` of the first error in an OCI error body.
pub async fn error_code(r: Response) -> String {
    let body: serde_json::Value = r.json().await.expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

/// Asserts status and OCI error code of a response.
pub async fn expect_error(r: Response, status: u16, code: &str) {
    assert_eq!(r.status().as_u16(), status, "status of {}", r.url());
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(error_code(r).await, code);
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pseudo_random(&mut out, seed.max(1));
    out
}

pub fn fill_pseudo_random(buf: &mut [u8], mut state: u64) -> u64 {
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    state
}

pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Peak resident memory of a running process in KiB (VmHWM, which exec resets, so it is the
/// program's own and not its parent's); `None` once the process is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident memory of a running process in KiB; `None` once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
