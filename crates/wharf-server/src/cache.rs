//! Pull-through caches: a repository prefix of a registry (`hub/`) proxies an upstream. A
//! manifest or blob asked for and not held is fetched from the upstream, verified by its digest
//! and stored, while it streams to the client; later pulls are served from the store. One fetch
//! of a piece of content runs at a time on a node: concurrent first pulls wait for it and then
//! read what it stored. A cached tag is asked for again on the upstream (a HEAD) once its
//! revalidation time has passed; when the upstream cannot be reached, what is cached is served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use wharf_meta::{CacheRecord, StoredManifest};
use wharf_oci::manifest::MAX_MANIFEST_SIZE;
use wharf_oci::{media, Digest, Manifest, Reference};
use wharf_store::ByteStream;

use crate::service::{self, Result, Scope, ServiceError};
use crate::upstream::{self, TestReport, UpstreamClient};
use crate::AppState;

/// The manifest types asked of an upstream: every kind wharf stores.
const MANIFEST_ACCEPT: [&str; 4] = [
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
];

/// How long a login to an upstream is used again: registries' tokens last a minute or more,
/// and each login costs the upstream two requests.
const LOGIN_REUSE: Duration = Duration::from_secs(50);

/// A client that reads no chunk of a cached blob for this long is left behind; the blob is
/// still stored for the next pull.
const CLIENT_STALL: Duration = Duration::from_secs(60);

/// The cache a repository falls under: the longest prefix it starts with.
pub(crate) fn rule_for<'a>(caches: &'a [CacheRecord], repository: &str) -> Option<&'a CacheRecord> {
    caches
        .iter()
        .filter(|c| {
            repository
                .strip_prefix(c.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|c| c.prefix.len())
}

/// The repository's name on the upstream: its prefix replaced by the upstream's.
pub(crate) fn upstream_name(rule: &CacheRecord, repository: &str) -> String {
    let rest = repository.get(rule.prefix.len() + 1..).unwrap_or_default();
    if rule.upstream_prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{}/{rest}", rule.upstream_prefix)
    }
}

/// An upstream of a cache, and the repository a cached one is on it.
struct Upstream {
    opened: upstream::Opened,
    url: String,
    /// The repository on the upstream.
    remote: String,
}

impl Upstream {
    async fn of(state: &AppState, scope: &Scope<'_>, rule: &CacheRecord) -> Result<Upstream> {
        let opened =
            upstream::Opened::load(state, scope.registry_id, scope.key_id, &rule.upstream_host)
                .await?
                .ok_or_else(|| {
                    ServiceError::Upstream(format!(
                        "the upstream {} of the cache {}/ has no credentials any more",
                        rule.upstream_host, rule.prefix
                    ))
                })?;
        Ok(Upstream {
            url: opened.url.clone(),
            opened,
            remote: upstream_name(rule, scope.repository),
        })
    }

    /// Sends `method` to `path` (under `/v2/<remote>/`), logged in for pulls.
    async fn send(
        &self,
        state: &AppState,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::Response> {
        let credentials = self.opened.credentials();
        let client = UpstreamClient::for_transfer(&credentials, state.settings.upstream_timeout)
            .map_err(failed)?;
        let scope = format!("repository:{}:pull", self.remote);
        let key = format!("{}\n{}\n{scope}", self.url, self.opened.username);
        let reusable = {
            let logins = state
                .upstream_logins
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            logins
                .get(&key)
                .filter(|(_, at)| at.elapsed() < LOGIN_REUSE)
                .map(|(auth, _)| auth.clone())
        };
        let path = format!("/v2/{}/{path}", self.remote);
        let mut reused = reusable.is_some();
        let mut auth = reusable.flatten();
        loop {
            if !reused {
                auth = client.login(Some(&scope)).await.map_err(failed)?;
                let mut logins = state
                    .upstream_logins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if logins.len() > 10_000 {
                    logins.clear();
                }
                logins.insert(key.clone(), (auth.clone(), std::time::Instant::now()));
            }
            let r = client
                .request(method.clone(), &path, auth.as_deref())
                .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT.join(", "))
                .send()
                .await
                .map_err(|e| {
                    ServiceError::Upstream(format!(
                        "{} did not answer {path}: {}",
                        self.url,
                        upstream::error_chain(&e)
                    ))
                })?;
            // A reused token the upstream no longer takes (expired early): log in again.
            if reused && r.status() == reqwest::StatusCode::UNAUTHORIZED {
                reused = false;
                continue;
            }
            return Ok(r);
        }
    }

