//! The administrator commands: registries, repositories, admin keys and the audit log, spoken
//! to a wharf server through its management API.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

/// Where the server is and which key to use. Flags win over `WHARF_*` variables, which win over
/// the config file (`$XDG_CONFIG_HOME/wharf/config.toml` or `~/.config/wharf/config.toml`).
#[derive(Args, Debug)]
pub struct Connection {
    /// Server URL [default: http://127.0.0.1:5000].
    #[arg(long, env = "WHARF_URL", global = true)]
    url: Option<String>,
    /// Administrator API key.
    #[arg(long, env = "WHARF_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Create a registry.
    Create {
        name: String,
        /// Location, one of those the server offers (fixed for the registry's life); may be
        /// left out when the server offers only one.
        #[arg(long)]
        location: Option<String>,
        /// Scan pushed images for vulnerabilities (cannot be switched off later).
        #[arg(long)]
        scanning: bool,
        #[command(flatten)]
        gc: GcArgs,
        /// Give the registry a master key of its own (generated, or the 64 hex digits given):
        /// no other registry shares it, and deleting the registry destroys it.
        #[arg(long, num_args = 0..=1, default_missing_value = "generate", value_name = "HEX")]
        own_key: Option<String>,
    },
    /// List registries.
    List,
    /// Show one registry.
    Show { name: String },
    /// Switch scanning on or change the garbage-collection schedule.
    Update {
        name: String,
        /// Switch vulnerability scanning on.
        #[arg(long)]
        scanning: bool,
        #[command(flatten)]
        gc: GcArgs,
        /// Remove the garbage-collection schedule.
        #[arg(long, conflicts_with_all = ["gc_weekdays", "gc_time", "gc_cron"])]
        gc_off: bool,
        /// Requests per second each token may make (0: no limit), or `default` for the
        /// server's setting.
        #[arg(long, value_parser = rate_limit)]
        rate_limit: Option<RateLimit>,
        /// Maintenance mode: `true` refuses pushes and deletes while pulls go on, `false`
        /// ends it.
        #[arg(long, value_name = "true|false")]
        read_only: Option<bool>,
        /// Whether garbage collection removes manifests that no tag, index or present subject
        /// refers to.
        #[arg(long, value_name = "true|false")]
        gc_untagged: Option<bool>,
        /// Storage quota, e.g. 500MiB or 20GB (pushes beyond it are refused), or `none`.
        #[arg(long, value_parser = quota, value_name = "SIZE|none")]
        quota: Option<Quota>,
    },
    /// Delete a registry with all its repositories, tokens and data (irreversible).
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum RateLimit {
    PerSecond(u32),
    ServerDefault,
}

fn rate_limit(s: &str) -> Result<RateLimit, String> {
    match s {
        "default" => Ok(RateLimit::ServerDefault),
        n => n.parse().map(RateLimit::PerSecond).map_err(|_| {
            format!("{n:?} is neither a number of requests per second nor \"default\"")
        }),
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Quota {
    Bytes(i64),
    None,
}

/// A size such as `500MiB`, `20GB` or `1048576` (bytes), or `none`.
fn quota(s: &str) -> Result<Quota, String> {
    if s == "none" {
        return Ok(Quota::None);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500MiB or 20GB, nor `none`"))?;
    let bytes = (n * scale).round();
    if !(1.0..9.0e18).contains(&bytes) {
        return Err(format!("{s:?} is out of range: a quota is at least 1 byte"));
    }
    Ok(Quota::Bytes(bytes as i64))
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Garbage-collection days, e.g. mon,thu.
    #[arg(long, requires = "gc_time", value_delimiter = ',')]
    gc_weekdays: Option<Vec<String>>,
    /// Garbage-collection time of day, HH:MM UTC.
    #[arg(long, requires = "gc_weekdays")]
    gc_time: Option<String>,
    /// Garbage-collection schedule as a five-field cron expression (UTC).
    #[arg(long, conflicts_with_all = ["gc_weekdays", "gc_time"])]
    gc_cron: Option<String>,
}

impl GcArgs {
    fn schedule(&self) -> Option<Value> {
        match (&self.gc_weekdays, &self.gc_time, &self.gc_cron) {
            (_, _, Some(cron)) => Some(json!({ "cron": cron })),
            (Some(days), Some(time), None) => Some(json!({ "weekdays": days, "time": time })),
            _ => None,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; prints its secret, the docker login command, a ~/.docker/config.json
    /// entry and a Kubernetes Secret, once.
    Create {
        registry: String,
        name: String,
        /// `registry` (catalog) or `repository:<name or pattern>:<pull,push,delete>`; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Expiry as an RFC 3339 UTC time, e.g. 2027-01-31T00:00:00Z.
        #[arg(long, conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// Expiry from now, e.g. 30d or 12h.
        #[arg(long)]
        expires_in: Option<String>,
        /// Print only the secret, for scripts: SECRET=$(wharf token create ... --quiet).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the tokens of a registry.
    List { registry: String },
    /// Show one token.
    Show { registry: String, name: String },
    /// Enable a token.
    Enable { registry: String, name: String },
    /// Disable a token; it stops working at once.
    Disable { registry: String, name: String },
    /// Delete a token.
    Delete {
        registry: String,
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Add or remove scopes.
    Scope {
        #[command(subcommand)]
        command: ScopeCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScopeCommand {
    /// Add a scope: `registry` or `repository:<name or pattern>:<actions>`.
    Add {
        registry: String,
        name: String,
        scope: String,
    },
    /// Remove a scope: by its id (see `wharf token show`) or as written when added.
    Remove {
        registry: String,
        name: String,
        /// A scope id, `registry` or `repository:<name or pattern>:<actions>`.
        scope: String,
    },
}

/// The id of the token's scope that grants what `wanted` (a scope object) says.
fn find_scope(token: &Value, wanted: &Value) -> Option<i64> {
    let actions = |v: &Value| {
        let mut a: Vec<String> = v.as_array()?.iter().map(text).collect();
        a.sort();
        Some(a)
    };
    token["scopes"].as_array()?.iter().find_map(|s| {
        let same = s["type"] == wanted["type"]
            && (wanted["type"] == "registry"
                || (s["path"] == wanted["path"]
                    && actions(&s["actions"]) == actions(&wanted["actions"])));
        same.then(|| s["id"].as_i64()).flatten()
    })
}

/// Parses `registry` or `repository:<path>:<actions>` into the API's scope object.
fn scope_json(s: &str) -> Result<Value, String> {
    if s == "registry" {
        return Ok(json!({ "type": "registry" }));
    }
    let rest = s.strip_prefix("repository:").ok_or_else(|| {
        format!("scope {s:?} must be \"registry\" or repository:<name or pattern>:<actions>")
    })?;
    let (path, actions) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("scope {s:?} needs actions, e.g. repository:{rest}:pull"))?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Ok(json!({ "type": "repository", "path": path, "actions": actions }))
}

fn token_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|t| {
            let scopes: Vec<String> = t["scopes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| match s["type"].as_str() {
                            Some("registry") => format!("#{} registry", text(&s["id"])),
                            _ => format!(
                                "#{} {}:{}",
                                text(&s["id"]),
                                text(&s["path"]),
                                text(&s["actions"])
                            ),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                text(&t["name"]),
                if t["enabled"] == true {
                    "enabled"
                } else {
                    "disabled"
                }
                .to_string(),
                text(&t["expires_at"]),
                scopes.join(" "),
                text(&t["created_at"]),
            ]
        })
        .collect()
}

const TOKEN_HEADERS: [&str; 5] = ["NAME", "STATUS", "EXPIRES", "SCOPES", "CREATED"];

pub fn token(conn: Connection, cmd: TokenCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    let base = |registry: &str| format!("/api/v1/registries/{}/tokens", encode(registry));
    match cmd {
        TokenCommand::Create {
            registry,
            name,
            scopes,
            expires_at,
            expires_in,
            quiet,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| scope_json(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({ "name": name, "scopes": scopes });
            let expires = match (expires_at, expires_in) {
                (Some(at), _) => Some(at),
                (None, Some(d)) => {
                    let d = humantime::parse_duration(&d)
                        .map_err(|e| format!("--expires-in {d:?}: {e}"))?;
                    Some(
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d)
                            .to_string(),
                    )
                }
                (None, None) => None,
            };
            if let Some(e) = expires {
                body["expires_at"] = json!(e);
            }
            let r = client.call(Method::POST, &base(&registry), Some(body))?;
            if quiet {
                println!("{}", text(&r["secret"]));
                return Ok(());
            }
            client.print(&r, |r| {
                println!("created token {} in registry {registry}", text(&r["name"]));
                println!("secret (shown once; store it now): {}", text(&r["secret"]));
                println!("\nlog in:\n  {}", text(&r["docker_login"]));
                println!(
                    "\n~/.docker/config.json entry:\n{}",
                    serde_json::to_string_pretty(&r["docker_config"]).unwrap_or_default()
                );
                println!(
                    "\nKubernetes image-pull Secret:\n{}",
                    text(&r["kubernetes_secret"])
                );
            });
        }
        TokenCommand::List { registry } => {
            let items = all_pages(&client, &base(&registry))?;
            client.print(&Value::Array(items.clone()), |_| {
                table(&TOKEN_HEADERS, token_rows(&items))
            });
        }
        TokenCommand::Show { registry, name } => {
            let r = client.call(
                Method::GET,
                &format!("{}/{}", base(&registry), encode(&name)),
                None,
            )?;
            client.print(&r, |r| {
                table(&TOKEN_HEADERS, token_rows(std::slice::from_ref(r)))
            });
        }
        TokenCommand::Enable { registry, name } => {
            let r = client.call(
                Method::PATCH,
                &format!("{}/{}", base(&registry), encode(&name)),
                Some(json!({ "enabled": true })),
            )?;
            client.print(&r, |_| println!("enabled token {name}"));
        }
        TokenCommand::Disable { registry, name } => {
            let r = client.call(
                Method::PATCH,
                &format!("{}/{}", base(&registry), encode(&name)),
                Some(json!({ "enabled": false })),
            )?;
            client.print(&r, |_| println!("disabled token {name}"));
        }
        TokenCommand::Delete {
            registry,
            name,
            yes,
        } => {
            if !yes {
                confirm(
                    &format!("Delete token {name:?} of registry {registry:?}?"),
                    &name,
                )?;
            }
            client.call(
                Method::DELETE,
                &format!("{}/{}", base(&registry), encode(&name)),
                None,
            )?;
            client.print(&json!({ "deleted": name }), |_| {
                println!("deleted token {name}")
            });
        }
        TokenCommand::Scope {
            command:
                ScopeCommand::Add {
                    registry,
                    name,
                    scope,
                },
        } => {
            let r = client.call(
                Method::POST,
                &format!("{}/{}/scopes", base(&registry), encode(&name)),
                Some(scope_json(&scope)?),
            )?;
            client.print(&r, |r| {
                table(&TOKEN_HEADERS, token_rows(std::slice::from_ref(r)))
            });
        }
        TokenCommand::Scope {
            command:
                ScopeCommand::Remove {
                    registry,
                    name,
                    scope,
                },
        } => {
            let id = match scope.parse::<i64>() {
                Ok(id) => id,
                Err(_) => {
                    let wanted = scope_json(&scope)?;
                    let token = client.call(
                        Method::GET,
                        &format!("{}/{}", base(&registry), encode(&name)),
                        None,
                    )?;
                    find_scope(&token, &wanted).ok_or_else(|| {
                        format!("token {name} has no scope {scope:?}; see wharf token show {registry} {name}")
                    })?
                }
            };
            client.call(
                Method::DELETE,
                &format!("{}/{}/scopes/{id}", base(&registry), encode(&name)),
                None,
            )?;
            client.print(&json!({ "removed": id }), |_| {
                println!("removed scope {id} from token {name}")
            });
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// List the repositories of a registry.
    List { registry: String },
    /// Make a repository public (anonymous pull) or private again.
    Update {
        registry: String,
        repository: String,
        /// Allow anonymous pulls.
        #[arg(long, conflicts_with = "private", required_unless_present = "private")]
        public: bool,
        /// Require credentials again.
        #[arg(long)]
        private: bool,
    },
    /// Delete a repository with its manifests and tags (irreversible).
    Delete {
        registry: String,
        repository: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminKeyCommand {
    /// Create an administrator key; its secret is printed once.
    Create {
        name: String,
        /// registry:read, registry:write, registry:delete or owner; repeat or comma-separate.
        #[arg(long = "permission", required = true, value_delimiter = ',')]
        permissions: Vec<String>,
    },
    /// List administrator keys (never their secrets).
    List,
    /// Revoke a key by id; it stops working at once.
    Revoke {
        id: i64,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries about this registry.
    #[arg(long)]
    registry: Option<String>,
    /// How many entries, newest first (1–100).
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    url: Option<String>,
    key: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("wharf").join("config.toml"))
}

pub struct Client {
    base: String,
    key: Option<String>,
    json: bool,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(conn: Connection) -> Result<Client, String> {
        let file = match config_path() {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                toml::from_str::<CliFile>(&text).map_err(|e| {
                    format!(
                        "{}: {}",
                        p.display(),
                        e.to_string().trim().replace('\n', " ")
                    )
                })?
            }
            _ => CliFile::default(),
        };
        let base = conn
            .url
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:5000".to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            key: conn.key.or(file.key).filter(|k| !k.is_empty()),
            json: conn.json,
            http: reqwest::Client::new(),
            runtime,
        })
    }

    /// Sends a request and returns the JSON answer (`Null` for an empty one); a problem answer
    /// becomes its one-line detail.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let key = self.key.as_deref().ok_or_else(|| {
            let where_ = config_path()
                .map(|p| format!(", or put key = \"...\" in {}", p.display()))
                .unwrap_or_default();
            format!("no administrator key: pass --key or set WHARF_KEY{where_}")
        })?;
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut req = self.http.request(method, &url).bearer_auth(key);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("cannot reach wharf at {}: {}", self.base, root_cause(&e)))?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| format!("reading the answer from {}: {e}", self.base))?;
            if status.is_success() {
                if text.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text)
                    .map_err(|e| format!("the server answered with invalid JSON: {e}"));
            }
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["detail"].as_str().map(String::from))
                .unwrap_or_else(|| text.trim().to_string());
            Err(format!("{detail} (HTTP {})", status.as_u16()))
        })
    }

    pub(crate) fn print(&self, value: &Value, table: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            table(value);
        }
    }

    /// Prints a list (`items`) as JSON, or as a table of one `row` per item under `headers`.
    pub(crate) fn print_items(
        &self,
        items: &Value,
        headers: &[&str],
        row: impl Fn(&Value) -> Vec<String>,
    ) {
        self.print(items, |items| {
            let rows = items.as_array().into_iter().flatten().map(row).collect();
            table(headers, rows);
        });
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Asks the person at the terminal to type `expected`; refuses when nobody can answer.
pub(crate) fn confirm(question: &str, expected: &str) -> Result<(), String> {
    if !std::io::stdin().is_terminal() {
        return Err("refusing to delete without confirmation: pass --yes".to_string());
    }
    eprint!("{question}\nType {expected:?} to confirm: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the confirmation: {e}"))?;
    if line.trim() == expected {
        Ok(())
    } else {
        Err("not confirmed; nothing was deleted".to_string())
    }
}

