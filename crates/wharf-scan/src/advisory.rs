//! Advisories as the scanner stores and matches them, and readers for the files they come in:
//! OSV JSON (one object, or JSON lines, optionally gzipped), Alpine secdb JSON, and the CVSS
//! tables (NVD and vulnrichment TSV). Readers stream record by record; a malformed record is
//! skipped with a warning naming the file and line.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    /// The imported source it came from (a file's name, or the secdb branch and repository).
    pub source: String,
    #[serde(default)]
    pub modified: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// CVSS vectors the advisory itself carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cvss: Vec<String>,
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    pub ecosystem: String,
    /// As written in the advisory; `key` is what lookups use.
    pub package: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// The name advisories are looked up by: PyPI names are normalised (PEP 503); the rest are
/// compared as written.
pub fn package_key(ecosystem: &str, package: &str) -> String {
    if ecosystem == "PyPI" {
        crate::detect::normalize_python_name(package)
    } else {
        package.to_string()
    }
}

impl Advisory {
    /// The (ecosystem, package key) pairs to store the advisory under.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.affected
            .iter()
            .map(|a| (a.ecosystem.clone(), package_key(&a.ecosystem, &a.package)))
            .collect()
    }
}

/// A CVSS score from a scoring table.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub cve: String,
    pub source: String,
    /// "2.0", "3.0", "3.1" or "4.0".
    pub version: String,
    pub vector: Option<String>,
    pub score: f64,
    pub modified: Option<String>,
}

/// One record read from an import file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Advisory(Box<Advisory>),
    Score(Score),
}

/// What a file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Osv,
    AlpineSecdb,
    NvdScores,
    VulnrichmentScores,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Osv => "osv",
            FileKind::AlpineSecdb => "alpine-secdb",
            FileKind::NvdScores | FileKind::VulnrichmentScores => "scores",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Unsupported(String),
    /// The callback refused a record (the database failed, say).
    #[error("{0}")]
    Sink(String),
}

/// A record that could not be read, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub location: String,
    pub reason: String,
}

/// Opens a file, undoing gzip if its first bytes say so.
fn open(path: &Path) -> Result<Box<dyn BufRead>, ImportError> {
    let io_err = |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = BufReader::new(std::fs::File::open(path).map_err(io_err)?);
    let gz = file.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(file)))
    } else {
        Box::new(file)
    })
}

/// The source name of a file: its name without `.gz`, `.zip`, `.jsonl`, `.json`, `.tsv`.
pub fn source_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".gz", ".zip", ".jsonl", ".json", ".tsv"] {
        if let Some(stem) = name.strip_suffix(ext) {
            name = stem.to_string();
        }
    }
    name
}

