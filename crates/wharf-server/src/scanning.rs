//! Scanning inside the registry: images pushed to registries with scanning on are queued in the
//! database and scanned by a bounded pool of workers on every node (each job goes to one),
//! from wharf's own content store. A scan stores the image's package inventory once, so that a
//! newer vulnerability database is matched against it again without reading any layer. Pushes
//! and pulls never wait for a scan.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use wharf_meta::{FindingRow, Meta, MetaError, ScanJob, ScanOutcome};
use wharf_oci::{Digest, Manifest};
use wharf_scan::advisory::{Advisory, Score};
use wharf_scan::cvss::Severity;
use wharf_scan::image::{ImageSource, Layer};
use wharf_scan::inventory::{Inventory, DETECTOR_VERSION};
use wharf_scan::matcher::{self, Report};
use wharf_store::{BlobStore, ByteStream};

use crate::AppState;

/// Images pushed or pulled this recently are matched again when the database changes.
pub const RECENT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long an idle worker waits before it looks at the queue again (pushes on this node wake
/// it at once; those on other nodes are seen within this).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// How long a worker that found no result to match again waits before it looks again, unless
/// the database's version moved on meanwhile: the search reads every result behind the version
/// (old images not pulled lately stay so), too much to repeat at every idle poll.
const REMATCH_RECHECK: Duration = Duration::from_secs(30);

/// Claims a job may fail (its node stopped, the store was down) before it is given up as
/// `Unknown`.
const MAX_ATTEMPTS: i64 = 5;

/// Image config media types: what is not one of them is an artifact, not an image to scan.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("stored advisory is unreadable (re-import it): {0}")]
    Unreadable(String),
}

/// Matches an inventory against the advisories and scores stored in `meta`.
pub async fn match_inventory(meta: &Meta, inventory: &Inventory) -> Result<Report, MatchError> {
    let mut advisories: BTreeMap<(String, String), Advisory> = BTreeMap::new();
    for (ecosystem, keys) in matcher::lookups(inventory) {
        let keys: Vec<String> = keys.into_iter().collect();
        for (_, doc) in meta.advisories_for(&ecosystem, &keys).await? {
            let a: Advisory =
                serde_json::from_str(&doc).map_err(|e| MatchError::Unreadable(e.to_string()))?;
            advisories.insert((a.source.clone(), a.id.clone()), a);
        }
    }
    let advisories: Vec<Advisory> = advisories.into_values().collect();
    let ids: Vec<String> = matcher::score_ids(&advisories).into_iter().collect();
    let scores: Vec<Score> = meta
        .scores_for(&ids)
        .await?
        .into_iter()
        .map(score_of)
        .collect();
    Ok(matcher::match_inventory(inventory, &advisories, &scores))
}

/// A stored score as the matcher takes it.
pub(crate) fn score_of(s: wharf_meta::ScoreRow) -> Score {
    Score {
        cve: s.cve,
        source: s.source,
        version: s.version,
        vector: s.vector,
        score: s.score,
        modified: s.modified,
    }
}

/// A stored inventory of `image`, if one was made by the current detectors.
pub async fn stored_inventory(meta: &Meta, image: &str) -> Result<Option<Inventory>, MetaError> {
    Ok(meta
        .load_inventory(image)
        .await?
        .filter(|(v, _)| *v == i64::from(DETECTOR_VERSION))
        .and_then(|(_, doc)| serde_json::from_str::<Inventory>(&doc).ok()))
}

/// Keeps a complete inventory for later matches (a partial one is made again next time).
pub async fn save_inventory(meta: &Meta, inventory: &Inventory) -> Result<(), MetaError> {
    if inventory.partial {
        return Ok(());
    }
    let doc = serde_json::to_string(inventory).unwrap_or_default();
    meta.save_inventory(&inventory.image, i64::from(DETECTOR_VERSION), &doc)
        .await
}

/// Severity ranks as stored: higher is more severe.
pub fn rank(s: Severity) -> i64 {
    s as i64
}

/// Queues the images of a registry whose scanning was just switched on. Nodes that still had
/// it off in their cache (for up to a second) may push meanwhile without queueing: those images
/// are queued by a second pass once every node has seen the change.
pub(crate) async fn queue_registry(
    state: &Arc<AppState>,
    registry_id: i64,
) -> Result<(), MetaError> {
    let queued = state.meta.queue_registry_scans(registry_id).await?;
    if queued > 0 {
        tracing::info!(registry_id, queued, "images queued for scanning");
        state.scan_wakeup.notify_waiters();
    }
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(3 * AppState::REGISTRY_ID_TTL).await;
        match state.meta.queue_registry_scans(registry_id).await {
            Ok(n) if n > 0 => state.scan_wakeup.notify_waiters(),
            Ok(_) => {}
            Err(e) => tracing::warn!(registry_id, error = %e, "images not queued for scanning"),
        }
    });
    Ok(())
}

