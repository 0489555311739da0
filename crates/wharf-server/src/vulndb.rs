//! Imports into the vulnerability database: from files and directories (`wharf vulndb import`)
//! and, on a schedule, from the sources a server is configured with (files, directories and
//! HTTP(S) URLs of OSV dumps). One node imports at a time; the others see the new version and
//! match their images again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use wharf_meta::{AdvisoryRow, ImportCounts, Meta, MetaError, ScoreRow};
use wharf_scan::advisory::{self, Advisory, BadRecord, Record, Score};

use crate::AppState;

/// Records per database transaction: each holds SQLite's write lock briefly, so that imports
/// beside a running server (or the server's own) never keep pushes waiting for long.
const ADVISORY_BATCH: usize = 1000;
const SCORE_BATCH: usize = 5000;

/// How often a node looks whether a scheduled import is due (one asked for on this node starts
/// at once).
const SCHEDULE_POLL: Duration = Duration::from_secs(30);

/// A run whose node has not said it is alive for this long stopped; another node takes over.
pub(crate) const RUN_STALE: Duration = Duration::from_secs(600);

/// Longest wait for a download's next bytes.
const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

/// The outcome of one imported file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileReport {
    /// The file (or URL) imported.
    pub location: String,
    /// The source its records were stored under; absent when it was not imported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Records that could not be read (the others were imported).
    pub skipped: u64,
    /// Why the file was not imported (or not entirely); the data stored before stays in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A download the server said had not changed since the last one: not read again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_modified: bool,
}

impl FileReport {
    fn failed(location: &str, error: String) -> FileReport {
        FileReport {
            location: location.to_string(),
            error: Some(error),
            ..FileReport::default()
        }
    }

    /// One line for a person.
    pub fn line(&self) -> String {
        match (&self.source, &self.error) {
            // Errors of reading a file name it already.
            (_, Some(e)) if e.contains(&self.location) => e.clone(),
            (_, Some(e)) => format!("{}: {e}", self.location),
            (Some(source), None) => format!(
                "{source}: {} added, {} updated, {} unchanged, {} skipped ({})",
                self.added, self.updated, self.unchanged, self.skipped, self.location
            ),
            (None, None) if self.not_modified => {
                format!("{}: not modified since the last download", self.location)
            }
            (None, None) => format!("{}: nothing imported", self.location),
        }
    }

    pub fn changed(&self) -> bool {
        self.added + self.updated > 0
    }
}

/// Moves the database's version on when any of these imports changed it, so that servers
/// match their images again.
pub async fn publish(meta: &Meta, reports: &[FileReport]) -> Result<bool, MetaError> {
    let changed = reports.iter().any(FileReport::changed);
    if changed {
        meta.bump_vuln_db().await?;
    }
    Ok(changed)
}

/// What an import tells as it goes.
pub trait Progress: Send + Sync {
    /// A file is being read: `records` read so far.
    fn reading(&self, _location: &str, _records: u64) {}
    /// A warning (a record or file skipped).
    fn warn(&self, line: String);
}

/// Why a file was not imported.
pub enum ImportFailure {
    /// Not a vulnerability data file: fatal when named, skipped when found in a directory.
    Unsupported(String),
    Failed(String),
}

impl From<String> for ImportFailure {
    fn from(e: String) -> Self {
        ImportFailure::Failed(e)
    }
}

impl From<MetaError> for ImportFailure {
    fn from(e: MetaError) -> Self {
        ImportFailure::Failed(format!("metadata database: {e}"))
    }
}

/// The files named (`true`: named explicitly), with directories searched (sorted,
/// recursively) for importable files (`false`).
pub fn import_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(files_of(p)?);
    }
    if out.is_empty() {
        return Err(
            "no importable files (.json, .jsonl, .tsv, optionally .gz; .zip) found".to_string(),
        );
    }
    Ok(out)
}

