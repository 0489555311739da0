//! wharf's HTTP side: the `/v2/` registry protocol and health endpoints, and the services they
//! call. Data flows one way: HTTP -> service -> (metadata store, content store).

mod api;
mod cache;
mod console;
mod error;
mod gc;
pub use gc::schedule_gc;
pub use replication::run_worker as run_replication;
pub use scanning::run_workers as run_scan_workers;
pub use vulndb::run_schedule as schedule_vulndb_imports;
pub mod jwt;
mod keyring;
mod locks;
mod metrics;
mod rate;
pub mod replication;
mod route;
pub mod scanning;
mod serve;
mod service;
mod token_endpoint;
pub mod upstream;
mod v2;
pub mod vulndb;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use wharf_meta::Meta;
use wharf_store::BlobStore;

pub use api::openapi;
pub use api::vulndb::{status as vulndb_status, VulnDbView};
pub use error::ApiError;
pub use keyring::{ContentKeys, KeySource, KeyStatus, RotateError};
pub use metrics::install as install_metrics;
pub use serve::serve;

/// How the server behaves, from its configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether blobs and manifests may be deleted through `/v2/`.
    pub delete_enabled: bool,
    /// Registries answer on `<name>.<base_domain>`.
    pub base_domain: String,
    /// The registry that answers on any other host name, if any.
    pub default_registry: Option<String>,
    /// The locations a registry may be created in.
    pub locations: Vec<String>,
    /// Shortest lifetime a token may be created with, in seconds (an hour; tests lower it).
    pub min_token_lifetime_secs: i64,
    /// The address clients reach wharf at, when it is not the one it listens on (a proxy).
    pub public_url: Option<PublicUrl>,
    /// The address wharf listens on.
    pub listen: std::net::SocketAddr,
    /// Longest wait for the next bytes of a request body before the request fails.
    pub idle_timeout: std::time::Duration,
    /// Upload sessions a repository may have open at once.
    pub max_upload_sessions: i64,
    /// Upload sessions untouched for this long are removed with their bytes.
    pub upload_max_age: std::time::Duration,
    /// Requests per second each token may make where its registry sets no limit; 0: no limit.
    pub rate_limit: u32,
    /// Where content is stored, as shown to operators: `file` or `s3://bucket/prefix`.
    pub storage: String,
    /// Garbage collection leaves alone what was pushed, uploaded or mounted this recently.
    pub gc_grace: std::time::Duration,
    /// How often the instance's collection frees what deleted registries and repositories
    /// left behind.
    pub gc_instance_interval: std::time::Duration,
    /// Tests only: a collection waits between marking and sweeping while this file exists.
    pub gc_pause_file: Option<std::path::PathBuf>,
    /// How often a running collection tells the database that its node is alive; a run not
    /// heard of for twelve of these is taken for stopped (tests shorten it).
    pub gc_heartbeat: std::time::Duration,
    /// Scans this node runs at once; 0 leaves scanning to other nodes.
    pub scan_workers: usize,
    /// A scan still reading layers after this long makes its image `Unknown`.
    pub scan_timeout: std::time::Duration,
    /// Tests only: no scan starts while this file exists.
    pub scan_pause_file: Option<std::path::PathBuf>,
    /// A pull-through cache's upstream that sends nothing for this long fails the pull.
    pub upstream_timeout: std::time::Duration,
    /// The wait before a failed replication's first retry; it doubles with each attempt.
    pub replication_backoff: std::time::Duration,
    /// How often each registry's storage is sampled for the chart of storage over time.
    pub storage_sample_interval: std::time::Duration,
    /// Where scheduled imports read vulnerability data from; none: imports are left to
    /// `wharf vulndb import`.
    pub vulndb_sources: Vec<vulndb::Source>,
    /// How often the configured sources are imported.
    pub vulndb_interval: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delete_enabled: true,
            base_domain: "localhost".to_string(),
            default_registry: Some("default".to_string()),
            locations: vec!["default".to_string()],
            min_token_lifetime_secs: 3600,
            public_url: None,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 5000)),
            idle_timeout: std::time::Duration::from_secs(60),
            max_upload_sessions: 1000,
            upload_max_age: std::time::Duration::from_secs(24 * 3600),
            rate_limit: 0,
            storage: "file".to_string(),
            gc_grace: std::time::Duration::from_secs(3600),
            gc_instance_interval: std::time::Duration::from_secs(3600),
            gc_pause_file: None,
            gc_heartbeat: std::time::Duration::from_secs(5),
            scan_workers: 2,
            scan_timeout: std::time::Duration::from_secs(600),
            upstream_timeout: std::time::Duration::from_secs(30),
            replication_backoff: std::time::Duration::from_secs(10),
            storage_sample_interval: std::time::Duration::from_secs(3600),
            scan_pause_file: None,
            vulndb_sources: Vec::new(),
            vulndb_interval: std::time::Duration::from_secs(6 * 3600),
        }
    }
}

