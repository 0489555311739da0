//! Garbage collection runs: started on demand (API) or by a registry's schedule, on any node,
//! one per registry at a time (the database's unique index of running runs). Pushes and pulls
//! go on throughout; what decides that a row is garbage, and the locking that keeps a
//! concurrent push from losing, is in `wharf_meta::gc`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_meta::{Garbage, GcCounts, GcPhase, GcRun, MetaError, Registry};
use wharf_oci::Digest;
use wharf_store::StoreError;

use crate::AppState;

/// Rows marked and swept per transaction.
const BATCH: i64 = 200;
/// A run not heard of for this many of its heartbeats (`Settings::gc_heartbeat`) was stopped
/// with its node.
const STALE_BEATS: u32 = 12;
/// While the node serves pushes and pulls, a collection waits this many times as long as each
/// batch took before the next: it takes at most a ninth of the time, so that clients keep
/// most of the machine (an idle node collects at full speed).
const BUSY_YIELD: u32 = 8;
/// Items a dry run lists in its report, per kind.
const DRY_RUN_LIST: usize = 1000;

/// How far a run has come, shared with its heartbeat.
#[derive(Default)]
struct Progress {
    phase: &'static str,
    counts: GcCounts,
}

/// What a dry run would free, as its report lists it.
#[derive(Default, serde::Serialize)]
struct Findings {
    manifests: Vec<serde_json::Value>,
    blobs: Vec<serde_json::Value>,
}

/// What a collection covers: a registry (its manifests, links, and every stored blob nothing
/// links), or the instance (only the stored blobs: what deleted registries and repositories
/// left behind).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The registry's id; 0 for the instance.
    pub id: i64,
    pub name: String,
    /// Manifests nothing refers to are collected too.
    pub untagged: bool,
}

impl Target {
    pub(crate) const INSTANCE: i64 = 0;

    pub(crate) fn registry(r: &Registry) -> Target {
        Target {
            id: r.id,
            name: r.name.clone(),
            untagged: r.gc_untagged,
        }
    }

    pub(crate) fn instance() -> Target {
        Target {
            id: Self::INSTANCE,
            name: "(instance)".to_string(),
            untagged: false,
        }
    }

    /// What it is, in a message: `registry "name"` or `the instance`.
    pub(crate) fn describe(&self) -> String {
        match self.id {
            Self::INSTANCE => "the instance".to_string(),
            _ => format!("registry {:?}", self.name),
        }
    }
}

impl AppState {
    /// How long a running collection may go unheard before it is taken for stopped (twelve
    /// heartbeats: a minute by default), in milliseconds. An object claimed longer ago than
    /// this whose deletion did not finish was left by such a run: whoever finds it completes
    /// the deletion.
    pub(crate) fn gc_stale_ms(&self) -> i64 {
        let after = self.settings.gc_heartbeat * STALE_BEATS;
        i64::try_from(after.as_millis()).unwrap_or(i64::MAX)
    }

    /// Starts a collection in the background; a run already going comes back as the error.
    pub(crate) async fn start_gc(
        self: &Arc<Self>,
        target: Target,
        cause: &str,
        dry_run: bool,
    ) -> Result<Result<GcRun, GcRun>, MetaError> {
        let stale = wharf_meta::now_millis().saturating_sub(self.gc_stale_ms());
        let started = self
            .meta
            .start_gc_run(target.id, cause, dry_run, stale)
            .await?;
        if let Ok(run) = &started {
            tracing::info!(registry = %target.name, run = run.id, cause, dry_run, "garbage collection started");
            tokio::spawn(run_gc(self.clone(), run.clone(), target));
        }
        Ok(started)
    }
}

async fn run_gc(state: Arc<AppState>, run: GcRun, registry: Target) {
    let progress = Arc::new(Mutex::new(Progress::default()));
    let heartbeat = tokio::spawn({
        let (state, progress, id) = (state.clone(), progress.clone(), run.id);
        async move {
            let mut tick = tokio::time::interval(state.settings.gc_heartbeat);
            loop {
                tick.tick().await;
                let (phase, counts) = {
                    let p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    (p.phase, p.counts)
                };
                if let Err(e) = state.meta.gc_progress(id, phase, counts).await {
                    tracing::warn!(run = id, error = %e, "recording collection progress failed");
                }
            }
        }
    });
    let started = std::time::Instant::now();
    let outcome = collect(&state, &run, &registry, &progress).await;
    heartbeat.abort();
    let counts = progress.lock().unwrap_or_else(|e| e.into_inner()).counts;
    let (error, details) = match &outcome {
        Ok(findings) => (
            None,
            findings
                .as_ref()
                .and_then(|f| serde_json::to_string(f).ok()),
        ),
        Err(e) => (Some(e.clone()), None),
    };
    if let Err(e) = state
        .meta
        .finish_gc_run(run.id, counts, error.as_deref(), details.as_deref())
        .await
    {
        tracing::error!(run = run.id, error = %e, "recording the end of a collection failed");
    }
    crate::metrics::gc_run(&registry.name, error.is_none(), counts, started.elapsed());
    match error {
        None => tracing::info!(
            registry = %registry.name, run = run.id, manifests = counts.manifests,
            blobs = counts.blobs, bytes = counts.bytes, dry_run = run.dry_run,
            "garbage collection finished"
        ),
        Some(e) => {
            tracing::warn!(registry = %registry.name, run = run.id, error = %e, "garbage collection failed")
        }
    }
}