    /// An answer no registry gives for content it has or lacks.
    async fn unexpected(&self, what: &str, response: reqwest::Response) -> ServiceError {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let excerpt = upstream::excerpt(&body, 200);
        ServiceError::Upstream(format!(
            "{} answered HTTP {status} for {what} of {}: {excerpt}",
            self.url, self.remote
        ))
    }
}

/// A login that failed, as the connection test would name it.
fn failed(report: impl std::ops::Deref<Target = TestReport>) -> ServiceError {
    ServiceError::Upstream(format!("upstream login failed: {}", report.detail))
}

/// What the upstream has for a reference.
enum Fetched {
    /// The tag still names the manifest cached.
    Current,
    Missing,
    New {
        digest: Digest,
        manifest: Box<Manifest>,
        content: Vec<u8>,
    },
}

/// The manifest `reference` names in a cached repository: the one stored when it is there (and,
/// for a tag, checked on the upstream recently or the upstream is down), else the upstream's,
/// fetched, verified and stored.
pub(crate) async fn manifest(
    state: &AppState,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    reference: &Reference,
) -> Result<Option<StoredManifest>> {
    let service = state.service();
    let local = service.manifest(scope, reference).await?;
    if served_as_stored(state, scope, rule, reference, &local).await? {
        return Ok(local);
    }
    let key = format!(
        "manifest {} {} {reference}",
        scope.registry_id, scope.repository
    );
    let _one_fetch = state.cache_locks.lock(&key).await;
    // Another request may have fetched or checked it while this one waited.
    let local = service.manifest(scope, reference).await?;
    if served_as_stored(state, scope, rule, reference, &local).await? {
        return Ok(local);
    }
    let tag = match reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    let known = local.as_ref().map(|m| m.digest.as_str());
    let fetched = fetch_manifest(state, scope, rule, reference, known).await;
    match &fetched {
        Ok(Fetched::New { .. }) => crate::metrics::cache_fetch("manifest", true),
        Err(_) => crate::metrics::cache_fetch("manifest", false),
        Ok(_) => {}
    }
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) if local.is_some() => {
            tracing::warn!(repository = scope.repository, %reference, error = %e,
                "upstream not reachable; the cached manifest is served");
            return Ok(local);
        }
        Err(e) => return Err(e),
    };
    match fetched {
        Fetched::Current => {
            if let Some(tag) = tag {
                state
                    .meta
                    .cache_checked(scope.registry_id, scope.repository, tag)
                    .await?;
            }
            Ok(local)
        }
        // A tag the upstream dropped is still served as cached (an eviction deletes it).
        Fetched::Missing => Ok(local),
        Fetched::New {
            digest,
            manifest,
            content,
        } => {
            let mut record = service::manifest_record(&digest, &manifest);
            record.size = content.len() as i64;
            record.content = content.clone();
            let media_type = record.media_type.clone();
            service.put_cached_manifest(scope, record, tag).await?;
            if let Some(tag) = tag {
                state
                    .meta
                    .cache_checked(scope.registry_id, scope.repository, tag)
                    .await?;
            }
            Ok(Some(StoredManifest {
                digest: digest.to_string(),
                media_type,
                content,
            }))
        }
    }
}