/// What a worker does when the queue has work: scans or matches until it is empty, then waits
/// for a push on this node or the next poll. Runs until the process ends.
pub async fn run_workers(state: Arc<AppState>) {
    let workers = state.settings.scan_workers;
    if workers == 0 {
        tracing::info!("scanning is off on this node (--scan-workers 0)");
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(state.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn worker(state: Arc<AppState>) {
    // The database version at which the last search for results to match again found none,
    // and when.
    let mut matched_up: Option<(i64, Instant)> = None;
    loop {
        let paused = state
            .settings
            .scan_pause_file
            .as_ref()
            .is_some_and(|f| f.exists());
        let worked = if paused {
            false
        } else {
            next_job(&state, &mut matched_up).await
        };
        if !worked {
            let _ = tokio::time::timeout(IDLE_POLL, state.scan_wakeup.notified()).await;
        }
    }
}

/// Claims and runs one job; false when there was none (or the database could not be asked).
async fn next_job(state: &AppState, matched_up: &mut Option<(i64, Instant)>) -> bool {
    let meta = &state.meta;
    let now = wharf_meta::now_millis();
    let version = match meta.vuln_db_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "scan queue unreadable");
            return false;
        }
    };
    // A claim older than twice the time limit belongs to a node that stopped.
    let stale = now - 2 * state.settings.scan_timeout.as_millis() as i64;
    let recent = now - RECENT.as_millis() as i64;
    let rematch = !matched_up.is_some_and(|(v, at)| v == version && at.elapsed() < REMATCH_RECHECK);
    let job = match meta.claim_scan(version, recent, stale, rematch).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            if rematch {
                *matched_up = Some((version, Instant::now()));
            }
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "scan queue unreadable");
            return false;
        }
    };
    let started = Instant::now();
    let kind = if job.rematch { "match" } else { "scan" };
    match run_job(state, &job, version).await {
        Ok(Some(outcome)) => {
            let status = outcome.status.clone();
            let findings = outcome.findings.len();
            match meta.finish_scan(&job.scope, &job.digest, outcome).await {
                Ok(()) => {
                    crate::metrics::scan_done(kind, &status, started.elapsed());
                    tracing::info!(digest = %job.digest, kind, status, findings,
                        ms = started.elapsed().as_millis() as u64, "image scanned");
                }
                Err(e) => tracing::warn!(digest = %job.digest, error = %e, "scan result not saved"),
            }
        }
        Ok(None) => {
            tracing::debug!(digest = %job.digest, "scan dropped: the image is gone");
            if let Err(e) = meta.drop_scan(&job.scope, &job.digest).await {
                tracing::warn!(digest = %job.digest, error = %e, "scan not dropped");
            }
        }
        Err(e) if job.attempts >= MAX_ATTEMPTS => {
            tracing::warn!(digest = %job.digest, error = %e, "scan given up");
            let outcome = unknown(
                version,
                format!("the scan failed {MAX_ATTEMPTS} times: {e}"),
            );
            if let Err(e) = meta.finish_scan(&job.scope, &job.digest, outcome).await {
                tracing::warn!(digest = %job.digest, error = %e, "scan result not saved");
            }
        }
        Err(e) => {
            // The store or the database failed: another try later, on this node or another.
            tracing::warn!(digest = %job.digest, attempt = job.attempts, error = %e, "scan failed; retried later");
            let _ = meta.release_scan(&job.scope, &job.digest).await;
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
    true
}

fn unknown(db_version: i64, reason: String) -> ScanOutcome {
    ScanOutcome {
        status: "unknown".into(),
        reason: Some(reason),
        db_version,
        os: None,
        packages: None,
        partial: false,
        highest: None,
        summary: None,
        findings: Vec::new(),
    }
}

/// Why a job could not run now (it is tried again).
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
    #[error("the scan stopped: {0}")]
    Panicked(String),
}