fn files_of(path: &Path) -> Result<Vec<(PathBuf, bool)>, String> {
    fn importable(p: &Path) -> bool {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        [".json", ".jsonl", ".tsv", ".zip"]
            .iter()
            .any(|e| name.ends_with(e))
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if importable(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let mut found = Vec::new();
        walk(path, &mut found)?;
        Ok(found.into_iter().map(|f| (f, false)).collect())
    } else {
        Ok(vec![(path.to_path_buf(), true)])
    }
}

fn advisory_row(a: &Advisory) -> Result<AdvisoryRow, String> {
    let doc = serde_json::to_string(a).map_err(|e| format!("{}: {e}", a.id))?;
    Ok(AdvisoryRow {
        source: a.source.clone(),
        id: a.id.clone(),
        modified: a.modified.clone(),
        digest: hex::encode(sha2::Sha256::digest(doc.as_bytes())),
        doc,
        packages: a.keys(),
        aliases: a.aliases.clone(),
    })
}

fn score_row(s: Score) -> ScoreRow {
    ScoreRow {
        cve: s.cve,
        source: s.source,
        version: s.version,
        vector: s.vector,
        score: s.score,
        modified: s.modified,
    }
}

/// Imports one file; `location` is what the import records it came from (the file, or the URL
/// it was downloaded from).
pub async fn import_file(
    meta: &Meta,
    file: &Path,
    location: &str,
    progress: &dyn Progress,
) -> Result<FileReport, ImportFailure> {
    // The file is parsed on a blocking thread and streamed here through a bounded channel, so
    // memory stays flat whatever the file's size.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Record, BadRecord>>(4096);
    let path = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let bad_tx = tx.clone();
        advisory::read_file(
            &path,
            &mut |r| {
                tx.blocking_send(Ok(r))
                    .map_err(|_| "import stopped".to_string())
            },
            &mut |b| {
                let _ = bad_tx.blocking_send(Err(b));
            },
        )
    });
    let mut advisories = Vec::new();
    let mut scores = Vec::new();
    let mut counts = ImportCounts::default();
    let mut bad = Vec::new();
    let mut records = 0u64;
    while let Some(item) = rx.recv().await {
        match item {
            Ok(Record::Advisory(a)) => advisories.push(advisory_row(&a)?),
            Ok(Record::Score(s)) => scores.push(score_row(s)),
            Err(b) => bad.push(b),
        }
        records += 1;
        if advisories.len() >= ADVISORY_BATCH {
            counts += meta.upsert_advisories(&advisories).await?;
            advisories.clear();
        }
        if scores.len() >= SCORE_BATCH {
            counts += meta.upsert_scores(&scores).await?;
            scores.clear();
        }
        if records.is_multiple_of(5000) {
            progress.reading(location, records);
        }
    }
    counts += meta.upsert_advisories(&advisories).await?;
    counts += meta.upsert_scores(&scores).await?;
    let (kind, source) = reader
        .await
        .map_err(|e| format!("{location}: reader failed: {e}"))?
        .map_err(|e| match e {
            advisory::ImportError::Unsupported(m) => ImportFailure::Unsupported(m),
            other => ImportFailure::Failed(other.to_string()),
        })?;
    let scores = matches!(
        kind,
        advisory::FileKind::NvdScores | advisory::FileKind::VulnrichmentScores
    );
    let newest = if scores {
        None
    } else {
        meta.newest_advisory(&source).await?
    };
    meta.record_vuln_source(
        &source,
        kind.as_str(),
        location,
        newest.as_deref().filter(|n| !n.is_empty()),
        scores.then_some((records - bad.len() as u64) as i64),
    )
    .await?;
    for b in bad.iter().take(10) {
        progress.warn(format!("{}: skipped: {}", b.location, b.reason));
    }
    if bad.len() > 10 {
        progress.warn(format!(
            "{location}: {} more records skipped",
            bad.len() - 10
        ));
    }
    Ok(FileReport {
        location: location.to_string(),
        source: Some(source),
        added: counts.added,
        updated: counts.updated,
        unchanged: counts.unchanged,
        skipped: bad.len() as u64,
        ..FileReport::default()
    })
}

/// Imports files one after the other; a file that fails is reported and the others go on.
/// Returns each file's report (a directory's non-data files are left out, with a warning);
/// [`publish`] them once all are in.
pub async fn import(
    meta: &Meta,
    files: &[(PathBuf, bool)],
    progress: &dyn Progress,
    done: &mut (dyn FnMut(&FileReport) + Send),
) -> Vec<FileReport> {
    let mut reports = Vec::new();
    for (file, named) in files {
        let location = file.display().to_string();
        let report = match import_file(meta, file, &location, progress).await {
            Ok(r) => r,
            Err(ImportFailure::Unsupported(e)) if !named => {
                progress.warn(format!("{e}; skipped"));
                continue;
            }
            Err(ImportFailure::Unsupported(e) | ImportFailure::Failed(e)) => {
                FileReport::failed(&location, e)
            }
        };
        done(&report);
        reports.push(report);
    }
    reports
}

/// A configured source of scheduled imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

impl Source {
    /// Parses a `--vulndb-source`: an http(s) URL, or a file or directory that must exist.
    pub fn parse(s: &str) -> Result<Source, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = reqwest::Url::parse(s).map_err(|e| format!("vulndb source {s}: {e}"))?;
            if url.host_str().is_none() || file_name(&url).is_none() {
                return Err(format!(
                    "vulndb source {s}: a URL must name a file, e.g. https://host/debian12.jsonl.gz"
                ));
            }
            return Ok(Source::Url(s.to_string()));
        }
        if s.contains("://") {
            return Err(format!(
                "vulndb source {s}: only http:// and https:// URLs, files and directories"
            ));
        }
        let path = PathBuf::from(s);
        std::fs::metadata(&path).map_err(|e| format!("vulndb source {s}: {e}"))?;
        Ok(Source::Path(path))
    }

    pub fn as_str(&self) -> String {
        match self {
            Source::Path(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
        }
    }
}

