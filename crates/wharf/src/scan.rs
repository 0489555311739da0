//! `wharf vulndb import|status` and `wharf scan`: the offline scanner on image files, against
//! the vulnerability database kept in wharf's metadata store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wharf_meta::Meta;
use wharf_scan::cvss::Severity;
use wharf_scan::matcher::{self, Report};
use wharf_server::{scanning, vulndb};

use reqwest::Method;
use serde_json::Value;

use crate::admin::{encode, table, text, Client, Connection};
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
    /// Show the database's version and counts, the imported sources with their record counts
    /// and dates, and the scheduled imports' last run.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Ask the server to import its configured sources (--vulndb-source) now, and wait for
    /// the run's report.
    Update {
        /// Return once the import is asked for.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// A vulnerability's details, by its ID or any alias: description, scores by source with
    /// their vectors, fixed versions, references and the sources it comes from.
    Show {
        /// CVE-2024-1234, GHSA-..., DSA-...
        id: String,
        #[command(flatten)]
        conn: Connection,
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
    match command {
        VulndbCommand::Import { paths, db } => runtime()?.block_on(async {
            let files = vulndb::import_files(&paths)?;
            let meta = connect(db).await?;
            let result = import(&meta, &files).await;
            meta.close().await;
            result
        }),
        VulndbCommand::Status { json, db } => runtime()?.block_on(async {
            let (url, config) = db.load()?;
            let meta = Meta::connect(&url)
                .await
                .map_err(|e| format!("metadata database: {e}"))?;
            let status =
                wharf_server::vulndb_status(&meta, &config.vulndb_sources, config.vulndb_interval)
                    .await
                    .map_err(db_err);
            meta.close().await;
            let status = serde_json::to_value(status?).map_err(|e| e.to_string())?;
            if json {
                println!("{status}");
            } else {
                print_status(&status);
            }
            Ok(())
        }),
        // These go through the server's API.
        VulndbCommand::Update { no_wait, conn } => {
            let client = Client::new(conn)?;
            let asked = client.call(Method::POST, "/api/v1/system/vulndb/imports", None)?;
            let asked_at = text(&asked["requested_at"]);
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("importing");
            let status = loop {
                let status = client.call(Method::GET, "/api/v1/system/vulndb", None)?;
                let run = &status["schedule"]["last_run"];
                // RFC 3339 times of one format compare as text.
                let done = run["finished_at"].as_str().is_some_and(|f| {
                    run["started_at"].as_str() >= Some(asked_at.as_str()) && !f.is_empty()
                });
                if no_wait || done {
                    break status;
                }
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(300));
            };
            bar.finish_and_clear();
            if no_wait {
                println!("import asked for at {asked_at}; `wharf vulndb status` shows its report");
                return Ok(());
            }
            let run = &status["schedule"]["last_run"];
            client.print(run, |run| {
                for f in run["files"].as_array().into_iter().flatten() {
                    println!("{}", file_line(f));
                }
            });
            let failed = run["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["error"].is_string())
                .count();
            if failed > 0 {
                return Err(format!(
                    "{failed} of {} sources could not be imported",
                    run["files"].as_array().map_or(0, Vec::len)
                ));
            }
            Ok(())
        }
        VulndbCommand::Show { id, conn } => {
            let client = Client::new(conn)?;
            let v = client.call(
                Method::GET,
                &format!("/api/v1/vulnerabilities/{}", encode(&id)),
                None,
            )?;
            client.print(&v, print_vulnerability);
            Ok(())
        }
    }
}

/// A file report of an import run, as `wharf vulndb import` prints it.
fn file_line(f: &Value) -> String {
    match serde_json::from_value::<vulndb::FileReport>(f.clone()) {
        Ok(r) if r.error.is_some() => format!("wharf: error: {}", r.line()),
        Ok(r) => r.line(),
        Err(_) => f.to_string(),
    }
}

fn print_vulnerability(v: &Value) {
    println!("{}", text(&v["id"]));
    let aliases: Vec<String> = v["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !aliases.is_empty() {
        println!("aliases:    {}", aliases.join(", "));
    }
    let score = v["score"]
        .as_f64()
        .map(|s| format!(" ({s:.1})"))
        .unwrap_or_default();
    println!("severity:   {}{score}", text(&v["severity"]));
    for (label, key) in [("published", "published"), ("modified", "modified")] {
        if v[key].is_string() {
            println!("{label:<11} {}", text(&v[key]));
        }
    }
    if let Some(s) = v["summary"].as_str() {
        println!("summary:    {s}");
    }
    if let Some(d) = v["description"].as_str() {
        println!("\n{}\n", d.trim());
    }
    let scores: Vec<Vec<String>> = v["scores"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["source"]),
                text(&s["id"]),
                text(&s["version"]),
                text(&s["score"]),
                text(&s["severity"]),
                text(&s["vector"]),
            ]
        })
        .collect();
    if !scores.is_empty() {
        println!();
        table(
            &["SOURCE", "ID", "CVSS", "SCORE", "SEVERITY", "VECTOR"],
            scores,
        );
    }
    let affected: Vec<Vec<String>> = v["affected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let fixed: Vec<String> = a["fixed"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            vec![
                text(&a["source"]),
                text(&a["ecosystem"]),
                text(&a["package"]),
                if fixed.is_empty() {
                    "not fixed".to_string()
                } else {
                    fixed.join(", ")
                },
            ]
        })
        .collect();
    if !affected.is_empty() {
        println!();
        table(&["SOURCE", "ECOSYSTEM", "PACKAGE", "FIXED IN"], affected);
    }
    let refs: Vec<String> = v["references"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !refs.is_empty() {
        println!("\nreferences:");
        for r in refs {
            println!("  {r}");
        }
    }
    let sources: Vec<String> = v["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} ({}: {})",
                text(&s["source"]),
                text(&s["kind"]),
                text(&s["advisory"])
            )
        })
        .collect();
    println!("\nsources:    {}", sources.join(", "));
}