/// Path segments keep unreserved characters and '/' (repository names); the rest is escaped.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

pub(crate) fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, PATH).to_string()
}

fn bytes(n: i64) -> String {
    wharf_server::human_bytes(n)
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn schedule_text(v: &Value) -> String {
    match (&v["cron"], &v["weekdays"], &v["time"]) {
        (Value::String(c), _, _) => format!("cron {c}"),
        (_, Value::Array(_), Value::String(t)) => format!("{} {t} UTC", text(&v["weekdays"])),
        _ => "off".to_string(),
    }
}

fn registry_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|r| {
            vec![
                text(&r["name"]),
                text(&r["location"]),
                text(&r["hostname"]),
                text(&r["repository_count"]),
                text(&r["artifact_count"]),
                match r["quota_bytes"].as_i64() {
                    Some(q) => format!(
                        "{} of {}",
                        bytes(r["storage_bytes"].as_i64().unwrap_or(0)),
                        bytes(q)
                    ),
                    None => bytes(r["storage_bytes"].as_i64().unwrap_or(0)),
                },
                if r["scanning"] == true { "on" } else { "off" }.to_string(),
                match r["gc_next_run"].as_str() {
                    Some(next) => format!("{} (next {next})", schedule_text(&r["gc_schedule"])),
                    None => schedule_text(&r["gc_schedule"]),
                },
                match r["rate_limit"].as_i64() {
                    None => "default".to_string(),
                    Some(0) => "none".to_string(),
                    Some(n) => format!("{n}/s"),
                },
                if r["read_only"] == true {
                    "read-only"
                } else {
                    "read-write"
                }
                .to_string(),
                text(&r["created_at"]),
            ]
        })
        .collect()
}

