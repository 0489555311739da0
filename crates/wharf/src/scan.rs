//! `wharf vulndb import|status` and `wharf scan`: the offline scanner on image files, against
//! the vulnerability database kept in wharf's metadata store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sha2::Digest;
use wharf_meta::{AdvisoryRow, ImportCounts, Meta, ScoreRow};
use wharf_scan::advisory::{self, Advisory, BadRecord, Record, Score};
use wharf_scan::cvss::Severity;
use wharf_scan::matcher::{self, Report};
use wharf_server::scanning;

use crate::config::DbArgs;

#[derive(Subcommand)]
pub enum VulndbCommand {
    /// Import advisories and scores: OSV JSON / JSON lines (gzip or not), Alpine secdb JSON,
    /// NVD and vulnrichment CVSS tables. Directories are searched for such files. Re-importing
    /// updates what changed and leaves the rest.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show the imported sources, their record counts and dates.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
pub struct ScanArgs {
    /// An OCI image layout directory or a `docker save` tar file.
    image: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Show only these severities (comma-separated: critical,high,medium,low,none,unknown).
    #[arg(long, value_delimiter = ',')]
    severity: Vec<Severity>,
    /// Show only vulnerabilities with a fixed version.
    #[arg(long)]
    fixable: bool,
    /// Exit with status 3 when a shown vulnerability is at least this severe.
    #[arg(long, value_name = "SEVERITY")]
    fail_on: Option<Severity>,
    /// The platform to scan in a multi-platform image, e.g. linux/arm64 [default: linux/amd64].
    #[arg(long)]
    platform: Option<String>,
    /// Read the layers again even if this image's package inventory is stored.
    #[arg(long)]
    reindex: bool,
    #[command(flatten)]
    db: DbArgs,
}

/// Exit status of `scan --fail-on` when the threshold is met (1 stays "the command failed").
const FAIL_ON_EXIT: u8 = 3;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

pub(crate) async fn connect(db: DbArgs) -> Result<Meta, String> {
    let url = db.database_url()?;
    Meta::connect(&url)
        .await
        .map_err(|e| format!("metadata database: {e}"))
}

fn db_err(e: wharf_meta::MetaError) -> String {
    format!("metadata database: {e}")
}

pub fn vulndb(command: VulndbCommand) -> Result<(), String> {
    runtime()?.block_on(async {
        match command {
            VulndbCommand::Import { paths, db } => {
                let files = import_files(&paths)?;
                let meta = connect(db).await?;
                let result = import(&meta, &files).await;
                meta.close().await;
                result
            }
            VulndbCommand::Status { json, db } => {
                let meta = connect(db).await?;
                let sources = meta.vuln_sources().await.map_err(db_err);
                meta.close().await;
                print_status(&sources?, json);
                Ok(())
            }
        }
    })
}

/// The files named (`true`: named explicitly), with directories searched (sorted,
/// recursively) for importable files (`false`).
fn import_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, String> {
    fn importable(p: &Path) -> bool {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".tsv")
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
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            out.extend(found.into_iter().map(|f| (f, false)));
        } else {
            out.push((p.clone(), true));
        }
    }
    if out.is_empty() {
        return Err("no importable files (.json, .jsonl, .tsv, optionally .gz) found".to_string());
    }
    Ok(out)
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

/// A line above the progress bar; without a terminal the bar is hidden and lines go straight
/// to standard output.
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Records per database transaction.
const IMPORT_BATCH: usize = 1000;

/// Why a file was not imported.
enum ImportFailure {
    /// Not a vulnerability data file: fatal when named, skipped when found in a directory.
    Unsupported(String),
    Failed(String),
}

impl From<String> for ImportFailure {
    fn from(e: String) -> Self {
        ImportFailure::Failed(e)
    }
}

