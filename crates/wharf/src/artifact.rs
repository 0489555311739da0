//! `wharf artifact ...`: what scans found in the images of a registry, through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use crate::admin::{all_pages, encode, table, text, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// A repository's artifacts, newest first: tags, last push and pull, scan.
    List {
        registry: String,
        repository: String,
    },
    /// The images of a registry a vulnerability was found in (by its ID or any alias).
    Affected {
        registry: String,
        /// CVE-2024-1234, GHSA-..., DSA-...
        id: String,
    },
    /// An artifact's scan: status, highest severity, counts (and each image of an index).
    Show {
        registry: String,
        /// REPOSITORY:TAG, REPOSITORY@DIGEST or REPOSITORY (the tag latest).
        artifact: String,
    },
    /// An image's vulnerabilities, most severe first.
    Vulns {
        registry: String,
        /// REPOSITORY:TAG, REPOSITORY@DIGEST or REPOSITORY (the tag latest).
        artifact: String,
        /// Only these severities (comma-separated: critical,high,medium,low,none,unknown).
        #[arg(long)]
        severity: Option<String>,
        /// Only vulnerabilities with a fixed version.
        #[arg(long)]
        fixable: bool,
    },
    /// An image's SBOM, made from its last scan's package inventory: printed, written to a
    /// file, or attached to the image as an OCI referrer.
    Sbom {
        registry: String,
        /// REPOSITORY:TAG, REPOSITORY@DIGEST or REPOSITORY (the tag latest).
        artifact: String,
        /// spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.5 JSON).
        #[arg(long, default_value = "spdx")]
        format: String,
        /// Write the document to this file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// Push it to the image's repository with the image as its subject.
        #[arg(long, conflicts_with = "output")]
        attach: bool,
    },
}

/// `repo:tag`, `repo@digest` or `repo` as (repository, reference).
fn split_artifact(artifact: &str) -> Result<(&str, &str), String> {
    let (repo, reference) = match artifact.split_once('@') {
        Some(parts) => parts,
        None => match artifact.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (artifact, "latest"),
        },
    };
    if repo.is_empty() || reference.is_empty() {
        return Err(format!(
            "{artifact:?} is not REPOSITORY:TAG, REPOSITORY@DIGEST or REPOSITORY"
        ));
    }
    Ok((repo, reference))
}

fn artifact_path(registry: &str, artifact: &str) -> Result<String, String> {
    let (repo, reference) = split_artifact(artifact)?;
    Ok(format!(
        "/api/v1/registries/{}/artifacts/{}/-/{}",
        encode(registry),
        encode(repo),
        encode(reference)
    ))
}

/// `12 critical, 3 high` from a scan's summary, most severe first.
fn summary_text(scan: &Value) -> String {
    let order = ["critical", "high", "medium", "low", "none", "unknown"];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            scan["summary"][*s]
                .as_i64()
                .filter(|n| *n > 0)
                .map(|n| format!("{n} {s}"))
        })
        .collect();
    if parts.is_empty() {
        "no vulnerabilities".into()
    } else {
        parts.join(", ")
    }
}

fn status_text(scan: &Value) -> String {
    match scan["status"].as_str() {
        Some("scanned") => format!("scanned {}", text(&scan["scanned_at"])),
        Some("unknown") => format!("unknown: {}", text(&scan["reason"])),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    }
}