const REGISTRY_HEADERS: [&str; 11] = [
    "NAME",
    "LOCATION",
    "HOSTNAME",
    "REPOS",
    "ARTIFACTS",
    "STORAGE",
    "SCANNING",
    "GC",
    "RATE LIMIT",
    "MODE",
    "CREATED",
];

/// Fetches every page of a listing, following `next` (a name or an id) as `after`.
pub(crate) fn all_pages(client: &Client, path: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &after {
            Some(a) => format!("{path}{sep}limit=100&after={}", encode(a)),
            None => format!("{path}{sep}limit=100"),
        };
        let page = client.call(Method::GET, &page_path, None)?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match &page["next"] {
            Value::String(n) => after = Some(n.clone()),
            Value::Number(n) => after = Some(n.to_string()),
            _ => return Ok(items),
        }
    }
}

pub fn registry(conn: Connection, cmd: RegistryCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        RegistryCommand::Create {
            name,
            location,
            scanning,
            gc,
            own_key,
        } => {
            let mut body = json!({ "name": name, "scanning": scanning });
            if let Some(location) = location {
                body["location"] = json!(location);
            }
            if let Some(key) = own_key {
                body["own_key"] = json!(key);
            }
            if let Some(s) = gc.schedule() {
                body["gc_schedule"] = s;
            }
            let r = client.call(Method::POST, "/api/v1/registries", Some(body))?;
            client.print(&r, |r| {
                let key = match r["own_key"].as_str() {
                    Some(id) => format!(" (its own master key {id})"),
                    None => String::new(),
                };
                println!(
                    "created registry {} at {}{key}",
                    text(&r["name"]),
                    text(&r["hostname"])
                )
            });
        }
        RegistryCommand::List => {
            let items = all_pages(&client, "/api/v1/registries")?;
            client.print(&Value::Array(items.clone()), |_| {
                table(&REGISTRY_HEADERS, registry_rows(&items))
            });
        }
        RegistryCommand::Show { name } => {
            let r = client.call(
                Method::GET,
                &format!("/api/v1/registries/{}", encode(&name)),
                None,
            )?;
            client.print(&r, |r| {
                table(&REGISTRY_HEADERS, registry_rows(std::slice::from_ref(r)))
            });
        }
        RegistryCommand::Update {
            name,
            scanning,
            gc,
            gc_off,
            rate_limit,
            read_only,
            gc_untagged,
            quota,
        } => {
            let mut body = json!({});
            if let Some(untagged) = gc_untagged {
                body["gc_untagged"] = json!(untagged);
            }
            match quota {
                Some(Quota::Bytes(n)) => body["quota_bytes"] = json!(n),
                Some(Quota::None) => body["quota_bytes"] = Value::Null,
                None => {}
            }
            if let Some(read_only) = read_only {
                body["read_only"] = json!(read_only);
            }
            match rate_limit {
                Some(RateLimit::PerSecond(n)) => body["rate_limit"] = json!(n),
                Some(RateLimit::ServerDefault) => body["rate_limit"] = Value::Null,
                None => {}
            }
            if scanning {
                body["scanning"] = json!(true);
            }
            if let Some(s) = gc.schedule() {
                body["gc_schedule"] = s;
            }
            if gc_off {
                body["gc_schedule"] = Value::Null;
            }
            let r = client.call(
                Method::PATCH,
                &format!("/api/v1/registries/{}", encode(&name)),
                Some(body),
            )?;
            client.print(&r, |r| {
                table(&REGISTRY_HEADERS, registry_rows(std::slice::from_ref(r)))
            });
        }
        RegistryCommand::Delete { name, yes } => {
            if !yes {
                confirm(
                    &format!("Delete registry {name:?} with all its repositories, tokens and data? This cannot be undone."),
                    &name,
                )?;
            }
            client.call(
                Method::DELETE,
                &format!("/api/v1/registries/{}", encode(&name)),
                None,
            )?;
            client.print(&json!({ "deleted": name }), |_| {
                println!("deleted registry {name}")
            });
        }
    }
    Ok(())
}