/// The three phases; a dry run's findings come back for its report.
async fn collect(
    state: &Arc<AppState>,
    run: &GcRun,
    registry: &Target,
    progress: &Mutex<Progress>,
) -> Result<Option<Findings>, String> {
    let grace = i64::try_from(state.settings.gc_grace.as_millis()).unwrap_or(i64::MAX);
    let cutoff = wharf_meta::now_millis().saturating_sub(grace);
    let meta = &state.meta;
    let mut failures = Vec::new();
    if !run.dry_run {
        finish_stale_claims(state, progress, &mut failures).await;
    }
    let mut collector = meta
        .collector(registry.id, cutoff, run.dry_run)
        .await
        .map_err(|e| e.to_string())?;
    let mut findings = Findings::default();
    let phases = [GcPhase::Manifests, GcPhase::Links, GcPhase::Objects];
    for phase in phases {
        let instance = registry.id == Target::INSTANCE;
        if (phase == GcPhase::Manifests && !registry.untagged)
            || (phase == GcPhase::Links && instance)
        {
            continue;
        }
        progress.lock().unwrap_or_else(|e| e.into_inner()).phase = phase.name();
        // A pass marks forward through the phase's rows, batch after batch. Freeing a
        // manifest can make others garbage (its referrers, its children) that the pass has
        // gone by: manifests take passes until one frees nothing.
        let mut after: Option<Garbage> = None;
        let mut freed_in_pass = 0;
        loop {
            let marked = collector
                .mark(phase, after.as_ref(), BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = marked.last().cloned() else {
                if phase == GcPhase::Manifests && freed_in_pass > 0 {
                    (after, freed_in_pass) = (None, 0);
                    continue;
                }
                break;
            };
            after = Some(last);
            pause_point(state).await;
            let (batch_started, served) = (std::time::Instant::now(), requests(state));
            let freed = collector.sweep(&marked).await.map_err(|e| e.to_string())?;
            freed_in_pass += freed.len();
            let mut claimed = Vec::new();
            for item in freed {
                match item {
                    Garbage::Manifest {
                        repository,
                        digest,
                        size,
                        ..
                    } => {
                        count(progress, |c| c.manifests += 1);
                        if run.dry_run && findings.manifests.len() < DRY_RUN_LIST {
                            findings.manifests.push(serde_json::json!({
                                "repository": repository, "digest": digest, "size": size,
                            }));
                        }
                    }
                    Garbage::Link { .. } => {}
                    Garbage::Object { digest, size, .. } if run.dry_run => {
                        count(progress, |c| {
                            c.blobs += 1;
                            c.bytes += size;
                        });
                        if findings.blobs.len() < DRY_RUN_LIST {
                            findings
                                .blobs
                                .push(serde_json::json!({ "digest": digest, "size": size }));
                        }
                    }
                    object @ Garbage::Object { .. } => claimed.push(object),
                }
            }
            delete_objects(state, progress, claimed, &mut failures).await;
            if requests(state) != served {
                tokio::time::sleep(batch_started.elapsed() * BUSY_YIELD).await;
            }
        }
    }
    collector.end().await.map_err(|e| e.to_string())?;
    if !run.dry_run {
        // What scans knew of images now gone goes with them (a failure here is for the next
        // run: nothing depends on it).
        match meta.drop_orphaned_scans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(scans = n, "forgot the scans of images no registry holds"),
            Err(e) => tracing::warn!(error = %e, "orphaned scans not dropped"),
        }
    }
    match failures.first() {
        None => Ok(run.dry_run.then_some(findings)),
        Some(first) => Err(format!(
            "{} blob(s) could not be deleted from storage ({first}); the next run tries again",
            failures.len()
        )),
    }
}

fn requests(state: &AppState) -> u64 {
    state.requests.load(std::sync::atomic::Ordering::Relaxed)
}

fn count(progress: &Mutex<Progress>, add: impl FnOnce(&mut GcCounts)) {
    add(&mut progress.lock().unwrap_or_else(|e| e.into_inner()).counts);
}