/// Whether the stored manifest is the answer: a digest never changes; a tag is asked for again
/// once the cache's revalidation time has passed since it was last found current.
async fn served_as_stored(
    state: &AppState,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    reference: &Reference,
    local: &Option<StoredManifest>,
) -> Result<bool> {
    let Some(_) = local else {
        return Ok(false);
    };
    let Reference::Tag(tag) = reference else {
        return Ok(true);
    };
    let checked = state
        .meta
        .cache_checked_at(scope.registry_id, scope.repository, tag.as_str())
        .await?;
    let age = checked.map(|at| wharf_meta::now_millis() - at);
    Ok(age.is_some_and(|ms| ms < rule.revalidate_secs.saturating_mul(1000)))
}

/// Refuses to store more once the registry uses its whole storage quota: cached content counts
/// toward it as pushed content does.
async fn check_room(state: &AppState, scope: &Scope<'_>) -> Result<()> {
    let quota = state
        .meta
        .registry_by_id(scope.registry_id)
        .await?
        .and_then(|r| r.quota_bytes);
    let Some(quota) = quota else {
        return Ok(());
    };
    let used = state
        .meta
        .registry_stats(scope.registry_id)
        .await?
        .storage_bytes;
    if used >= quota {
        return Err(ServiceError::QuotaReached { quota, used });
    }
    Ok(())
}

async fn fetch_manifest(
    state: &AppState,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    reference: &Reference,
    known: Option<&str>,
) -> Result<Fetched> {
    if known.is_none() {
        check_room(state, scope).await?;
    }
    let upstream = Upstream::of(state, scope, rule).await?;
    let path = format!("manifests/{reference}");
    let what = format!("manifest {reference}");
    if let Some(known) = known {
        let r = upstream.send(state, reqwest::Method::HEAD, &path).await?;
        let said = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        match r.status().as_u16() {
            200 if said == Some(known) => return Ok(Fetched::Current),
            // A digest is not always given on HEAD: the GET below tells.
            200 => {}
            404 => return Ok(Fetched::Missing),
            _ => return Err(upstream.unexpected(&what, r).await),
        }
    }
    let r = upstream.send(state, reqwest::Method::GET, &path).await?;
    match r.status().as_u16() {
        200 => {}
        404 => return Ok(Fetched::Missing),
        _ => return Err(upstream.unexpected(&what, r).await),
    }
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let said = header("docker-content-digest");
    let content = read_limited(r, MAX_MANIFEST_SIZE).await.map_err(|why| {
        ServiceError::Upstream(format!(
            "{} sent {what} of {}: {why}",
            upstream.url, upstream.remote
        ))
    })?;
    let manifest = Manifest::parse(content_type.as_deref(), &content).map_err(|e| {
        ServiceError::Upstream(format!(
            "{} sent no valid manifest for {what} of {} ({e})",
            upstream.url, upstream.remote
        ))
    })?;
    let mismatch = |expected: &str, actual: &Digest| {
        ServiceError::Upstream(format!(
            "{} sent {what} of {} whose digest is {actual}, not {expected}; nothing was stored",
            upstream.url, upstream.remote
        ))
    };
    let digest = match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &content);
            if &actual != expected {
                return Err(mismatch(expected.as_str(), &actual));
            }
            actual
        }
        Reference::Tag(_) => {
            let actual = Digest::sha256_of(&content);
            match said.as_deref().map(Digest::parse) {
                Some(Ok(d)) if d.algorithm() == actual.algorithm() && d != actual => {
                    return Err(mismatch(d.as_str(), &actual))
                }
                _ => actual,
            }
        }
    };
    Ok(Fetched::New {
        digest,
        manifest: Box::new(manifest),
        content,
    })
}