/// The latest artifact's scan in a word: its highest severity, `clean`, or the status.
fn latest_severity(scan: &Value) -> String {
    match (scan["status"].as_str(), scan["highest_severity"].as_str()) {
        (None, _) => "-".to_string(),
        (Some("scanned"), Some(s)) => s.to_string(),
        (Some("scanned"), None) => "clean".to_string(),
        (Some(status), _) => status.to_string(),
    }
}

pub fn repo(conn: Connection, cmd: RepoCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        RepoCommand::List { registry } => {
            let items = all_pages(
                &client,
                &format!("/api/v1/registries/{}/repositories", encode(&registry)),
            )?;
            client.print(&Value::Array(items.clone()), |_| {
                let rows = items
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["name"]),
                            text(&r["artifact_count"]),
                            text(&r["tag_count"]),
                            bytes(r["storage_bytes"].as_i64().unwrap_or(0)),
                            if r["public"] == true {
                                "public"
                            } else {
                                "private"
                            }
                            .to_string(),
                            latest_severity(&r["latest_artifact"]["scan"]),
                            text(&r["created_at"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "ARTIFACTS",
                        "TAGS",
                        "STORAGE",
                        "ACCESS",
                        "LATEST SCAN",
                        "CREATED",
                    ],
                    rows,
                )
            });
        }
        RepoCommand::Update {
            registry,
            repository,
            public,
            private: _,
        } => {
            client.call(
                Method::PATCH,
                &format!(
                    "/api/v1/registries/{}/repositories/{}",
                    encode(&registry),
                    encode(&repository)
                ),
                Some(json!({ "public": public })),
            )?;
            let state = if public { "public" } else { "private" };
            client.print(
                &json!({ "repository": repository, "public": public }),
                |_| println!("repository {repository} of {registry} is now {state}"),
            );
        }
        RepoCommand::Delete {
            registry,
            repository,
            yes,
        } => {
            if !yes {
                confirm(
                    &format!("Delete repository {repository:?} of registry {registry:?} with all its manifests and tags? This cannot be undone."),
                    &repository,
                )?;
            }
            client.call(
                Method::DELETE,
                &format!(
                    "/api/v1/registries/{}/repositories/{}",
                    encode(&registry),
                    encode(&repository)
                ),
                None,
            )?;
            client.print(&json!({ "deleted": repository }), |_| {
                println!("deleted repository {repository} of {registry}")
            });
        }
    }
    Ok(())
}