/// Stored objects deleted at once: S3 answers each delete in a round trip.
const DELETING_AT_ONCE: usize = 8;

/// Deletes claimed objects' content, then their rows. A failure leaves the claim: the next
/// run (or an upload of the same blob) completes it once it is stale.
async fn delete_objects(
    state: &AppState,
    progress: &Mutex<Progress>,
    claimed: Vec<Garbage>,
    failures: &mut Vec<String>,
) {
    use futures_util::StreamExt;
    let deleted: Vec<(Garbage, Result<(), String>)> = futures_util::stream::iter(claimed)
        .map(|item| async move {
            let outcome = match &item {
                Garbage::Object { scope, digest, .. } => remove_content(state, scope, digest).await,
                _ => Ok(()),
            };
            (item, outcome)
        })
        .buffer_unordered(DELETING_AT_ONCE)
        .collect()
        .await;
    // Forgotten per scope, in one statement each.
    let mut gone: Vec<(String, Vec<String>, i64)> = Vec::new();
    for (item, outcome) in deleted {
        let Garbage::Object {
            scope,
            digest,
            size,
        } = item
        else {
            continue;
        };
        match outcome {
            Ok(()) => match gone.iter_mut().find(|(s, ..)| *s == scope) {
                Some((_, digests, bytes)) => {
                    digests.push(digest);
                    *bytes += size;
                }
                None => gone.push((scope, vec![digest], size)),
            },
            Err(e) => {
                tracing::warn!(%digest, scope, error = %e, "deleting collected blob content failed");
                failures.push(format!("{digest}: {e}"));
            }
        }
    }
    for (scope, digests, bytes) in gone {
        match state.meta.forget_objects(&scope, &digests).await {
            Ok(()) => count(progress, |c| {
                c.blobs += digests.len() as i64;
                c.bytes += bytes;
            }),
            Err(e) => failures.push(format!("forgetting {} deleted blobs: {e}", digests.len())),
        }
    }
}

/// Deletes a blob object's bytes from the content store, and the data key it was sealed under;
/// one already gone is fine.
pub(crate) async fn remove_content(
    state: &AppState,
    scope: &str,
    digest: &str,
) -> Result<(), String> {
    let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
    let store = if scope.is_empty() {
        state.store.clone()
    } else {
        // Deleting needs no key: a deleted registry's scope is emptied all the same.
        state
            .store
            .scoped(scope, wharf_store::seal::Sealing::new(None))
            .map_err(|e| e.to_string())?
    };
    let key = match store.delete_blob(&digest).await {
        Ok(key) => key,
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.to_string()),
    };
    // The object's data key sealed nothing else: it goes with it.
    if let Some(key) = key {
        state
            .meta
            .delete_data_key(&key.hex())
            .await
            .map_err(|e| format!("deleting the data key of {digest}: {e}"))?;
    }
    Ok(())
}

/// Completes deletions claimed by runs that stopped half-way.
async fn finish_stale_claims(
    state: &AppState,
    progress: &Mutex<Progress>,
    failures: &mut Vec<String>,
) {
    let before = wharf_meta::now_millis().saturating_sub(state.gc_stale_ms());
    match state.meta.stale_objects(before, 10_000).await {
        Ok(stale) => delete_objects(state, progress, stale, failures).await,
        Err(e) => failures.push(format!("listing unfinished deletions: {e}")),
    }
}

/// Tests hold a run between marking and sweeping: while the file named by
/// `WHARF_GC_PAUSE_FILE` exists, the run waits, having written `<file>.reached`.
async fn pause_point(state: &AppState) {
    let Some(path) = &state.settings.gc_pause_file else {
        return;
    };
    if !path.exists() {
        return;
    }
    let mut reached = path.clone().into_os_string();
    reached.push(".reached");
    let _ = std::fs::write(&reached, b"");
    while path.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How often each node looks for collections whose schedule fell due.
const SCHEDULE_TICK: Duration = Duration::from_secs(15);

/// Starts scheduled collections as they fall due. Every node runs it; the node that moves a
/// registry's next run on (compare-and-swap in the database) starts that collection. Every
/// `instance_every`, the instance's own collection frees what deleted registries and
/// repositories left (one at a time across nodes: the same unique index).
pub async fn schedule_gc(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SCHEDULE_TICK);
    let every = state.settings.gc_instance_interval;
    let mut last_instance = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(e) = start_scheduled(&state, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "starting scheduled garbage collections failed");
        }
        if last_instance.elapsed() >= every {
            last_instance = tokio::time::Instant::now();
            match state.start_gc(Target::instance(), "schedule", false).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "starting the instance's collection failed"),
            }
        }
    }
}