/// The file name a URL ends in: the source name of what it holds, as for a local file. OSV
/// publishes one `all.zip` per ecosystem (`.../Debian/all.zip`): that one is named after its
/// folder too (`Debian-all.zip`), so that two ecosystems do not share a source.
fn file_name(url: &reqwest::Url) -> Option<String> {
    let mut segments: Vec<&str> = url.path_segments()?.collect();
    let name = segments.pop().filter(|n| !n.is_empty())?;
    match segments.pop() {
        Some(parent) if name.starts_with("all.") && !parent.is_empty() => {
            Some(format!("{parent}-{name}"))
        }
        _ => Some(name.to_string()),
    }
}

/// The last scheduled run, as stored for `vulndb status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    pub files: Vec<FileReport>,
    /// Whether the run changed the database (its version moved on).
    pub changed: bool,
}

/// Runs the scheduled imports of this node's configured sources: whenever one is due (its
/// interval passed since the last run on any node, or an import was asked for) and this node
/// claims it. Runs until the process ends.
pub async fn run_schedule(state: Arc<AppState>) {
    let sources = state.settings.vulndb_sources.clone();
    if sources.is_empty() {
        return;
    }
    // Conditional GETs: a dump that did not change since the last download is not read again.
    let mut validators = std::collections::HashMap::new();
    loop {
        let now = wharf_meta::now_millis();
        let interval = state.settings.vulndb_interval.as_millis() as i64;
        match state
            .meta
            .claim_vuln_import(now - interval, now - RUN_STALE.as_millis() as i64)
            .await
        {
            Ok(true) => {
                let report = run_once(&state, &sources, &mut validators).await;
                let doc = serde_json::to_string(&report).unwrap_or_default();
                if let Err(e) = state.meta.finish_vuln_import(&doc).await {
                    tracing::warn!(error = %e, "vulnerability import not recorded");
                }
                if report.changed {
                    state.scan_wakeup.notify_waiters();
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "scheduled vulnerability import not claimed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULE_POLL) => {}
            _ = state.vulndb_wakeup.notified() => {}
        }
    }
}

struct LogProgress;

impl Progress for LogProgress {
    fn warn(&self, line: String) {
        tracing::warn!("vulnerability import: {line}");
    }
}

type Validators = std::collections::HashMap<String, (Option<String>, Option<String>)>;

async fn run_once(state: &AppState, sources: &[Source], validators: &mut Validators) -> RunReport {
    tracing::info!(sources = sources.len(), "scheduled vulnerability import");
    let meta = &state.meta;
    let mut files = Vec::new();
    for source in sources {
        match source {
            Source::Path(p) => match files_of(p) {
                Ok(found) => {
                    let reports = import(meta, &found, &LogProgress, &mut |r| {
                        log_report(r);
                        // The claim stays fresh while a long run goes on.
                        let meta = meta.clone();
                        tokio::spawn(async move { meta.touch_vuln_import().await });
                    })
                    .await;
                    files.extend(reports);
                }
                Err(e) => files.push(FileReport::failed(&source.as_str(), e)),
            },
            Source::Url(url) => {
                let report = import_url(meta, url, validators).await;
                log_report(&report);
                let _ = meta.touch_vuln_import().await;
                files.push(report);
            }
        }
    }
    let changed = publish(meta, &files).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "vulnerability database version not moved on");
        false
    });
    RunReport { files, changed }
}

fn log_report(r: &FileReport) {
    match &r.error {
        Some(_) => tracing::warn!("vulnerability import: {}; skipped", r.line()),
        None => tracing::info!("vulnerability import: {}", r.line()),
    }
}

/// Downloads a dump (unless unchanged since the last download) and imports it.
async fn import_url(meta: &Meta, url: &str, validators: &mut Validators) -> FileReport {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return FileReport::failed(url, format!("no temporary directory: {e}")),
    };
    let file = match download(url, dir.path(), validators).await {
        Ok(Some(file)) => file,
        Ok(None) => {
            return FileReport {
                location: url.to_string(),
                not_modified: true,
                ..FileReport::default()
            }
        }
        Err(e) => return FileReport::failed(url, e),
    };
    match import_file(meta, &file, url, &LogProgress).await {
        Ok(r) => r,
        Err(ImportFailure::Unsupported(e) | ImportFailure::Failed(e)) => {
            // Read again next time, whatever the server says of it.
            validators.remove(url);
            FileReport::failed(url, e)
        }
    }
}

/// Streams `url` into `dir` under the name it ends in; `None` when the server says it did not
/// change since the validators it gave last time.
async fn download(
    url: &str,
    dir: &Path,
    validators: &mut Validators,
) -> Result<Option<PathBuf>, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let name = file_name(&parsed).ok_or("the URL names no file")?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(DOWNLOAD_IDLE)
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.get(parsed);
    if let Some((etag, modified)) = validators.get(url) {
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
    }
    let response = request.send().await.map_err(describe)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!("download failed: HTTP {status}"));
    }
    let header = |h| {
        response
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let fresh = (
        header(reqwest::header::ETAG),
        header(reqwest::header::LAST_MODIFIED),
    );
    let path = dir.join(name);
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(describe)?;
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    validators.insert(url.to_string(), fresh);
    Ok(Some(path))
}

/// A download error with its cause.
fn describe(e: reqwest::Error) -> String {
    format!("download failed: {}", crate::upstream::error_chain(&e))
}