/// A `--public-url`: scheme, host and port, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub https: bool,
    pub host: String,
    pub port: Option<u16>,
}

impl PublicUrl {
    /// Parses `http(s)://host[:port]` (a trailing `/` allowed); anything else is refused with
    /// the reason.
    pub fn parse(url: &str) -> Result<PublicUrl, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "public URL {url:?} must start with http:// or https://"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "public URL {url:?} must be only scheme, host and port (no path or user)"
            ));
        }
        let (host, port) = v2::split_host(rest);
        let port = match port {
            None if rest.ends_with(':') => {
                return Err(format!("public URL {url:?} has an empty port"))
            }
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("public URL {url:?}: port {p:?} is not 1-65535"))?,
            ),
        };
        let valid_host = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !valid_host {
            return Err(format!(
                "public URL {url:?}: {host:?} is not a host name or address"
            ));
        }
        Ok(PublicUrl {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl Settings {
    /// Where clients reach `registry`, as `host[:port]` for `docker login` and image
    /// references: the public URL where one is set; else the listen address for the default
    /// registry (a `<name>.localhost` name does not resolve everywhere) and
    /// `<name>.<base domain>` with the listen port for the others. `request_host` is the Host
    /// the caller used, taken when wharf listens on every address (no one address to print).
    pub fn registry_address(&self, registry: &str, request_host: Option<&str>) -> String {
        let is_default = self.default_registry.as_deref() == Some(registry);
        let with_port = |host: &str, port: Option<u16>| match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let bracketed = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        match &self.public_url {
            Some(url) if is_default => with_port(&url.host, url.port),
            Some(url) => with_port(&format!("{registry}.{}", self.base_domain), url.port),
            None if is_default => match request_host {
                Some(host) if self.listen.ip().is_unspecified() => host.to_string(),
                _ => format!("{}:{}", bracketed(self.listen.ip()), self.listen.port()),
            },
            None => format!("{registry}.{}:{}", self.base_domain, self.listen.port()),
        }
    }

    /// The token endpoint clients are sent to by a 401 from `registry`: on the same host the
    /// client used (the endpoint tells registries apart by Host), with the public URL's scheme
    /// and host where one is set.
    pub(crate) fn realm(&self, registry: &str, request_host: &str) -> String {
        match &self.public_url {
            Some(url) => {
                let scheme = if url.https { "https" } else { "http" };
                format!(
                    "{scheme}://{}/auth/token",
                    self.registry_address(registry, None)
                )
            }
            None => format!("http://{request_host}/auth/token"),
        }
    }
}

/// Successful checks of (token id, presented secret), kept briefly so that the slow hash is
/// not recomputed on every request.
type VerifiedSecrets =
    std::sync::Mutex<std::collections::HashMap<(i64, [u8; 32]), std::time::Instant>>;

type UpstreamLogins =
    std::sync::Mutex<std::collections::HashMap<String, (Option<String>, std::time::Instant)>>;

/// A registry's content store and sealing (its own, where it has a key of its own).
pub(crate) type Scoped = (Arc<dyn BlobStore>, wharf_store::seal::Sealing);

/// What every `/v2/` request needs of its registry (cached by name).
#[derive(Debug, Clone)]
pub(crate) struct RegistryRef {
    pub id: i64,
    pub rate_limit: Option<i64>,
    pub read_only: bool,
    pub key_id: Option<String>,
    pub quota_bytes: Option<i64>,
    pub scanning: bool,
    /// Its pull-through caches.
    pub caches: Arc<Vec<wharf_meta::CacheRecord>>,
}

pub struct AppState {
    pub meta: Meta,
    pub store: Arc<dyn BlobStore>,
    pub settings: Settings,
    /// Sign and verify the JWTs of the token flow; read again when a JWT names a key this node
    /// has not seen (another node rotated) and as old keys are deleted.
    pub(crate) jwt_keys: std::sync::RwLock<Arc<jwt::JwtKeys>>,
    jwt_reloaded: std::sync::Mutex<std::time::Instant>,
    /// Seals what is stored in the metadata database (manifests), as the store seals blobs.
    pub(crate) sealing: wharf_store::seal::Sealing,
    /// The master and data keys behind `sealing`; `None` where encryption is off.
    pub(crate) content_keys: Option<Arc<ContentKeys>>,
    /// The content store and sealing of each registry with a key of its own, by key id.
    scoped: std::sync::Mutex<std::collections::HashMap<String, Scoped>>,
    /// Sealing what was stored in the clear, when it was started on this node.
    pub(crate) seal_progress: Arc<service::SealProgress>,
    pub(crate) verified: VerifiedSecrets,
    /// One check at a time per (token, presented secret): when the cached check expires under
    /// load, one request hashes and the others wait for its answer (32 connections each
    /// hashing at once took 600 MiB for a moment).
    pub(crate) secret_checks: locks::KeyedLocks,
    /// Slow hashes (argon2id, 19 MiB each) running at once, at most one per core, so that a
    /// flood of wrong secrets cannot make memory grow with the number of connections.
    pub(crate) hashing: tokio::sync::Semaphore,
    pub(crate) upload_locks: locks::KeyedLocks,
    pub(crate) running_hashes: service::RunningHashes,
    /// One fetch from an upstream at a time per content (pull-through caches).
    pub(crate) cache_locks: locks::KeyedLocks,
    /// Logins to upstreams (the Authorization to send) by upstream, account and scope, with
    /// when they were made: a cache reuses one for a while instead of logging in per request.
    pub(crate) upstream_logins: UpstreamLogins,
    /// Registry name to id, briefly: every /v2/ request resolves its host to a registry.
    pub(crate) registry_ids:
        std::sync::Mutex<std::collections::HashMap<String, (RegistryRef, std::time::Instant)>>,
    /// Per-token request rates.
    pub(crate) rate: rate::RateLimiter,
    /// Token records (state and scopes) by id, briefly: every authenticated request needs one.
    pub(crate) tokens: std::sync::Mutex<
        std::collections::HashMap<i64, (wharf_meta::TokenRecord, std::time::Instant)>,
    >,
    /// Registry operations (pushes, pulls, deletes) queued for the audit log. Bounded: when the
    /// writer falls behind, requests wait for room instead of the queue growing without end
    /// (unbounded, a minute of 12k pulls/s grew it to 650 MiB).
    pub(crate) audit_queue: tokio::sync::mpsc::Sender<wharf_meta::OwnedAuditEntry>,
    /// Renders `/metrics`; `None` where no recorder was installed (then it answers 404).
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `/v2/` requests this node has begun: garbage collection yields while it grows.
    pub(crate) requests: std::sync::atomic::AtomicU64,
    /// Wakes this node's scan workers when a push queued a scan.
    pub(crate) scan_wakeup: tokio::sync::Notify,
    /// Wakes this node's import schedule when an import was asked for through the API.
    pub(crate) vulndb_wakeup: tokio::sync::Notify,
    /// Wakes this node's replication worker when a push queued a copy.
    pub(crate) replication_wakeup: tokio::sync::Notify,
}

impl AppState {
    /// Must be called inside the tokio runtime: it starts the audit writer.
    pub fn new(
        meta: Meta,
        store: Arc<dyn BlobStore>,
        settings: Settings,
        jwt_keys: jwt::JwtKeys,
        content_keys: Option<Arc<ContentKeys>>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        let (audit_queue, queued) = tokio::sync::mpsc::channel(AUDIT_QUEUE);
        tokio::spawn(write_audit(meta.clone(), queued));
        AppState {
            audit_queue,
            metrics,
            registry_ids: Default::default(),
            rate: Default::default(),
            tokens: Default::default(),
            meta,
            store,
            settings,
            jwt_keys: std::sync::RwLock::new(Arc::new(jwt_keys)),
            jwt_reloaded: std::sync::Mutex::new(std::time::Instant::now()),
            sealing: wharf_store::seal::Sealing::new(
                content_keys
                    .clone()
                    .map(|k| k as Arc<dyn wharf_store::seal::KeyRing>),
            ),
            content_keys,
            seal_progress: Default::default(),
            scoped: Default::default(),
            verified: Default::default(),
            secret_checks: locks::KeyedLocks::default(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            upload_locks: locks::KeyedLocks::default(),
            running_hashes: Default::default(),
            cache_locks: locks::KeyedLocks::default(),
            upstream_logins: Default::default(),
            requests: Default::default(),
            scan_wakeup: Default::default(),
            vulndb_wakeup: Default::default(),
            replication_wakeup: Default::default(),
        }
    }
}

impl AppState {
    /// What a clean stop does after the last request: the data keys made ahead for objects
    /// not sealed yet go (otherwise every start left up to a batch of them behind).
    pub async fn stopped(&self) {
        if let Some(keys) = &self.content_keys {
            let unused = keys.discard_unused().await;
            tracing::debug!(unused, "unused data keys deleted");
        }
    }

    /// Where a registry's content goes and how it is sealed: the instance's store and keys, or,
    /// for a registry with its own master key, addresses of its own sealed under that key.
    pub(crate) fn scoped(&self, key_id: Option<&str>) -> Result<Scoped, wharf_store::StoreError> {
        let Some(key_id) = key_id else {
            return Ok((self.store.clone(), self.sealing.clone()));
        };
        let mut scoped = self.scoped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = scoped.get(key_id) {
            return Ok(found.clone());
        }
        let keys = self.content_keys.clone().ok_or_else(|| {
            wharf_store::StoreError::Key(format!(
                "the registry's content is sealed under its own key {key_id} and encryption is off"
            ))
        })?;
        let ring = keyring::RegistryKeys {
            keys,
            key_id: key_id.to_string(),
        };
        let sealing = wharf_store::seal::Sealing::new(Some(Arc::new(ring)));
        let store = self.store.scoped(key_id, sealing.clone())?;
        scoped.insert(key_id.to_string(), (store.clone(), sealing.clone()));
        Ok((store, sealing))
    }

    /// Drops a deleted registry's store and sealing.
    pub(crate) fn forget_scoped(&self, key_id: &str) {
        self.scoped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
    }

    /// The JWT signing keys as last read.
    pub(crate) fn jwt(&self) -> Arc<jwt::JwtKeys> {
        self.jwt_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the signing keys again (a failure keeps the ones loaded).
    pub(crate) async fn reload_jwt_keys(&self) {
        *self.jwt_reloaded.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        match jwt::load(&self.meta, self.content_keys.as_deref()).await {
            Ok(keys) => {
                *self.jwt_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "reading the JWT signing keys failed"),
        }
    }

    /// The key that verifies JWTs signed by `kid` (JWTs without one predate key ids: key 1),
    /// reading the keys again, at most once a second, when it is not known.
    pub(crate) async fn jwt_verify_key(&self, kid: Option<&str>) -> Option<Vec<u8>> {
        let kid = kid.map_or_else(|| jwt::kid(1), String::from);
        if let Some(key) = self.jwt().get(&kid) {
            return Some(key.to_vec());
        }
        let recent = self
            .jwt_reloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < std::time::Duration::from_secs(1);
        if recent {
            return None;
        }
        self.reload_jwt_keys().await;
        self.jwt().get(&kid).map(<[u8]>::to_vec)
    }

    /// How long a node keeps a registry's id: a registry deleted through another node stops
    /// resolving here within this time (this node forgets it at once).
    pub(crate) const REGISTRY_ID_TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The registry named `name`, if it exists: its id and rate limit, as of at most a second
    /// ago.
    pub(crate) async fn registry_ref(
        &self,
        name: &str,
    ) -> Result<Option<RegistryRef>, wharf_meta::MetaError> {
        {
            let cache = self.registry_ids.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((r, at)) = cache.get(name) {
                if at.elapsed() < Self::REGISTRY_ID_TTL {
                    return Ok(Some(r.clone()));
                }
            }
        }
        let found = match self.meta.registry(name).await? {
            Some(r) => Some(RegistryRef {
                caches: Arc::new(self.meta.caches(r.id).await?),
                id: r.id,
                rate_limit: r.rate_limit,
                read_only: r.read_only,
                key_id: r.key_id,
                quota_bytes: r.quota_bytes,
                scanning: r.scanning,
            }),
            None => None,
        };
        let mut cache = self.registry_ids.lock().unwrap_or_else(|e| e.into_inner());
        match &found {
            Some(r) => {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(name.to_string(), (r.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(name);
            }
        }
        Ok(found)
    }

    /// Admits one more request of a token under its registry's rate limit (the server's where
    /// the registry sets none), or answers 429 with when to retry.
    pub(crate) fn admit(&self, token_id: i64, rate_limit: Option<i64>) -> Result<(), ApiError> {
        let per_second = match rate_limit {
            Some(limit) => u32::try_from(limit.max(0)).unwrap_or(u32::MAX),
            None => self.settings.rate_limit,
        };
        self.rate
            .check(token_id, per_second, Instant::now())
            .map_err(|wait| {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                ::metrics::counter!("wharf_rate_limited_total").increment(1);
                tracing::info!(token = token_id, per_second, "request refused: rate limit");
                ApiError::with_message(
                    wharf_oci::ErrorCode::TooManyRequests,
                    format!(
                        "this token may make {per_second} requests per second; retry in {secs} s"
                    ),
                    serde_json::json!({ "limit_per_second": per_second }),
                )
                .header(axum::http::header::RETRY_AFTER, &secs.max(1).to_string())
            })
    }

    pub(crate) fn forget_registry_ref(&self, name: &str) {
        let mut cache = self.registry_ids.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(name);
    }

    pub(crate) fn forget_registry(&self, name: &str) {
        self.forget_registry_ref(name);
        // Its tokens went with it.
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// How long a node keeps a token's state and scopes. Changes made through this node apply
    /// at once (it forgets the token); changes made elsewhere within this time. Expiry is
    /// checked against the clock on every request either way.
    const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The token with this id, its state and scopes as of at most a second ago.
    pub(crate) async fn token_by_id(
        &self,
        id: i64,
    ) -> Result<Option<wharf_meta::TokenRecord>, wharf_meta::MetaError> {
        {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, at)) = cache.get(&id) {
                if at.elapsed() < Self::TOKEN_TTL {
                    return Ok(Some(t.clone()));
                }
            }
        }
        let token = self.meta.token_by_id(id).await?;
        self.remember_token(id, token.as_ref());
        Ok(token)
    }

    /// The token named `name` in a registry; the name is looked up, the record cached by id.
    pub(crate) async fn token_by_name(
        &self,
        registry_id: i64,
        name: &str,
    ) -> Result<Option<wharf_meta::TokenRecord>, wharf_meta::MetaError> {
        {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            let hit = cache.values().find(|(t, at)| {
                t.registry_id == registry_id && t.name == name && at.elapsed() < Self::TOKEN_TTL
            });
            if let Some((t, _)) = hit {
                return Ok(Some(t.clone()));
            }
        }
        let token = self.meta.token(registry_id, name).await?;
        if let Some(t) = &token {
            self.remember_token(t.id, Some(t));
        }
        Ok(token)
    }

    fn remember_token(&self, id: i64, token: Option<&wharf_meta::TokenRecord>) {
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match token {
            Some(t) => {
                if cache.len() > 10_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < Self::TOKEN_TTL);
                }
                cache.insert(id, (t.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(&id);
            }
        }
    }

    /// Drops a token from this node's cache after a change through the API.
    pub(crate) fn forget_token(&self, id: i64) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Bytes for people: `1.5 MiB` (powers of 1024), `812 B`.
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// Audit entries that may wait for the writer: a few MiB at most, and two of its batches.
const AUDIT_QUEUE: usize = 2 * AUDIT_BATCH;
const AUDIT_BATCH: usize = 1000;

/// Writes queued audit entries: it waits for one, then takes everything queued meanwhile into
/// one transaction, so that under load a single commit covers many requests.
async fn write_audit(
    meta: Meta,
    mut queued: tokio::sync::mpsc::Receiver<wharf_meta::OwnedAuditEntry>,
) {
    let mut batch = Vec::new();
    while queued.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
        let entries = batch.len();
        if let Err(e) = meta.audit_batch(std::mem::take(&mut batch)).await {
            tracing::error!(error = %e, entries, "audit log write failed");
        }
    }
}

/// Deletes tokens whose expiry passed, once a second, and records each in the audit log.
pub async fn expire_tokens(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        // Signing keys replaced longer ago than a JWT lives (and a margin for nodes that took
        // the newer key up late) go; every node reads the keys again to sign with the newest.
        if ticks.is_multiple_of(30) {
            let margin = (token_endpoint::JWT_SECONDS + 60) * 1000;
            let cutoff = wharf_meta::now_millis() - margin;
            match state.meta.delete_superseded_signing_keys(cutoff).await {
                Ok(n) if n > 0 => {
                    tracing::info!(deleted = n, "deleted JWT signing keys no valid JWT uses")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "deleting old JWT signing keys failed"),
            }
            state.reload_jwt_keys().await;
        }
        match state
            .meta
            .delete_expired_tokens(wharf_meta::now_millis())
            .await
        {
            Ok(expired) => {
                for (registry, token) in expired {
                    tracing::info!(%registry, %token, "token expired and was deleted");
                    let detail = serde_json::json!({ "token": token }).to_string();
                    let entry = wharf_meta::AuditEntry {
                        actor: "system",
                        action: "token.expire",
                        registry: Some(&registry),
                        detail: Some(detail),
                        ..Default::default()
                    };
                    let _ = state.meta.audit(&entry).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiring tokens failed"),
        }
    }
}

/// Samples every registry's storage once per interval (the console's chart of storage over
/// time). Every node runs it; the first to sample an interval writes it, the others find it.
pub async fn sample_storage(state: Arc<AppState>) {
    let every = state.settings.storage_sample_interval;
    let interval_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
    let mut tick = tokio::time::interval(every.min(std::time::Duration::from_secs(60)));
    loop {
        tick.tick().await;
        let now = wharf_meta::now_millis();
        let at = now - now % interval_ms;
        if let Err(e) = state.meta.sample_storage(at).await {
            tracing::warn!(error = %e, "sampling storage failed");
        }
    }
}

/// Records, once at start, the data keys of manifest annotations sealed before they were
/// recorded with their manifests (see [`service::Service::record_annotation_keys`]). A failure
/// is logged; the next start tries again.
pub async fn record_annotation_keys(state: Arc<AppState>) {
    match state.service().record_annotation_keys().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            manifests = n,
            "recorded the data keys of sealed annotations"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "recording the data keys of sealed annotations failed")
        }
    }
}

/// Removes upload sessions untouched for the configured age, with their bytes. Every node runs
/// it; the database hands each expired session to one of them.
pub async fn expire_uploads(state: Arc<AppState>) {
    let age = state.settings.upload_max_age;
    let every = (age / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let before = wharf_meta::now_millis().saturating_sub(age_ms);
        match state.meta.expire_uploads(before).await {
            Ok(expired) => {
                for (id, hash_state) in expired {
                    state.running_hashes.forget(&id);
                    let key = service::sealed_under(hash_state.as_deref());
                    state.service().retire_keys(key).await;
                    remove_upload_data(&state, &id, "abandoned upload session").await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiring upload sessions failed"),
        }
        remove_orphaned_uploads(&state, age).await;
    }
}

/// Removes an upload's bytes, saying in the log what they were (`what`). A failure is logged:
/// the orphan sweep tries again later.
async fn remove_upload_data(state: &AppState, id: &str, what: &str) {
    match state.store.delete_upload(id).await {
        Ok(keys) => {
            state
                .service()
                .retire_keys(keys.iter().map(wharf_store::seal::KeyId::hex))
                .await;
            tracing::info!(upload = %id, "{what} removed")
        }
        Err(e) => tracing::warn!(upload = %id, error = %e, "removing {what} failed"),
    }
}

/// Removes upload data that no session names and nothing wrote for the configured age: left
/// by a node that died between closing a session and removing its data, or by a request that
/// wrote a part after its session was gone.
async fn remove_orphaned_uploads(state: &AppState, age: std::time::Duration) {
    let before = std::time::SystemTime::now() - age;
    let stale = match state.store.stale_uploads(before).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing upload data failed");
            return;
        }
    };
    for id in stale {
        match state.meta.upload_exists(&id).await {
            Ok(false) => remove_upload_data(state, &id, "orphaned upload data").await,
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "checking an upload session failed"),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = api::router(&state);
    Router::new()
        .route("/v2", any(v2::dispatch))
        .route("/v2/", any(v2::dispatch))
        .route("/v2/{*path}", any(v2::dispatch))
        .layer(middleware::map_response(api_version_header))
        .merge(api)
        .merge(console::router())
        .route(
            "/auth/token",
            get(token_endpoint::token).post(token_endpoint::token),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::render))
        .route("/readyz", get(ready))
        // Blob bodies are streamed to storage, never collected, so no body limit applies here;
        // manifests are read with their own limit.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(metrics::track))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn api_version_header(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// Readiness, with details: which backing service is missing, and how content is kept.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let metadata = match state.meta.ping().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = %e, "not ready: metadata store");
            "unavailable"
        }
    };
    let storage = match state.store.check().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = %e, "not ready: content store");
            "unavailable"
        }
    };
    let ready = metadata == "ok" && storage == "ok";
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "metadata": metadata,
        "storage": storage,
        "storage_location": state.settings.storage,
        "encryption": api::system::EncryptionView::of(&state),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(%method, %path, status, ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status, ms, "request");
    }
    resp
}