/// Whether the file is a zip archive (OSV publishes its dumps as zips of JSON records).
fn is_zip(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

/// The largest record read from a zip: OSV records are a few KiB; a bigger entry is skipped.
const MAX_ZIP_RECORD: u64 = 16 * 1024 * 1024;

/// An OSV dump as a zip: one JSON record per `.json` entry, read one at a time.
fn read_zip(
    path: &Path,
    display: &str,
    source: &str,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<(), ImportError> {
    let file = std::fs::File::open(path).map_err(|e| ImportError::Io {
        path: display.to_string(),
        source: e,
    })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ImportError::Unsupported(format!("{display}: unreadable zip: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = match zip.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                bad(BadRecord {
                    location: format!("{display}: entry {i}"),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let name = entry.name().map(|n| n.to_string()).unwrap_or_default();
        if entry.is_dir() || !name.ends_with(".json") {
            continue;
        }
        let location = format!("{display}!{name}");
        let mut bytes = Vec::new();
        let read = (&mut entry)
            .take(MAX_ZIP_RECORD + 1)
            .read_to_end(&mut bytes);
        let parsed = match read {
            Err(e) => Err(e.to_string()),
            Ok(_) if bytes.len() as u64 > MAX_ZIP_RECORD => {
                Err(format!("larger than the {MAX_ZIP_RECORD} bytes read"))
            }
            Ok(_) => parse_osv(&bytes, source),
        };
        match parsed {
            Ok(a) => sink(Record::Advisory(Box::new(a))).map_err(ImportError::Sink)?,
            Err(reason) => bad(BadRecord { location, reason }),
        }
    }
    Ok(())
}

/// Reads one import file, calling `sink` with every record and `bad` with every record that
/// could not be read. Returns the file's kind and the source name its records carry.
pub fn read_file(
    path: &Path,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<(FileKind, String), ImportError> {
    let display = path.display().to_string();
    let io_err = |source| ImportError::Io {
        path: display.clone(),
        source,
    };
    if is_zip(path).map_err(io_err)? {
        let source = source_name(path);
        read_zip(path, &display, &source, sink, bad)?;
        return Ok((FileKind::Osv, source));
    }
    let mut reader = open(path)?;
    let head = reader.fill_buf().map_err(io_err)?.to_vec();
    let head_text = String::from_utf8_lossy(&head[..head.len().min(4096)]).into_owned();
    let first_line = head_text.lines().next().unwrap_or("");
    if first_line.starts_with("cve\tlast_modified\tcvss3_vector") {
        read_nvd(reader, &display, sink, bad)?;
        return Ok((FileKind::NvdScores, "nvd".to_string()));
    }
    if first_line.starts_with("cve\tsource\tversion\tvector") {
        read_vulnrichment(reader, &display, sink, bad)?;
        return Ok((FileKind::VulnrichmentScores, "vulnrichment".to_string()));
    }
    let trimmed = head_text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(ImportError::Unsupported(format!(
            "{display}: not an OSV JSON, Alpine secdb or CVSS table file"
        )));
    }
    // One JSON document per line (OSV dumps), or one document for the whole file (a single
    // OSV advisory, or an Alpine secdb file, which spans many lines).
    let is_lines = first_line.trim_start().starts_with('{') && first_line.trim_end().ends_with('}');
    if is_lines {
        let source = source_name(path);
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(io_err)?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_osv(line.as_bytes(), &source) {
                Ok(a) => sink(Record::Advisory(Box::new(a))).map_err(ImportError::Sink)?,
                Err(reason) => bad(BadRecord {
                    location: format!("{display}:{}", n + 1),
                    reason,
                }),
            }
        }
        return Ok((FileKind::Osv, source));
    }
    let mut whole = Vec::new();
    reader
        .take(256 << 20)
        .read_to_end(&mut whole)
        .map_err(io_err)?;
    let value: serde_json::Value = serde_json::from_slice(&whole)
        .map_err(|e| ImportError::Unsupported(format!("{display}: invalid JSON: {e}")))?;
    if value.get("distroversion").is_some() && value.get("packages").is_some() {
        let source = read_secdb(&value, &display, sink, bad)?;
        return Ok((FileKind::AlpineSecdb, source));
    }
    let source = source_name(path);
    match parse_osv_value(value, &source) {
        Ok(a) => sink(Record::Advisory(Box::new(a))).map_err(ImportError::Sink)?,
        Err(reason) => bad(BadRecord {
            location: display,
            reason,
        }),
    }
    Ok((FileKind::Osv, source))
}

#[derive(Deserialize)]
struct OsvDoc {
    id: String,
    #[serde(default)]
    modified: String,
    published: Option<String>,
    withdrawn: Option<String>,
    summary: Option<String>,
    details: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    references: Vec<OsvReference>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
}

#[derive(Deserialize)]
struct OsvReference {
    url: String,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

fn parse_osv(bytes: &[u8], source: &str) -> Result<Advisory, String> {
    let doc: OsvDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OSV record: {e}"))?;
    osv_to_advisory(doc, source)
}

fn parse_osv_value(value: serde_json::Value, source: &str) -> Result<Advisory, String> {
    let doc: OsvDoc =
        serde_json::from_value(value).map_err(|e| format!("not an OSV record: {e}"))?;
    osv_to_advisory(doc, source)
}

fn is_cvss_vector(s: &str) -> bool {
    s.starts_with("CVSS:3.") || s.starts_with("CVSS:4.")
}

fn osv_to_advisory(doc: OsvDoc, source: &str) -> Result<Advisory, String> {
    if doc.id.trim().is_empty() {
        return Err("OSV record without an id".to_string());
    }
    let mut cvss: Vec<String> = doc
        .severity
        .iter()
        .filter(|s| s.kind.starts_with("CVSS_") && is_cvss_vector(&s.score))
        .map(|s| s.score.clone())
        .collect();
    let mut affected = Vec::new();
    for a in doc.affected {
        cvss.extend(
            a.severity
                .iter()
                .filter(|s| s.kind.starts_with("CVSS_") && is_cvss_vector(&s.score))
                .map(|s| s.score.clone()),
        );
        // RustSec keeps its vector in database_specific.cvss.
        if let Some(v) = a
            .database_specific
            .as_ref()
            .and_then(|d| d.get("cvss"))
            .and_then(|v| v.as_str())
            .filter(|v| is_cvss_vector(v))
        {
            cvss.push(v.to_string());
        }
        let Some(package) = a.package else {
            continue;
        };
        affected.push(Affected {
            ecosystem: package.ecosystem,
            package: package.name,
            ranges: a.ranges,
            versions: a.versions,
        });
    }
    cvss.sort();
    cvss.dedup();
    if affected.is_empty() {
        return Err(format!("{}: names no affected package", doc.id));
    }
    Ok(Advisory {
        id: doc.id,
        source: source.to_string(),
        modified: doc.modified,
        published: doc.published,
        withdrawn: doc.withdrawn,
        summary: doc.summary,
        details: doc.details,
        aliases: doc.aliases,
        references: doc.references.into_iter().map(|r| r.url).collect(),
        cvss,
        affected,
    })
}

/// Alpine secdb: `packages[].pkg.{name, secfixes: {version: [ids]}}` for one branch and
/// repository. Each (package, vulnerability) becomes an advisory fixed in that version.
/// Version `0` marks a vulnerability Alpine's maintainers found not to affect the package:
/// it is stored without a range, so it never matches.
fn read_secdb(
    value: &serde_json::Value,
    display: &str,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<String, ImportError> {
    let branch = value["distroversion"].as_str().unwrap_or("").to_string();
    let repo = value["reponame"].as_str().unwrap_or("main");
    let Some(minor) = branch
        .strip_prefix('v')
        .filter(|v| v.split('.').count() == 2 && v.split('.').all(|p| p.parse::<u32>().is_ok()))
        .map(|_| branch.clone())
        .or_else(|| (branch == "edge").then(|| branch.clone()))
    else {
        return Err(ImportError::Unsupported(format!(
            "{display}: unknown Alpine branch {branch:?}"
        )));
    };
    let source = format!("alpine-secdb-{minor}-{repo}");
    let ecosystem = if minor == "edge" {
        "Alpine:edge".to_string()
    } else {
        format!("Alpine:{minor}")
    };
    let packages = value["packages"].as_array().cloned().unwrap_or_default();
    // A vulnerability may be listed under several versions of one package (a fix, then a
    // regression fixed again); the advisory is one, fixed at its earliest real fix.
    let mut fixes: std::collections::BTreeMap<(String, String), Vec<String>> = Default::default();
    for (n, p) in packages.iter().enumerate() {
        let location = format!("{display}: packages[{n}]");
        let Some(name) = p["pkg"]["name"].as_str() else {
            bad(BadRecord {
                location,
                reason: "package without a name".to_string(),
            });
            continue;
        };
        let Some(secfixes) = p["pkg"]["secfixes"].as_object() else {
            continue;
        };
        for (version, ids) in secfixes {
            if version != "0" && !crate::version::apk_is_valid(version) {
                bad(BadRecord {
                    location: format!("{location} ({name})"),
                    reason: format!("invalid apk version {version:?}"),
                });
                continue;
            }
            for entry in ids.as_array().into_iter().flatten() {
                // Entries are IDs, sometimes several in one string, sometimes with notes.
                for id in entry
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .filter(|t| looks_like_id(t))
                {
                    fixes
                        .entry((id.to_string(), name.to_string()))
                        .or_default()
                        .push(version.clone());
                }
            }
        }
    }
    for ((id, name), versions) in fixes {
        let earliest = versions
            .iter()
            .filter(|v| *v != "0")
            .min_by(|a, b| crate::version::apk(a, b).unwrap_or(std::cmp::Ordering::Equal));
        let ranges = match earliest {
            None => Vec::new(),
            Some(fixed) => vec![Range {
                kind: "ECOSYSTEM".to_string(),
                events: vec![
                    Event {
                        introduced: Some("0".to_string()),
                        ..Event::default()
                    },
                    Event {
                        fixed: Some(fixed.clone()),
                        ..Event::default()
                    },
                ],
            }],
        };
        let advisory = Advisory {
            id: format!("{id}/{name}"),
            source: source.clone(),
            modified: String::new(),
            published: None,
            withdrawn: None,
            summary: None,
            details: None,
            aliases: vec![id],
            references: Vec::new(),
            cvss: Vec::new(),
            affected: vec![Affected {
                ecosystem: ecosystem.clone(),
                package: name,
                ranges,
                versions: Vec::new(),
            }],
        };
        sink(Record::Advisory(Box::new(advisory))).map_err(ImportError::Sink)?;
    }
    Ok(source)
}

fn looks_like_id(t: &str) -> bool {
    let mut parts = t.splitn(2, '-');
    let prefix = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    prefix.len() >= 2
        && prefix.bytes().all(|c| c.is_ascii_uppercase())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// Reads a TSV scoring table line by line: `scores` turns the columns of one line into scores,
/// each handed to `sink`; a line it refuses is reported to `bad`.
fn tsv_lines(
    reader: Box<dyn BufRead>,
    display: &str,
    columns: usize,
    scores: impl Fn(&[&str]) -> Result<Vec<Score>, String>,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<(), ImportError> {
    for (n, line) in reader.lines().enumerate().skip(1) {
        let line = line.map_err(|source| ImportError::Io {
            path: display.to_string(),
            source,
        })?;
        if line.is_empty() {
            continue;
        }
        let location = format!("{display}:{}", n + 1);
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < columns || !f[0].starts_with("CVE-") {
            bad(BadRecord {
                location,
                reason: format!("expected {columns} tab-separated columns starting with a CVE"),
            });
            continue;
        }
        match scores(&f) {
            Ok(list) => {
                for s in list {
                    sink(Record::Score(s)).map_err(ImportError::Sink)?;
                }
            }
            Err(reason) => bad(BadRecord { location, reason }),
        }
    }
    Ok(())
}

fn score_value(text: &str, vector: &str) -> Result<Option<f64>, String> {
    if !text.is_empty() {
        let v: f64 = text
            .parse()
            .map_err(|_| format!("invalid score {text:?}"))?;
        if !(0.0..=10.0).contains(&v) {
            return Err(format!("score {v} outside 0-10"));
        }
        return Ok(Some(v));
    }
    if vector.is_empty() {
        return Ok(None);
    }
    crate::cvss::base_score(vector).map(Some)
}

/// NVD: cve, last_modified, cvss3_vector, cvss3_score, cvss3_severity, cvss2_vector,
/// cvss2_score, cvss2_severity.
fn read_nvd(
    reader: Box<dyn BufRead>,
    display: &str,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<(), ImportError> {
    let scores = |f: &[&str]| {
        let modified = Some(f[1].to_string()).filter(|m| !m.is_empty());
        let score = |version: &str, vector: &str, value: f64| Score {
            cve: f[0].to_string(),
            source: "nvd".to_string(),
            version: version.to_string(),
            vector: Some(vector.to_string()).filter(|v| !v.is_empty()),
            score: value,
            modified: modified.clone(),
        };
        let mut out = Vec::new();
        if let Some(value) = score_value(f[3], f[2])? {
            let version = f[2]
                .strip_prefix("CVSS:")
                .and_then(|v| v.split('/').next())
                .unwrap_or("3.x");
            out.push(score(version, f[2], value));
        }
        if !f[6].is_empty() {
            let value: f64 = f[6]
                .parse()
                .map_err(|_| format!("invalid score {:?}", f[6]))?;
            out.push(score("2.0", f[5], value));
        }
        Ok(out)
    };
    tsv_lines(reader, display, 7, scores, sink, bad)
}

/// vulnrichment: cve, source (CISA-ADP or the CNA), version, vector, base_score, base_severity.
fn read_vulnrichment(
    reader: Box<dyn BufRead>,
    display: &str,
    sink: &mut dyn FnMut(Record) -> Result<(), String>,
    bad: &mut dyn FnMut(BadRecord),
) -> Result<(), ImportError> {
    let scores = |f: &[&str]| {
        let Some(score) = score_value(f[4], f[3])? else {
            return Err("neither a score nor a vector".to_string());
        };
        Ok(vec![Score {
            cve: f[0].to_string(),
            source: f[1].to_string(),
            version: f[2].to_string(),
            vector: Some(f[3].to_string()).filter(|v| !v.is_empty()),
            score,
            modified: None,
        }])
    };
    tsv_lines(reader, display, 5, scores, sink, bad)
}