pub fn artifact(conn: Connection, cmd: ArtifactCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        ArtifactCommand::List {
            registry,
            repository,
        } => {
            let path = format!(
                "/api/v1/registries/{}/artifacts/{}",
                encode(&registry),
                encode(&repository)
            );
            let items = Value::Array(all_pages(&client, &path)?);
            client.print(&items, |items| {
                let rows = items
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            text(&a["tags"]),
                            text(&a["digest"]),
                            status_text(&a["scan"]),
                            text(&a["scan"]["highest_severity"]),
                            text(&a["pushed_at"]),
                            text(&a["pulled_at"]),
                        ]
                    })
                    .collect();
                table(
                    &["TAGS", "DIGEST", "SCAN", "HIGHEST", "PUSHED", "PULLED"],
                    rows,
                );
            });
        }
        ArtifactCommand::Affected { registry, id } => {
            let path = format!(
                "/api/v1/registries/{}/vulnerabilities/{}",
                encode(&registry),
                encode(&id)
            );
            let items = Value::Array(all_pages(&client, &path)?);
            client.print(&items, |items| {
                let list = items.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no scanned image of {registry} has {id}");
                    return;
                }
                let rows = list
                    .iter()
                    .map(|a| {
                        vec![
                            text(&a["repository"]),
                            text(&a["digest"]),
                            text(&a["package"]),
                            text(&a["installed"]),
                            text(&a["fixed"]),
                            text(&a["severity"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "REPOSITORY",
                        "DIGEST",
                        "PACKAGE",
                        "INSTALLED",
                        "FIXED",
                        "SEVERITY",
                    ],
                    rows,
                );
            });
        }
        ArtifactCommand::Show { registry, artifact } => {
            let path = artifact_path(&registry, &artifact)?;
            let a = client.call(Method::GET, &path, None)?;
            client.print(&a, |a| {
                let scan = &a["scan"];
                println!("digest:   {}", text(&a["digest"]));
                println!("type:     {}", text(&a["media_type"]));
                println!("scan:     {}", status_text(scan));
                if scan["status"] == "scanned" {
                    println!("os:       {}", text(&scan["os"]));
                    println!("packages: {}", text(&scan["packages"]));
                    println!("found:    {}", summary_text(scan));
                }
                if let Some(platforms) = a["platforms"].as_array() {
                    println!();
                    let rows = platforms
                        .iter()
                        .map(|p| {
                            vec![
                                text(&p["platform"]),
                                text(&p["digest"]),
                                status_text(&p["scan"]),
                                text(&p["scan"]["highest_severity"]),
                            ]
                        })
                        .collect();
                    table(&["PLATFORM", "DIGEST", "SCAN", "HIGHEST"], rows);
                }
            });
        }
        ArtifactCommand::Sbom {
            registry,
            artifact,
            format,
            output,
            attach,
        } => {
            if attach {
                let (repository, reference) = split_artifact(&artifact)?;
                let r = client.call(
                    Method::POST,
                    &format!("/api/v1/registries/{}/sboms", encode(&registry)),
                    Some(serde_json::json!({
                        "repository": repository, "reference": reference, "format": format,
                    })),
                )?;
                client.print(&r, |r| {
                    println!(
                        "attached {} to {} as {}@{}",
                        text(&r["artifact_type"]),
                        text(&r["subject"]),
                        text(&r["repository"]),
                        text(&r["digest"])
                    )
                });
                return Ok(());
            }
            let path = format!(
                "{}/sbom?format={}",
                artifact_path(&registry, &artifact)?,
                encode(&format)
            );
            let doc = client.call(Method::GET, &path, None)?;
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
            match output {
                Some(file) => {
                    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?
                }
                None => {
                    use std::io::Write;
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                }
            }
        }
        ArtifactCommand::Vulns {
            registry,
            artifact,
            severity,
            fixable,
        } => {
            let mut path = format!("{}/vulnerabilities", artifact_path(&registry, &artifact)?);
            let mut query = Vec::new();
            if let Some(s) = &severity {
                query.push(format!("severity={}", encode(s)));
            }
            if fixable {
                query.push("fixable=true".to_string());
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            // The first page says where the scan stands; the rest only adds findings.
            let first = client.call(Method::GET, &path, None)?;
            let items = if first["next"].is_string() {
                all_pages(&client, &path)?
            } else {
                first["items"].as_array().cloned().unwrap_or_default()
            };
            let mut all = first.clone();
            all["items"] = Value::Array(items);
            all["next"] = Value::Null;
            client.print(&all, |page| {
                let scan = &page["scan"];
                let items = page["items"].as_array().cloned().unwrap_or_default();
                if scan["status"] != "scanned" {
                    println!("scan: {}", status_text(scan));
                    return;
                }
                let rows = items
                    .iter()
                    .map(|f| {
                        vec![
                            text(&f["package"]),
                            text(&f["installed"]),
                            text(&f["fixed"]),
                            text(&f["id"]),
                            text(&f["severity"]),
                            f["score"]
                                .as_f64()
                                .map_or("-".to_string(), |s| format!("{s:.1}")),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "PACKAGE",
                        "INSTALLED",
                        "FIXED",
                        "VULNERABILITY",
                        "SEVERITY",
                        "SCORE",
                    ],
                    rows,
                );
                println!();
                println!(
                    "{} vulnerabilities shown; {} ({})",
                    items.len(),
                    summary_text(scan),
                    status_text(scan)
                );
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_split_into_repository_and_reference() {
        assert_eq!(split_artifact("team/app:v1"), Ok(("team/app", "v1")));
        assert_eq!(split_artifact("app@sha256:abc"), Ok(("app", "sha256:abc")));
        assert_eq!(split_artifact("team/app"), Ok(("team/app", "latest")));
        assert!(split_artifact("app:").is_err());
        assert!(split_artifact("@sha256:abc").is_err());
    }
}
