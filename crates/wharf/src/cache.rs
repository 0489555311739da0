//! `wharf cache ...`: pull-through caches of a registry, through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::admin::{confirm, encode, text, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// The pull-through caches of a registry.
    List { registry: String },
    /// Makes a repository prefix a pull-through cache of an upstream whose credentials the
    /// registry holds (wharf upstream create): pulling PREFIX/name fetches name from it.
    Create {
        registry: String,
        /// The repository prefix, e.g. hub (then hub/alpine is cached).
        prefix: String,
        /// The upstream's host (or URL), as `wharf upstream list` shows it.
        #[arg(long)]
        upstream: String,
        /// Put before the name on the upstream, e.g. library (hub/alpine -> library/alpine).
        #[arg(long, default_value = "")]
        upstream_prefix: String,
        /// How long a cached tag is served before the upstream is asked whether it moved, e.g.
        /// 5m, 1h, 0s [default: 5m].
        #[arg(long, value_parser = humantime::parse_duration)]
        revalidate: Option<std::time::Duration>,
    },
    /// One cache.
    Show { registry: String, prefix: String },
    /// Changes a cache's upstream, upstream prefix or revalidation time.
    Update {
        registry: String,
        prefix: String,
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long)]
        upstream_prefix: Option<String>,
        #[arg(long, value_parser = humantime::parse_duration)]
        revalidate: Option<std::time::Duration>,
    },
    /// Deletes a cache (what it cached stays until deleted and collected).
    Delete {
        registry: String,
        prefix: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn print_one(c: &Value) {
    println!("prefix:          {}/", text(&c["prefix"]));
    println!("upstream:        {}", text(&c["upstream"]));
    println!("upstream prefix: {}", text(&c["upstream_prefix"]));
    println!("revalidate:      {}", revalidate(&c["revalidate_secs"]));
    println!("updated:         {}", text(&c["updated_at"]));
}

fn revalidate(secs: &Value) -> String {
    let secs = secs.as_u64().unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn cache(conn: Connection, cmd: CacheCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    let base = |registry: &str| format!("/api/v1/registries/{}/caches", encode(registry));
    let one = |registry: &str, prefix: &str| format!("{}/{}", base(registry), encode(prefix));
    match cmd {
        CacheCommand::List { registry } => {
            let r = client.call(Method::GET, &base(&registry), None)?;
            client.print_items(
                &r["items"],
                &["PREFIX", "UPSTREAM", "UPSTREAM PREFIX", "REVALIDATE"],
                |c| {
                    vec![
                        format!("{}/", text(&c["prefix"])),
                        text(&c["upstream"]),
                        text(&c["upstream_prefix"]),
                        revalidate(&c["revalidate_secs"]),
                    ]
                },
            );
        }
        CacheCommand::Create {
            registry,
            prefix,
            upstream,
            upstream_prefix,
            revalidate,
        } => {
            let mut body = json!({
                "prefix": prefix.trim_end_matches('/'), "upstream": upstream,
                "upstream_prefix": upstream_prefix,
            });
            if let Some(d) = revalidate {
                body["revalidate_secs"] = json!(d.as_secs());
            }
            let c = client.call(Method::POST, &base(&registry), Some(body))?;
            client.print(&c, |c| {
                println!(
                    "{}/ now caches {}",
                    text(&c["prefix"]),
                    text(&c["upstream"])
                )
            });
        }
        CacheCommand::Show { registry, prefix } => {
            let c = client.call(Method::GET, &one(&registry, &prefix), None)?;
            client.print(&c, print_one);
        }
        CacheCommand::Update {
            registry,
            prefix,
            upstream,
            upstream_prefix,
            revalidate,
        } => {
            let mut body = Map::new();
            if let Some(u) = upstream {
                body.insert("upstream".into(), json!(u));
            }
            if let Some(p) = upstream_prefix {
                body.insert("upstream_prefix".into(), json!(p));
            }
            if let Some(d) = revalidate {
                body.insert("revalidate_secs".into(), json!(d.as_secs()));
            }
            if body.is_empty() {
                return Err(
                    "nothing to change: give --upstream, --upstream-prefix or --revalidate".into(),
                );
            }
            let c = client.call(
                Method::PATCH,
                &one(&registry, &prefix),
                Some(Value::Object(body)),
            )?;
            client.print(&c, print_one);
        }
        CacheCommand::Delete {
            registry,
            prefix,
            yes,
        } => {
            if !yes {
                confirm(
                    &format!("Delete the pull-through cache {prefix}/ of registry {registry:?}?"),
                    &prefix,
                )?;
            }
            client.call(Method::DELETE, &one(&registry, &prefix), None)?;
            client.print(&json!({ "deleted": prefix }), |_| {
                println!("deleted cache {prefix}/")
            });
        }
    }
    Ok(())
}