/// A response body of at most `limit` bytes.
async fn read_limited(r: reqwest::Response, limit: usize) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut chunks = r.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| format!("a body cut short ({})", upstream::error_chain(&e)))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("more than the {limit}-byte limit"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How a blob not yet cached reaches its client.
pub(crate) enum BlobFetch {
    /// Stored meanwhile (another request fetched it): read it from the store.
    Stored,
    /// The upstream has no such blob.
    Missing,
    /// Streaming from the upstream as it is stored; its length when the upstream said it. The
    /// stream ends in an error, never with its last bytes, if the blob fails its digest.
    Streaming { len: Option<u64>, body: ByteStream },
}

/// The owned half of a [`Scope`], for the task that fetches a blob.
struct OwnedScope {
    registry_id: i64,
    key_id: Option<String>,
    scanning: bool,
    repository: String,
    actor: String,
}

impl OwnedScope {
    fn scope(&self) -> Scope<'_> {
        Scope {
            registry_id: self.registry_id,
            key_id: self.key_id.as_deref(),
            scanning: self.scanning,
            repository: &self.repository,
            actor: self.actor.clone(),
        }
    }
}

/// Fetches a blob of a cached repository from its upstream, streaming it to the caller while
/// it is stored. The fetch runs on its own: a client that goes away does not stop it, and the
/// next pull finds the blob stored. A blob whose digest fails is not stored, and its stream
/// ends in an error.
pub(crate) async fn blob(
    state: Arc<AppState>,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    digest: &Digest,
) -> Result<BlobFetch> {
    let owned = OwnedScope {
        registry_id: scope.registry_id,
        key_id: scope.key_id.map(str::to_string),
        scanning: scope.scanning,
        repository: scope.repository.to_string(),
        actor: scope.actor.clone(),
    };
    let (rule, digest) = (rule.clone(), digest.clone());
    let (started, start) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let scope = owned.scope();
        fetch_blob(&state, &scope, &rule, &digest, started).await;
    });
    start.await.unwrap_or_else(|_| {
        Err(ServiceError::Upstream(
            "the fetch from the upstream stopped".into(),
        ))
    })
}