/// Progress of `wharf vulndb import` on the terminal: lines above the progress bar, which is
/// hidden without a terminal (lines then go straight to standard output).
struct BarProgress(indicatif::ProgressBar);

impl BarProgress {
    fn say(&self, line: String) {
        if self.0.is_hidden() {
            println!("{line}");
        } else {
            self.0.println(line);
        }
    }
}

impl vulndb::Progress for BarProgress {
    fn reading(&self, location: &str, records: u64) {
        self.0.set_message(format!("{location}: {records} records"));
    }

    fn warn(&self, line: String) {
        self.say(format!("wharf: warning: {line}"));
    }
}

async fn import(meta: &Meta, files: &[(PathBuf, bool)]) -> Result<(), String> {
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = BarProgress(bar);
    let reports = vulndb::import(meta, files, &progress, &mut |r| {
        match &r.error {
            Some(_) => progress.say(format!("wharf: error: {}", r.line())),
            None => progress.say(r.line()),
        }
        progress.0.inc(1);
    })
    .await;
    progress.0.finish_and_clear();
    // Scans matched against the database as it was are matched again by the servers.
    vulndb::publish(meta, &reports).await.map_err(db_err)?;
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        return Err(format!(
            "{failed} of {} files could not be imported",
            files.len()
        ));
    }
    Ok(())
}

fn print_status(status: &Value) {
    let sched = &status["schedule"];
    println!(
        "version {}: {} advisories, {} scores; last changed {}",
        text(&status["version"]),
        text(&status["advisories"]),
        text(&status["scores"]),
        text(&status["changed_at"])
    );
    let configured: Vec<String> = sched["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let run = &sched["last_run"];
    if configured.is_empty() {
        // The sources are a server's settings; this configuration may not be the server's.
        if !run.is_object() {
            println!("scheduled imports: none (wharf serve --vulndb-source)");
        }
    } else {
        println!(
            "scheduled imports: every {} of {}; next at {}",
            humantime::format_duration(std::time::Duration::from_secs(
                sched["interval_seconds"].as_u64().unwrap_or(0)
            )),
            configured.join(", "),
            text(&sched["next_run_at"])
        );
    }
    if run.is_object() {
        let state = match run["finished_at"].as_str() {
            Some(f) => format!("finished {f}"),
            None if sched["running"] == true => "running".to_string(),
            None => "did not finish".to_string(),
        };
        println!(
            "last scheduled run: started {}, {state}",
            text(&run["started_at"])
        );
        for f in run["files"].as_array().into_iter().flatten() {
            println!("  {}", file_line(f));
        }
    }
    let sources = status["sources"].as_array().cloned().unwrap_or_default();
    if sources.is_empty() {
        println!("no vulnerability data imported; run `wharf vulndb import <files or dirs>`");
        return;
    }
    println!();
    table(
        &["SOURCE", "KIND", "RECORDS", "NEWEST", "IMPORTED"],
        sources
            .iter()
            .map(|s| {
                vec![
                    text(&s["source"]),
                    text(&s["kind"]),
                    text(&s["records"]),
                    text(&s["newest"]),
                    text(&s["imported_at"]),
                ]
            })
            .collect(),
    );
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
