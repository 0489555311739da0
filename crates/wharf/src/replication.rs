//! `wharf replication ...`: push replication rules of a registry, their status and history,
//! through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::admin::{confirm, encode, text, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum ReplicationCommand {
    /// The replication rules of a registry, with their status.
    List { registry: String },
    /// Adds a rule: each push to a matching repository (and tag) is copied to the upstream,
    /// with its index children and referrers, retried with back-off when it fails.
    Create {
        registry: String,
        /// A name for the rule (lower case, digits, '-').
        name: String,
        /// The repositories to copy, e.g. 'release/*' ('*' matches any characters).
        #[arg(long)]
        repositories: String,
        /// Only these tags, e.g. 'v*' [default: every tag].
        #[arg(long, default_value = "")]
        tags: String,
        /// The upstream's host (or URL), as `wharf upstream list` shows it; its credentials
        /// need push rights.
        #[arg(long)]
        upstream: String,
        /// The repository on the upstream; {name} stands for the pushed repository's name
        /// [default: {name}].
        #[arg(long)]
        target: Option<String>,
        /// Create it switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// One rule and its status.
    Show { registry: String, name: String },
    /// Changes a rule.
    Update {
        registry: String,
        name: String,
        #[arg(long)]
        repositories: Option<String>,
        #[arg(long)]
        tags: Option<String>,
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Deletes a rule with its queued copies and history.
    Delete {
        registry: String,
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// The copies a rule made or is making, newest first.
    History {
        registry: String,
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn print_one(r: &Value) {
    println!("name:         {}", text(&r["name"]));
    println!("repositories: {}", text(&r["repositories"]));
    let tags = r["tags"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or("(all)");
    println!("tags:         {tags}");
    println!("upstream:     {}", text(&r["upstream"]));
    println!("target:       {}", text(&r["target"]));
    println!("enabled:      {}", r["enabled"] == true);
    let s = &r["status"];
    println!(
        "copies:       {} pending, {} succeeded, {} failed",
        text(&s["pending"]),
        text(&s["succeeded"]),
        text(&s["failed"])
    );
    println!("last success: {}", text(&s["last_success_at"]));
    if let Some(e) = s["last_error"].as_str() {
        println!("last error:   {e}");
    }
}

pub fn replication(conn: Connection, cmd: ReplicationCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    let base = |registry: &str| format!("/api/v1/registries/{}/replications", encode(registry));
    let one = |registry: &str, name: &str| format!("{}/{}", base(registry), encode(name));
    match cmd {
        ReplicationCommand::List { registry } => {
            let r = client.call(Method::GET, &base(&registry), None)?;
            client.print_items(
                &r["items"],
                &[
                    "NAME",
                    "REPOSITORIES",
                    "TAGS",
                    "TO",
                    "ENABLED",
                    "PENDING/OK/FAILED",
                ],
                |r| {
                    let s = &r["status"];
                    vec![
                        text(&r["name"]),
                        text(&r["repositories"]),
                        text(&r["tags"]),
                        format!("{} {}", text(&r["upstream"]), text(&r["target"])),
                        if r["enabled"] == true { "yes" } else { "no" }.to_string(),
                        format!(
                            "{}/{}/{}",
                            text(&s["pending"]),
                            text(&s["succeeded"]),
                            text(&s["failed"])
                        ),
                    ]
                },
            );
        }
        ReplicationCommand::Create {
            registry,
            name,
            repositories,
            tags,
            upstream,
            target,
            disabled,
        } => {
            let body = json!({
                "name": name, "repositories": repositories, "tags": tags,
                "upstream": upstream, "target": target, "enabled": !disabled,
            });
            let r = client.call(Method::POST, &base(&registry), Some(body))?;
            client.print(&r, |r| {
                println!(
                    "rule {} copies {} to {} {}",
                    text(&r["name"]),
                    text(&r["repositories"]),
                    text(&r["upstream"]),
                    text(&r["target"])
                )
            });
        }
        ReplicationCommand::Show { registry, name } => {
            let r = client.call(Method::GET, &one(&registry, &name), None)?;
            client.print(&r, print_one);
        }
        ReplicationCommand::Update {
            registry,
            name,
            repositories,
            tags,
            upstream,
            target,
            enable,
            disable,
        } => {
            let mut body = Map::new();
            for (key, value) in [
                ("repositories", repositories),
                ("tags", tags),
                ("upstream", upstream),
                ("target", target),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v));
                }
            }
            if enable || disable {
                body.insert("enabled".into(), json!(enable));
            }
            if body.is_empty() {
                return Err("nothing to change: give --repositories, --tags, --upstream, --target, --enable or --disable".into());
            }
            let r = client.call(
                Method::PATCH,
                &one(&registry, &name),
                Some(Value::Object(body)),
            )?;
            client.print(&r, print_one);
        }
        ReplicationCommand::Delete {
            registry,
            name,
            yes,
        } => {
            if !yes {
                confirm(
                    &format!("Delete the replication rule {name:?} of registry {registry:?} and its history?"),
                    &name,
                )?;
            }
            client.call(Method::DELETE, &one(&registry, &name), None)?;
            client.print(&json!({ "deleted": name }), |_| {
                println!("deleted replication rule {name}")
            });
        }
        ReplicationCommand::History {
            registry,
            name,
            limit,
        } => {
            let r = client.call(
                Method::GET,
                &format!("{}/history?limit={limit}", one(&registry, &name)),
                None,
            )?;
            client.print_items(
                &r["items"],
                &["QUEUED", "IMAGE", "STATUS", "ATTEMPTS", "LAST ERROR"],
                |j| {
                    let what = match j["tag"].as_str() {
                        Some(t) => format!("{}:{t}", text(&j["repository"])),
                        None => format!("{}@{}", text(&j["repository"]), text(&j["digest"])),
                    };
                    vec![
                        text(&j["created_at"]),
                        what,
                        text(&j["status"]),
                        text(&j["attempts"]),
                        j["last_error"].as_str().unwrap_or("").to_string(),
                    ]
                },
            );
        }
    }
    Ok(())
}