pub fn admin_key(conn: Connection, cmd: AdminKeyCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        AdminKeyCommand::Create { name, permissions } => {
            let r = client.call(
                Method::POST,
                "/api/v1/admin-keys",
                Some(json!({ "name": name, "permissions": permissions })),
            )?;
            client.print(&r, |r| {
                println!(
                    "created administrator key {} (id {})",
                    text(&r["name"]),
                    text(&r["id"])
                );
                println!("permissions: {}", text(&r["permissions"]));
                println!("secret (shown once; store it now): {}", text(&r["secret"]));
            });
        }
        AdminKeyCommand::List => {
            let items = all_pages(&client, "/api/v1/admin-keys")?;
            client.print(&Value::Array(items.clone()), |_| {
                let rows = items
                    .iter()
                    .map(|k| {
                        vec![
                            text(&k["id"]),
                            text(&k["name"]),
                            format!("{}…", text(&k["prefix"])),
                            text(&k["permissions"]),
                            text(&k["created_at"]),
                            if k["revoked_at"].is_null() {
                                "active".to_string()
                            } else {
                                format!("revoked {}", text(&k["revoked_at"]))
                            },
                        ]
                    })
                    .collect();
                table(
                    &["ID", "NAME", "PREFIX", "PERMISSIONS", "CREATED", "STATUS"],
                    rows,
                )
            });
        }
        AdminKeyCommand::Revoke { id, yes } => {
            if !yes {
                confirm(&format!("Revoke administrator key {id}?"), &id.to_string())?;
            }
            client.call(Method::DELETE, &format!("/api/v1/admin-keys/{id}"), None)?;
            client.print(&json!({ "revoked": id }), |_| {
                println!("revoked administrator key {id}")
            });
        }
    }
    Ok(())
}