/// Starts the collections due at `now` (the clock is a parameter so that tests can move it),
/// and returns them.
pub(crate) async fn start_scheduled(
    state: &Arc<AppState>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<GcRun>, MetaError> {
    let mut started = Vec::new();
    for registry in state.meta.due_gc(now.timestamp_millis()).await? {
        let Some(due) = registry.gc_next_run else {
            continue;
        };
        let next = registry
            .gc_schedule
            .as_deref()
            .and_then(crate::api::registries::GcSchedule::stored)
            .and_then(|s| s.next_after(now));
        if !state.meta.advance_gc(registry.id, due, next).await? {
            continue;
        }
        match state
            .start_gc(Target::registry(&registry), "schedule", false)
            .await?
        {
            Ok(run) => started.push(run),
            Err(running) => tracing::info!(
                registry = %registry.name, running = running.id,
                "scheduled garbage collection skipped: the last run is still going"
            ),
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    /// A server state over a fresh database (SQLite, then PostgreSQL) and content directory.
    async fn states() -> Vec<(Arc<AppState>, tempfile::TempDir)> {
        let mut out = Vec::new();
        let base = std::env::var("WHARF_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        for backend in ["sqlite", "postgres"] {
            let dir = tempfile::tempdir().unwrap();
            let url = match backend {
                "sqlite" => format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display()),
                _ => format!("{base}/wharf_test_{}", uuid::Uuid::new_v4().simple()),
            };
            let meta = wharf_meta::Meta::connect(&url).await.unwrap();
            let store = wharf_store::FsStore::open(dir.path().join("content"))
                .await
                .unwrap();
            let state = AppState::new(
                meta,
                Arc::new(store),
                crate::Settings::default(),
                Default::default(),
                None,
                None,
            );
            out.push((Arc::new(state), dir));
        }
        out
    }

    #[tokio::test]
    async fn a_schedule_fires_once_when_it_falls_due_and_moves_to_its_next_time() {
        for (state, _dir) in states().await {
            let meta = &state.meta;
            let r = meta.ensure_registry("sched", "default").await.unwrap();
            // Mondays and Thursdays at 03:30 UTC; set on Sunday 2026-11-29 12:00.
            let schedule = r#"{"weekdays":["mon","thu"],"time":"03:30"}"#;
            let set_at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
            let first = crate::api::registries::GcSchedule::stored(schedule)
                .unwrap()
                .next_after(set_at)
                .unwrap();
            let monday = Utc.with_ymd_and_hms(2026, 11, 30, 3, 30, 0).unwrap();
            assert_eq!(first, monday.timestamp_millis());
            let changes = wharf_meta::RegistryChanges {
                gc_schedule: Some(Some(schedule)),
                gc_next_run: Some(Some(first)),
                ..Default::default()
            };
            meta.update_registry(r.id, &changes).await.unwrap();

            // A minute early: nothing.
            let early = monday - chrono::Duration::minutes(1);
            assert!(start_scheduled(&state, early).await.unwrap().is_empty());
            // At the time: one scheduled run, and the next falls on Thursday.
            let runs = start_scheduled(&state, monday).await.unwrap();
            assert_eq!(runs.len(), 1);
            assert_eq!(
                (runs[0].cause.as_str(), runs[0].dry_run),
                ("schedule", false)
            );
            let thursday = Utc.with_ymd_and_hms(2026, 12, 3, 3, 30, 0).unwrap();
            let after = meta.registry("sched").await.unwrap().unwrap();
            assert_eq!(after.gc_next_run, Some(thursday.timestamp_millis()));
            // The same tick again (another node, a second later): it already fired.
            let later = monday + chrono::Duration::seconds(1);
            assert!(start_scheduled(&state, later).await.unwrap().is_empty());
            // The run ends and is in the history as a scheduled one.
            let mut done = None;
            for _ in 0..100 {
                let (runs, _) = meta.gc_runs(r.id, None, 10).await.unwrap();
                if runs[0].status != "running" {
                    done = Some(runs[0].clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let done = done.expect("the scheduled run ends");
            assert_eq!(
                (done.status.as_str(), done.cause.as_str()),
                ("succeeded", "schedule")
            );
            // A node that was down over Thursday's time starts it when it comes back, once.
            let friday = thursday + chrono::Duration::days(1);
            assert_eq!(start_scheduled(&state, friday).await.unwrap().len(), 1);
            assert!(start_scheduled(&state, friday).await.unwrap().is_empty());
            let monday_next = Utc.with_ymd_and_hms(2026, 12, 7, 3, 30, 0).unwrap();
            let after = meta.registry("sched").await.unwrap().unwrap();
            assert_eq!(after.gc_next_run, Some(monday_next.timestamp_millis()));
        }
    }
}