async fn import(meta: &Meta, files: &[(PathBuf, bool)]) -> Result<(), String> {
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed = 0;
    let mut changed = false;
    for (file, named) in files {
        bar.set_message(file.display().to_string());
        match import_file(meta, file, &bar).await {
            Ok((line, counts)) => {
                changed |= counts.added + counts.updated > 0;
                say(&bar, line)
            }
            Err(ImportFailure::Unsupported(e)) if !named => {
                say(&bar, format!("wharf: warning: {e}; skipped"))
            }
            Err(ImportFailure::Unsupported(e) | ImportFailure::Failed(e)) => {
                failed += 1;
                say(&bar, format!("wharf: error: {e}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Scans matched against the database as it was are matched again by the servers.
    if changed {
        meta.bump_vuln_db().await.map_err(db_err)?;
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} files could not be imported",
            files.len()
        ));
    }
    Ok(())
}

async fn import_file(
    meta: &Meta,
    file: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(String, ImportCounts), ImportFailure> {
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
        if advisories.len() >= IMPORT_BATCH {
            counts += meta.upsert_advisories(&advisories).await.map_err(db_err)?;
            advisories.clear();
        }
        if scores.len() >= IMPORT_BATCH * 5 {
            counts += meta.upsert_scores(&scores).await.map_err(db_err)?;
            scores.clear();
        }
        if records.is_multiple_of(5000) {
            bar.set_message(format!("{}: {records} records", file.display()));
        }
    }
    counts += meta.upsert_advisories(&advisories).await.map_err(db_err)?;
    counts += meta.upsert_scores(&scores).await.map_err(db_err)?;
    let (kind, source) = reader
        .await
        .map_err(|e| format!("{}: reader failed: {e}", file.display()))?
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
        meta.newest_advisory(&source).await.map_err(db_err)?
    };
    meta.record_vuln_source(
        &source,
        kind.as_str(),
        &file.display().to_string(),
        newest.as_deref().filter(|n| !n.is_empty()),
        scores.then_some((records - bad.len() as u64) as i64),
    )
    .await
    .map_err(db_err)?;
    for b in bad.iter().take(10) {
        say(
            bar,
            format!("wharf: warning: {}: skipped: {}", b.location, b.reason),
        );
    }
    if bad.len() > 10 {
        say(
            bar,
            format!(
                "wharf: warning: {}: {} more records skipped",
                file.display(),
                bad.len() - 10
            ),
        );
    }
    let line = format!(
        "{source}: {} added, {} updated, {} unchanged, {} skipped ({})",
        counts.added,
        counts.updated,
        counts.unchanged,
        bad.len(),
        file.display()
    );
    Ok((line, counts))
}

fn print_status(sources: &[wharf_meta::SourceStatus], json: bool) {
    let when = |ms: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
        )
        .to_string()
    };
    if json {
        let list: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| {
                serde_json::json!({"source": s.source, "kind": s.kind, "file": s.file,
                    "records": s.records, "newest": s.newest, "imported_at": when(s.imported_at)})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    if sources.is_empty() {
        println!("no vulnerability data imported; run `wharf vulndb import <files or dirs>`");
        return;
    }
    println!(
        "{:<32} {:<13} {:>9}  {:<22} IMPORTED",
        "SOURCE", "KIND", "RECORDS", "NEWEST"
    );
    for s in sources {
        println!(
            "{:<32} {:<13} {:>9}  {:<22} {}",
            s.source,
            s.kind,
            s.records,
            s.newest.as_deref().unwrap_or("-"),
            when(s.imported_at)
        );
    }
}

pub fn scan(args: ScanArgs) -> Result<ExitCode, String> {
    runtime()?.block_on(async move {
        let meta = connect(args.db).await?;
        let result = scan_image(&meta, &args.image, args.platform.as_deref(), args.reindex).await;
        meta.close().await;
        let mut report = result?;
        report.retain(|f| {
            (args.severity.is_empty() || args.severity.contains(&f.severity))
                && (!args.fixable || f.fixable)
        });
        for w in &report.warnings {
            eprintln!("wharf: warning: {}: {}", w.location, w.reason);
        }
        if args.json {
            let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            emit(&format!("{text}\n"));
        } else {
            emit(&render_report(&report));
        }
        // Unknown is the lowest severity, so any other threshold leaves unscored findings out;
        // `--fail-on unknown` does not fail on everything.
        let failing = args
            .fail_on
            .filter(|t| *t != Severity::Unknown)
            .is_some_and(|t| report.findings.iter().any(|f| f.severity >= t));
        Ok(if failing {
            ExitCode::from(FAIL_ON_EXIT)
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn scan_image(
    meta: &Meta,
    image: &Path,
    platform: Option<&str>,
    reindex: bool,
) -> Result<Report, String> {
    if meta.vuln_sources().await.map_err(db_err)?.is_empty() {
        return Err(
            "no vulnerability data imported; run `wharf vulndb import <files or dirs>` first"
                .to_string(),
        );
    }
    let path = image.to_path_buf();
    let platform = platform.map(str::to_string);
    let source = tokio::task::spawn_blocking(move || {
        wharf_scan::image::open(&path, platform.as_deref()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let id = source.id().to_string();
    let stored = if reindex {
        None
    } else {
        scanning::stored_inventory(meta, &id)
            .await
            .map_err(db_err)?
    };
    let inventory = match stored {
        Some(inv) => inv,
        None => {
            let inv =
                tokio::task::spawn_blocking(move || wharf_scan::walk::inventory(source.as_ref()))
                    .await
                    .map_err(|e| e.to_string())?;
            scanning::save_inventory(meta, &inv).await.map_err(db_err)?;
            inv
        }
    };
    scanning::match_inventory(meta, &inventory)
        .await
        .map_err(|e| match e {
            scanning::MatchError::Meta(e) => db_err(e),
            other => other.to_string(),
        })
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn render_report(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let os =
        r.os.as_ref()
            .map(|o| {
                o.pretty_name.clone().unwrap_or_else(|| {
                    format!("{} {}", o.id, o.version_id.as_deref().unwrap_or(""))
                })
            })
            .unwrap_or_else(|| "unknown".to_string());
    let _ = writeln!(out, "image:    {}", r.image);
    let _ = writeln!(out, "os:       {os}");
    let _ = writeln!(out, "packages: {}", r.packages);
    if let Some(reason) = &r.unknown {
        let _ = writeln!(out, "status:   unknown: {reason}");
    }
    if r.partial {
        let _ = writeln!(
            out,
            "partial:  yes, {} part(s) could not be read (see the warnings)",
            r.warnings.len()
        );
    }
    let _ = writeln!(out);
    if !r.findings.is_empty() {
        let width = |f: &dyn Fn(&matcher::Finding) -> usize, min: usize| {
            r.findings.iter().map(f).max().unwrap_or(0).max(min)
        };
        let wp = width(&|f| f.package.len(), 7);
        let wi = width(&|f| f.installed.len(), 9);
        let wf = width(&|f| f.fixed.as_deref().unwrap_or("-").len(), 5);
        let wv = width(&|f| f.id.len(), 13);
        let _ = writeln!(
            out,
            "{:<wp$}  {:<wi$}  {:<wf$}  {:<wv$}  {:<8}  SOURCE",
            "PACKAGE", "INSTALLED", "FIXED", "VULNERABILITY", "SEVERITY"
        );
        for f in &r.findings {
            let _ = writeln!(
                out,
                "{:<wp$}  {:<wi$}  {:<wf$}  {:<wv$}  {:<8}  {}",
                f.package,
                f.installed,
                f.fixed.as_deref().unwrap_or("-"),
                f.id,
                f.severity.as_str(),
                f.sources.join(",")
            );
        }
        let _ = writeln!(out);
    }
    let parts: Vec<String> = Severity::ALL
        .iter()
        .map(|s| format!("{} {}", r.summary.get(s).copied().unwrap_or(0), s.as_str()))
        .collect();
    let packages: BTreeSet<&str> = r.findings.iter().map(|f| f.package.as_str()).collect();
    let _ = writeln!(
        out,
        "{} vulnerabilities in {} packages: {}",
        r.findings.len(),
        packages.len(),
        parts.join(", ")
    );
    out
}