pub fn audit(conn: Connection, args: AuditArgs) -> Result<(), String> {
    let client = Client::new(conn)?;
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(r) = &args.registry {
        path.push_str(&format!("&registry={}", encode(r)));
    }
    let r = client.call(Method::GET, &path, None)?;
    let items = r["items"].as_array().cloned().unwrap_or_default();
    client.print(&Value::Array(items.clone()), |_| {
        let rows = items
            .iter()
            .map(|e| {
                vec![
                    text(&e["at"]),
                    text(&e["actor"]),
                    text(&e["action"]),
                    text(&e["registry"]),
                    text(&e["repository"]),
                ]
            })
            .collect();
        table(&["TIME", "ACTOR", "ACTION", "REGISTRY", "REPOSITORY"], rows)
    });
    Ok(())
}

/// `wharf system`: how the server is set up (version, storage, encryption and its key).
pub fn system(conn: Connection) -> Result<(), String> {
    let client = Client::new(conn)?;
    let r = client.call(Method::GET, "/api/v1/system", None)?;
    client.print(&r, |r| {
        let encryption = &r["encryption"];
        let encrypted = match encryption["key_id"].as_str() {
            Some(key) => format!(
                "on (master key {key}; covers {})",
                text(&encryption["covers"])
            ),
            None => "off".to_string(),
        };
        println!("version:     {}", text(&r["version"]));
        println!(
            "storage:     {} ({} stored)",
            text(&r["storage"]),
            bytes(r["stored_bytes"].as_i64().unwrap_or(0))
        );
        println!("encryption:  {encrypted}");
    });
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Add a new master key, rewrap every data key under it (content is not rewritten) and
    /// retire the old key; pushes and pulls go on meanwhile.
    Rotate {
        /// Return once the rotation started instead of following it to the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the master keys and how many data keys each wraps.
    Status,
    /// Encrypt the blobs and manifests stored in the clear before encryption was on, in place;
    /// run again after a stop, it goes on with what is left.
    EncryptExisting {
        /// Return once it started instead of following it to the end.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `wharf keys`: master keys and their rotation.
pub fn keys(conn: Connection, cmd: KeysCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        KeysCommand::Status => {
            let r = client.call(Method::GET, "/api/v1/system/keys", None)?;
            client.print(&r, print_keys);
        }
        KeysCommand::Rotate { no_wait } => {
            let started = client.call(Method::POST, "/api/v1/system/keys/rotate", None)?;
            let new = text(&started["current"]);
            if no_wait {
                client.print(&started, print_keys);
                return Ok(());
            }
            let total: i64 = started["data_keys"]
                .as_array()
                .map(|a| a.iter().filter_map(|k| k["data_keys"].as_i64()).sum())
                .unwrap_or(0);
            let bar = indicatif::ProgressBar::new(total.max(0) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} data keys rewrapped")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            // Done when nothing is left under an older key and the old key is retired.
            let done = loop {
                let r = client.call(Method::GET, "/api/v1/system/keys", None)?;
                let pending = r["pending"].as_i64().unwrap_or(0);
                bar.set_position((total - pending).max(0) as u64);
                let loaded = r["loaded"].as_array().map_or(0, Vec::len);
                if pending == 0 && loaded <= 1 {
                    break r;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            };
            bar.finish_and_clear();
            client.print(&done, |_| {
                println!("rotated: every data key is wrapped by master key {new}; the old key is retired")
            });
        }
        KeysCommand::EncryptExisting { no_wait } => {
            const PATH: &str = "/api/v1/system/keys/encrypt-existing";
            let mut r = client.call(Method::POST, PATH, None)?;
            let bar = indicatif::ProgressBar::new_spinner();
            while !no_wait && r["running"].as_bool() == Some(true) {
                bar.set_message(format!("{} blobs checked", text(&r["blobs_checked"])));
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(300));
                r = client.call(Method::GET, PATH, None)?;
            }
            bar.finish_and_clear();
            client.print(&r, |r| {
                println!(
                    "{}: {} blobs and {} manifests sealed ({} blobs checked, {} failed)",
                    if r["running"].as_bool() == Some(true) {
                        "started"
                    } else {
                        "done"
                    },
                    text(&r["blobs_sealed"]),
                    text(&r["manifests_sealed"]),
                    text(&r["blobs_checked"]),
                    text(&r["failed"]),
                )
            });
            if let Some(e) = r["error"].as_str() {
                return Err(format!("encrypting existing content stopped: {e}"));
            }
            if r["failed"].as_u64().unwrap_or(0) > 0 {
                return Err(format!(
                    "{} blobs could not be sealed; the server log names them",
                    text(&r["failed"])
                ));
            }
        }
    }
    Ok(())
}

fn print_keys(r: &Value) {
    println!("current:  {}", text(&r["current"]));
    println!("loaded:   {}", text(&r["loaded"]));
    println!("pending:  {}", text(&r["pending"]));
    let rows = r["data_keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| vec![text(&k["key_id"]), text(&k["data_keys"])])
                .collect()
        })
        .unwrap_or_default();
    table(&["MASTER KEY", "DATA KEYS"], rows);
}

#[derive(Subcommand, Debug)]
pub enum GcCommand {
    /// Collect a registry's garbage now: manifests nothing refers to, then blobs no manifest
    /// uses; pushes and pulls go on meanwhile. Prints what was freed.
    Run {
        /// The registry; leave out with --instance.
        #[arg(required_unless_present = "instance")]
        registry: Option<String>,
        /// Free only what deleted registries and repositories left behind, across the instance.
        #[arg(long, conflicts_with = "registry")]
        instance: bool,
        /// List what would be freed, freeing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the run started instead of following it to the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Past runs of a registry, newest first.
    History {
        /// The registry; leave out with --instance.
        #[arg(required_unless_present = "instance")]
        registry: Option<String>,
        /// The instance's runs.
        #[arg(long, conflicts_with = "registry")]
        instance: bool,
        /// How many runs to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
        limit: i64,
    },
    /// One run with its report.
    Show {
        /// The registry, or `--instance`.
        #[arg(required_unless_present = "instance")]
        registry: Option<String>,
        #[arg(long, conflicts_with = "registry")]
        instance: bool,
        #[arg(long)]
        id: i64,
    },
}

/// Where a registry's (or the instance's) collections are in the API.
fn gc_base(registry: &Option<String>) -> String {
    match registry {
        Some(r) => format!("/api/v1/registries/{}/gc", encode(r)),
        None => "/api/v1/system/gc".to_string(),
    }
}

/// `wharf gc`: garbage collection on demand and its history.
pub fn gc(conn: Connection, cmd: GcCommand) -> Result<(), String> {
    let client = Client::new(conn)?;
    match cmd {
        GcCommand::Run {
            registry,
            dry_run,
            no_wait,
            ..
        } => {
            let base = gc_base(&registry);
            let mut run = client.call(Method::POST, &base, Some(json!({ "dry_run": dry_run })))?;
            let path = format!("{base}/runs/{}", text(&run["id"]));
            let bar = indicatif::ProgressBar::new_spinner();
            while !no_wait && run["status"] == "running" {
                let phase = match run["phase"].as_str() {
                    Some("manifests") => "1/3 manifests",
                    Some("links") => "2/3 blob links",
                    Some("blobs") => "3/3 stored blobs",
                    _ => "starting",
                };
                bar.set_message(format!(
                    "collecting, phase {phase}: {} manifests, {} blobs ({}) freed",
                    text(&run["manifests_freed"]),
                    text(&run["blobs_freed"]),
                    bytes(run["bytes_freed"].as_i64().unwrap_or(0)),
                ));
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(200));
                run = client.call(Method::GET, &path, None)?;
            }
            bar.finish_and_clear();
            client.print(&run, print_run);
            if let Some(e) = run["error"].as_str() {
                return Err(format!(
                    "garbage collection run {} failed: {e}",
                    text(&run["id"])
                ));
            }
        }
        GcCommand::History {
            registry, limit, ..
        } => {
            let r = client.call(
                Method::GET,
                &format!("{}/runs?limit={limit}", gc_base(&registry)),
                None,
            )?;
            let items = r["items"].as_array().cloned().unwrap_or_default();
            client.print(&Value::Array(items.clone()), |_| {
                let rows = items
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["id"]),
                            text(&r["started_at"]),
                            format!(
                                "{}{}",
                                text(&r["cause"]),
                                if r["dry_run"] == true {
                                    " (dry run)"
                                } else {
                                    ""
                                }
                            ),
                            text(&r["status"]),
                            text(&r["manifests_freed"]),
                            text(&r["blobs_freed"]),
                            bytes(r["bytes_freed"].as_i64().unwrap_or(0)),
                            format!("{:.1}s", r["duration_seconds"].as_f64().unwrap_or(0.0)),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "STARTED",
                        "CAUSE",
                        "STATUS",
                        "MANIFESTS",
                        "BLOBS",
                        "FREED",
                        "TOOK",
                    ],
                    rows,
                )
            });
        }
        GcCommand::Show { registry, id, .. } => {
            let r = client.call(
                Method::GET,
                &format!("{}/runs/{id}", gc_base(&registry)),
                None,
            )?;
            client.print(&r, print_run);
        }
    }
    Ok(())
}