/// Runs a job to its outcome; `None` when no manifest of the image is stored any more.
async fn run_job(
    state: &AppState,
    job: &ScanJob,
    db_version: i64,
) -> Result<Option<ScanOutcome>, JobError> {
    let meta = &state.meta;
    if job.rematch {
        if let Some(inventory) = stored_inventory(meta, &job.digest).await? {
            let report = match_inventory(meta, &inventory).await?;
            return Ok(Some(outcome(db_version, report)));
        }
        // No stored inventory (the detectors changed, or it was partial): scan anew.
    }
    let Some((sealed, media_type)) = meta.scan_manifest(&job.scope, &job.digest).await? else {
        return Ok(None);
    };
    let content = state
        .sealing
        .open_bytes(&format!("manifest {}", job.digest), &sealed)
        .await?;
    let manifest = match Manifest::parse(Some(&media_type), &content) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Some(unknown(
                db_version,
                format!("unreadable manifest: {e}"),
            )))
        }
    };
    if wharf_oci::media::is_index(&media_type) {
        return Ok(Some(unknown(
            db_version,
            "an index: each of its images is scanned on its own".into(),
        )));
    }
    let config = manifest.config.as_ref().map(|c| c.media_type.as_str());
    if !config.is_some_and(|c| IMAGE_CONFIGS.contains(&c)) {
        let kind = manifest
            .artifact_type
            .clone()
            .unwrap_or_else(|| "unknown".into());
        return Ok(Some(unknown(
            db_version,
            format!("unsupported content: not a container image (artifact type {kind})"),
        )));
    }
    let scope = (!job.scope.is_empty()).then_some(job.scope.as_str());
    let (store, _) = state.scoped(scope)?;
    let image = StoreImage {
        id: job.digest.clone(),
        layers: manifest
            .layers
            .iter()
            .map(|l| Layer {
                digest: Some(l.digest.to_string()),
                name: l.digest.to_string(),
            })
            .collect(),
        blobs: manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size.max(0) as u64))
            .collect(),
        store,
        runtime: tokio::runtime::Handle::current(),
        deadline: Instant::now() + state.settings.scan_timeout,
    };
    let inventory = tokio::task::spawn_blocking(move || wharf_scan::walk::inventory(&image))
        .await
        .map_err(|e| JobError::Panicked(e.to_string()))?;
    // A layer that could not be read at all leaves nothing to say about the image.
    let unreadable = inventory.warnings.iter().find(|w| {
        manifest
            .layers
            .iter()
            .any(|l| l.digest.as_str() == w.location)
    });
    if let Some(w) = unreadable {
        return Ok(Some(unknown(
            db_version,
            format!("layer {} could not be read: {}", w.location, w.reason),
        )));
    }
    if let Some(reason) = inventory.unknown_reason() {
        return Ok(Some(unknown(db_version, reason)));
    }
    save_inventory(meta, &inventory).await?;
    let report = match_inventory(meta, &inventory).await?;
    Ok(Some(outcome(db_version, report)))
}

/// A match's report as stored.
fn outcome(db_version: i64, report: Report) -> ScanOutcome {
    let highest = report.findings.iter().map(|f| f.severity).max();
    let summary: BTreeMap<&str, usize> = report
        .summary
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    let os = report.os.as_ref().map(|o| {
        o.pretty_name
            .clone()
            .unwrap_or_else(|| format!("{} {}", o.id, o.version_id.as_deref().unwrap_or("")))
    });
    let findings = report
        .findings
        .iter()
        .map(|f| {
            let mut ids = vec![f.id.clone()];
            ids.extend(f.aliases.iter().cloned());
            FindingRow {
                vuln_id: f.id.clone(),
                package: f.package.clone(),
                installed: f.installed.clone(),
                fixed: f.fixed.clone(),
                severity: f.severity.as_str().to_string(),
                rank: rank(f.severity),
                score: f.score,
                ids,
                doc: serde_json::to_string(f).unwrap_or_default(),
            }
        })
        .collect();
    ScanOutcome {
        status: "scanned".into(),
        reason: None,
        db_version,
        os,
        packages: Some(report.packages as i64),
        partial: report.partial,
        highest: highest.map(|s| s.as_str().to_string()),
        summary: serde_json::to_string(&summary).ok(),
        findings,
    }
}

/// An image whose layers are read from the content store, from a blocking thread.
struct StoreImage {
    id: String,
    layers: Vec<Layer>,
    blobs: Vec<(Digest, u64)>,
    store: Arc<dyn BlobStore>,
    runtime: tokio::runtime::Handle,
    /// A scan that runs past this fails its reads: a layer that would take hours (a zip bomb,
    /// a 10 GiB layer on a slow store) makes the image `Unknown` instead.
    deadline: Instant,
}

impl ImageSource for StoreImage {
    fn id(&self) -> &str {
        &self.id
    }
    fn layers(&self) -> &[Layer] {
        &self.layers
    }
    fn open_layer(&self, index: usize) -> io::Result<Box<dyn Read + '_>> {
        let (digest, size) = &self.blobs[index];
        let stream = self
            .runtime
            .block_on(self.store.read(digest, 0, *size))
            .map_err(io::Error::other)?;
        Ok(Box::new(StreamRead {
            stream,
            runtime: &self.runtime,
            chunk: Bytes::new(),
            deadline: self.deadline,
        }))
    }
}

/// A store's byte stream read as `std::io::Read`.
struct StreamRead<'a> {
    stream: ByteStream,
    runtime: &'a tokio::runtime::Handle,
    chunk: Bytes,
    deadline: Instant,
}

impl Read for StreamRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the scan took longer than its time limit",
            ));
        }
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_severity() {
        assert!(rank(Severity::Critical) > rank(Severity::High));
        assert!(rank(Severity::High) > rank(Severity::Medium));
        assert!(rank(Severity::Low) > rank(Severity::None));
    }
}
