//! `wharf upstream ...`: credentials for external registries, through the API. Secrets are
//! read from standard input, never from the command line (where other users of the machine
//! could read them in the process list).

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::admin::{confirm, encode, text, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum UpstreamCommand {
    /// The upstreams of a registry.
    List { registry: String },
    /// Stores credentials for an external registry (one entry per host); the secret (password
    /// or access token) is read from standard input.
    Create {
        registry: String,
        /// https://host[:port] (or http://), fixed once created.
        #[arg(value_name = "URL")]
        upstream_url: String,
        #[arg(long)]
        username: String,
        /// Read the secret from standard input (required).
        #[arg(long)]
        secret_stdin: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// A PEM file of CA certificates to trust for this upstream.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// One upstream (never its secret).
    Show { registry: String, host: String },
    /// Changes the username, description or CA certificate, or replaces the secret at once.
    Update {
        registry: String,
        host: String,
        #[arg(long)]
        username: Option<String>,
        /// Read a new secret from standard input.
        #[arg(long)]
        secret_stdin: bool,
        #[arg(long)]
        description: Option<String>,
        /// A PEM file of CA certificates to trust instead.
        #[arg(long, conflicts_with = "no_ca")]
        ca_file: Option<PathBuf>,
        /// Trust only the system's CA certificates again.
        #[arg(long)]
        no_ca: bool,
    },
    /// Deletes an upstream and its secret.
    Delete {
        registry: String,
        host: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Tests the stored credentials: reach, log in, and with --repository pull (and --push).
    Test {
        registry: String,
        host: String,
        /// A repository on the upstream to test rights on, e.g. library/alpine.
        #[arg(long)]
        repository: Option<String>,
        /// Also test push rights (an upload is opened and cancelled).
        #[arg(long, requires = "repository")]
        push: bool,
    },
}

fn read_secret() -> Result<String, String> {
    let mut secret = String::new();
    std::io::stdin()
        .read_to_string(&mut secret)
        .map_err(|e| format!("reading the secret from standard input: {e}"))?;
    let secret = secret.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err("the secret on standard input is empty".into());
    }
    Ok(secret)
}

fn read_ca(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn print_one(u: &Value) {
    println!("host:        {}", text(&u["host"]));
    println!("url:         {}", text(&u["url"]));
    println!("username:    {}", text(&u["username"]));
    println!("description: {}", text(&u["description"]));
    println!(
        "custom CA:   {}",
        if u["custom_ca"] == true { "yes" } else { "no" }
    );
    println!("secret set:  {}", text(&u["secret_updated_at"]));
    println!("updated:     {}", text(&u["updated_at"]));
}

pub fn upstream(conn: Connection, cmd: UpstreamCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    let base = |registry: &str| format!("/api/v1/registries/{}/upstreams", encode(registry));
    match cmd {
        UpstreamCommand::List { registry } => {
            let r = client.call(Method::GET, &base(&registry), None)?;
            client.print_items(
                &r["items"],
                &["HOST", "URL", "USERNAME", "SECRET SET", "DESCRIPTION"],
                |u| {
                    vec![
                        text(&u["host"]),
                        text(&u["url"]),
                        text(&u["username"]),
                        text(&u["secret_updated_at"]),
                        text(&u["description"]),
                    ]
                },
            );
        }
        UpstreamCommand::Create {
            registry,
            upstream_url,
            username,
            secret_stdin,
            description,
            ca_file,
        } => {
            if !secret_stdin {
                return Err("give the secret on standard input with --secret-stdin".into());
            }
            let mut body = json!({
                "url": upstream_url, "username": username, "secret": read_secret()?,
                "description": description,
            });
            if let Some(f) = &ca_file {
                body["ca_certificate"] = json!(read_ca(f)?);
            }
            let u = client.call(Method::POST, &base(&registry), Some(body))?;
            client.print(&u, |u| {
                println!(
                    "created upstream {} for {}",
                    text(&u["host"]),
                    text(&u["username"])
                )
            });
        }
        UpstreamCommand::Show { registry, host } => {
            let u = client.call(
                Method::GET,
                &format!("{}/{}", base(&registry), encode(&host)),
                None,
            )?;
            client.print(&u, print_one);
        }
        UpstreamCommand::Update {
            registry,
            host,
            username,
            secret_stdin,
            description,
            ca_file,
            no_ca,
        } => {
            let mut body = Map::new();
            if let Some(u) = username {
                body.insert("username".into(), json!(u));
            }
            if secret_stdin {
                body.insert("secret".into(), json!(read_secret()?));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            if let Some(f) = &ca_file {
                body.insert("ca_certificate".into(), json!(read_ca(f)?));
            }
            if no_ca {
                body.insert("ca_certificate".into(), json!(""));
            }
            if body.is_empty() {
                return Err("nothing to change: give --username, --secret-stdin, --description, --ca-file or --no-ca".into());
            }
            let u = client.call(
                Method::PATCH,
                &format!("{}/{}", base(&registry), encode(&host)),
                Some(Value::Object(body)),
            )?;
            client.print(&u, print_one);
        }
        UpstreamCommand::Delete {
            registry,
            host,
            yes,
        } => {
            if !yes {
                confirm(
                    &format!("Delete the credentials for {host:?} of registry {registry:?}?"),
                    &host,
                )?;
            }
            client.call(
                Method::DELETE,
                &format!("{}/{}", base(&registry), encode(&host)),
                None,
            )?;
            client.print(&json!({ "deleted": host }), |_| {
                println!("deleted upstream {host}")
            });
        }
        UpstreamCommand::Test {
            registry,
            host,
            repository,
            push,
        } => {
            let r = client.call(
                Method::POST,
                &format!("{}/{}/test", base(&registry), encode(&host)),
                Some(json!({ "repository": repository, "push": push })),
            )?;
            client.print(&r, |r| {
                println!("{}: {}", text(&r["cause"]), text(&r["detail"]));
                if let Some(x) = r["excerpt"].as_str() {
                    println!("response: HTTP {} {x}", text(&r["status"]));
                }
            });
            if r["cause"] != "ok" {
                return Err(format!("connection test of {host}: {}", text(&r["cause"])));
            }
        }
    }
    Ok(())
}
