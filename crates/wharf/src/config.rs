//! Configuration: defaults, then a TOML file, then `WHARF_*` environment variables, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the metadata database is, for commands that open it directly (`vulndb`, `scan`).
#[derive(Args, Debug, Default)]
pub struct DbArgs {
    /// TOML configuration file (its data_dir and database_url are used).
    #[arg(long, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded database [default: ./wharf-data].
    #[arg(long, env = "WHARF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Metadata database: sqlite:PATH or postgres://... [default: SQLite in the data directory].
    #[arg(long, env = "WHARF_DATABASE_URL")]
    database_url: Option<String>,
}

impl DbArgs {
    /// The database URL `wharf serve` would use with the same settings.
    pub fn database_url(self) -> Result<String, String> {
        let config = Config::load(ServeArgs {
            config: self.config,
            data_dir: self.data_dir,
            database_url: self.database_url,
            ..ServeArgs::default()
        })?;
        match &config.database_url {
            Some(url) => Ok(url.clone()),
            None => Ok(config.database_url_for(&config.data_dir()?)),
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "WHARF_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for content and the embedded database [default: ./wharf-data].
    #[arg(long, env = "WHARF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Metadata database: sqlite:PATH or postgres://... [default: SQLite in the data directory].
    #[arg(long, env = "WHARF_DATABASE_URL")]
    database_url: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "WHARF_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `wharf_server=debug` [default: info].
    #[arg(long, env = "WHARF_LOG")]
    log_level: Option<String>,
    /// Allow deleting blobs and manifests through /v2/ [default: true].
    #[arg(long, env = "WHARF_DELETE_ENABLED")]
    delete_enabled: Option<bool>,
    /// Registries answer on <name>.<base-domain> [default: localhost].
    #[arg(long, env = "WHARF_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// Registry answering on any other host name; empty for none [default: default].
    #[arg(long, env = "WHARF_DEFAULT_REGISTRY")]
    default_registry: Option<String>,
    /// Comma-separated locations registries may be created in [default: default].
    #[arg(long, env = "WHARF_LOCATIONS", value_delimiter = ',')]
    locations: Option<Vec<String>>,
    /// Shortest token lifetime in seconds; lowered only by tests [default: 3600].
    #[arg(long, env = "WHARF_MIN_TOKEN_LIFETIME", hide = true)]
    min_token_lifetime: Option<i64>,
}

/// The configuration file. Unknown keys are refused so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    delete_enabled: Option<bool>,
    base_domain: Option<String>,
    default_registry: Option<String>,
    locations: Option<Vec<String>>,
    min_token_lifetime: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub delete_enabled: bool,
    pub base_domain: String,
    pub default_registry: Option<String>,
    pub locations: Vec<String>,
    pub min_token_lifetime_secs: i64,
}

impl Config {
    /// The data directory, created if missing, as an absolute path.
    pub fn data_dir(&self) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            format!(
                "cannot create data directory {}: {e}",
                self.data_dir.display()
            )
        })?;
        self.data_dir
            .canonicalize()
            .map_err(|e| format!("data directory {}: {e}", self.data_dir.display()))
    }

    /// The metadata database: the configured URL, else SQLite in the (absolute) data directory.
    pub fn database_url_for(&self, data_dir: &std::path::Path) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", data_dir.join("wharf.db").display()),
        }
    }

    pub fn load(args: ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    format!(
                        "config file {}: {}",
                        path.display(),
                        e.to_string().trim().replace('\n', " ")
                    )
                })?
            }
        };
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./wharf-data")),
            database_url: args.database_url.or(file.database_url),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            delete_enabled: args.delete_enabled.or(file.delete_enabled).unwrap_or(true),
            base_domain: args
                .base_domain
                .or(file.base_domain)
                .unwrap_or_else(|| "localhost".to_string())
                .to_ascii_lowercase(),
            // An empty name switches the default registry off.
            default_registry: match args.default_registry.or(file.default_registry) {
                None => Some("default".to_string()),
                Some(n) if n.is_empty() => None,
                Some(n) => Some(n),
            },
            locations: {
                let l: Vec<String> = args
                    .locations
                    .or(file.locations)
                    .unwrap_or_else(|| vec!["default".to_string()])
                    .into_iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                if l.is_empty() {
                    return Err("locations must name at least one location".to_string());
                }
                l
            },
            min_token_lifetime_secs: args
                .min_token_lifetime
                .or(file.min_token_lifetime)
                .unwrap_or(3600)
                .max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let f =
            write("listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\ndelete_enabled = false\n");
        let c = Config::load(ServeArgs {
            config: Some(f.path().into()),
            data_dir: Some("/tmp/y".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
        assert!(!c.delete_enabled);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::load(ServeArgs::default()).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 5000)));
        assert_eq!(c.data_dir, PathBuf::from("./wharf-data"));
        assert!(c.delete_enabled);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let f = write("listne = \"127.0.0.1:6000\"\n");
        let err = Config::load(ServeArgs {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let f = write("listen = \"nowhere\"\n");
        assert!(Config::load(ServeArgs {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .is_err());
    }
}