async fn fetch_blob(
    state: &AppState,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    digest: &Digest,
    started: tokio::sync::oneshot::Sender<Result<BlobFetch>>,
) {
    let key = format!("blob {} {} {digest}", scope.registry_id, scope.repository);
    let _one_fetch = state.cache_locks.lock(&key).await;
    let service = state.service();
    let response = async {
        if service.blob_size(scope, digest).await?.is_some() {
            return Ok(None);
        }
        check_room(state, scope).await?;
        let upstream = Upstream::of(state, scope, rule).await?;
        let path = format!("blobs/{digest}");
        let r = upstream.send(state, reqwest::Method::GET, &path).await?;
        match r.status().as_u16() {
            200 => Ok(Some(Some(r))),
            404 => Ok(Some(None)),
            _ => Err(upstream.unexpected(&format!("blob {digest}"), r).await),
        }
    };
    let r = match response.await {
        Ok(Some(Some(r))) => r,
        Ok(Some(None)) => {
            let _ = started.send(Ok(BlobFetch::Missing));
            return;
        }
        Ok(None) => {
            let _ = started.send(Ok(BlobFetch::Stored));
            return;
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let len = r.content_length();
    let (to_client, body) = tokio::sync::mpsc::channel(4);
    let body: ByteStream = Box::pin(futures_util::stream::unfold(body, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    if started
        .send(Ok(BlobFetch::Streaming { len, body }))
        .is_err()
    {
        tracing::debug!(%digest, "client gone before the fetch began; storing it anyway");
    }
    let relay = Arc::new(tokio::sync::Mutex::new(Relay {
        client: Some(to_client),
        held: None,
    }));
    let forward = relay.clone();
    let url = r.url().clone();
    let stream: ByteStream = Box::pin(
        r.bytes_stream()
            .map_err(move |e| {
                std::io::Error::other(format!(
                    "the upstream's blob broke off ({url}): {}",
                    upstream::error_chain(&e)
                ))
            })
            .and_then(move |chunk| {
                let relay = forward.clone();
                async move {
                    relay.lock().await.pass(chunk.clone()).await;
                    Ok(chunk)
                }
            }),
    );
    let stored = service.store_blob(scope, stream, len, digest).await;
    let mut relay = relay.lock().await;
    match stored {
        Ok(()) => {
            crate::metrics::cache_fetch("blob", true);
            tracing::info!(repository = scope.repository, %digest, "blob cached from upstream");
            relay.finish().await;
            drop(relay);
            scan_completed(state, scope, digest).await;
        }
        Err(e) => {
            crate::metrics::cache_fetch("blob", false);
            tracing::warn!(repository = scope.repository, %digest, error = %e,
                "blob from upstream not stored");
            relay.fail(e.to_string()).await;
        }
    }
}

/// Queues the scan of each cached image this blob completed: a cached manifest is stored before
/// its layers, which arrive as they are pulled, so it is scanned once the last of them is here.
async fn scan_completed(state: &AppState, scope: &Scope<'_>, digest: &Digest) {
    if !scope.scanning {
        return;
    }
    let complete = state
        .meta
        .manifests_completed_by(scope.registry_id, scope.repository, digest.as_str())
        .await;
    match complete {
        Ok(images) => {
            for image in images {
                state.service().queue_scan(scope, &image).await;
            }
        }
        Err(e) => tracing::warn!(%digest, error = %e, "cached images not queued for scanning"),
    }
}

/// Passes a blob's chunks to the client one behind, so that the last is sent only once the
/// whole blob matched its digest.
struct Relay {
    client: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    held: Option<Bytes>,
}

impl Relay {
    async fn pass(&mut self, chunk: Bytes) {
        if let Some(previous) = self.held.replace(chunk) {
            self.send(Ok(previous)).await;
        }
    }

    async fn finish(&mut self) {
        if let Some(last) = self.held.take() {
            self.send(Ok(last)).await;
        }
        self.client = None;
    }

    async fn fail(&mut self, why: String) {
        self.held = None;
        self.send(Err(std::io::Error::other(why))).await;
        self.client = None;
    }

    async fn send(&mut self, item: std::io::Result<Bytes>) {
        let Some(client) = &self.client else {
            return;
        };
        if client.send_timeout(item, CLIENT_STALL).await.is_err() {
            // Gone or stalled: the blob is stored all the same.
            self.client = None;
        }
    }
}

/// The length of a blob of a cached repository on its upstream, without fetching it; `None`
/// when the upstream has no such blob.
pub(crate) async fn blob_len(
    state: &AppState,
    scope: &Scope<'_>,
    rule: &CacheRecord,
    digest: &Digest,
) -> Result<Option<u64>> {
    let upstream = Upstream::of(state, scope, rule).await?;
    let path = format!("blobs/{digest}");
    let r = upstream.send(state, reqwest::Method::HEAD, &path).await?;
    match r.status().as_u16() {
        200 => Ok(Some(r.content_length().unwrap_or(0))),
        404 => Ok(None),
        _ => Err(upstream.unexpected(&format!("blob {digest}"), r).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, upstream_prefix: &str) -> CacheRecord {
        CacheRecord {
            id: 1,
            registry_id: 1,
            prefix: prefix.into(),
            upstream_id: 1,
            upstream_host: "up.example".into(),
            upstream_prefix: upstream_prefix.into(),
            revalidate_secs: 60,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn repositories_map_to_the_longest_prefix() {
        let caches = [
            rule("hub", "library"),
            rule("hub/bitnami", "bitnami"),
            rule("ghcr", ""),
        ];
        let found = |r: &str| rule_for(&caches, r).map(|c| upstream_name(c, r));
        assert_eq!(found("hub/alpine").as_deref(), Some("library/alpine"));
        assert_eq!(found("hub/bitnami/redis").as_deref(), Some("bitnami/redis"));
        assert_eq!(found("ghcr/org/app").as_deref(), Some("org/app"));
        assert_eq!(found("hubx/alpine"), None);
        assert_eq!(found("hub"), None);
        assert_eq!(found("team/app"), None);
    }
}