fn print_run(r: &Value) {
    let would = if r["dry_run"] == true {
        "would free"
    } else {
        "freed"
    };
    println!(
        "run {} {}: {would} {} manifests and {} blobs ({}) in {:.1}s",
        text(&r["id"]),
        text(&r["status"]),
        text(&r["manifests_freed"]),
        text(&r["blobs_freed"]),
        bytes(r["bytes_freed"].as_i64().unwrap_or(0)),
        r["duration_seconds"].as_f64().unwrap_or(0.0),
    );
    let list = |key: &str| r["findings"][key].as_array().cloned().unwrap_or_default();
    let manifests = list("manifests");
    if !manifests.is_empty() {
        let rows = manifests
            .iter()
            .map(|m| {
                vec![
                    text(&m["repository"]),
                    text(&m["digest"]),
                    bytes(m["size"].as_i64().unwrap_or(0)),
                ]
            })
            .collect();
        table(&["REPOSITORY", "MANIFEST", "SIZE"], rows);
    }
    let blobs = list("blobs");
    if !blobs.is_empty() {
        let rows = blobs
            .iter()
            .map(|b| vec![text(&b["digest"]), bytes(b["size"].as_i64().unwrap_or(0))])
            .collect();
        table(&["BLOB", "SIZE"], rows);
    }
}
