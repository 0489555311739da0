//! Configuration: defaults, then a TOML file, then `WHARF_*` environment variables, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use wharf_server::PublicUrl;

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
        Ok(self.load()?.0)
    }

    /// The database URL and the rest of the configuration `wharf serve` would use.
    pub fn load(self) -> Result<(String, Config), String> {
        let config = Config::load(ServeArgs {
            config: self.config,
            data_dir: self.data_dir,
            database_url: self.database_url,
            ..ServeArgs::default()
        })?;
        let url = match &config.database_url {
            Some(url) => url.clone(),
            None => config.database_url_for(&config.data_dir()?),
        };
        Ok((url, config))
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
    /// Address clients reach wharf at, e.g. https://registry.example.com (behind a proxy)
    /// [default: the listen address].
    #[arg(long, env = "WHARF_PUBLIC_URL")]
    public_url: Option<String>,
    /// Longest wait for a request's headers, and for the next request on an idle connection
    /// [default: 30s].
    #[arg(long, env = "WHARF_HEADER_READ_TIMEOUT", value_parser = duration)]
    header_read_timeout: Option<Duration>,
    /// Longest wait for the next bytes of a request body [default: 60s].
    #[arg(long, env = "WHARF_IDLE_TIMEOUT", value_parser = duration)]
    idle_timeout: Option<Duration>,
    /// Upload sessions a repository may have open at once [default: 1000].
    #[arg(long, env = "WHARF_UPLOAD_MAX_SESSIONS")]
    upload_max_sessions: Option<i64>,
    /// Upload sessions untouched this long are removed with their data [default: 24h].
    #[arg(long, env = "WHARF_UPLOAD_MAX_AGE", value_parser = duration)]
    upload_max_age: Option<Duration>,
    /// Requests per second each robot token may make, where its registry sets no limit;
    /// 0 for none [default: 0].
    #[arg(long, env = "WHARF_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Where content is stored: `file` (the data directory) or s3://bucket[/prefix]
    /// [default: file].
    #[arg(long, env = "WHARF_STORAGE")]
    storage: Option<String>,
    /// S3 endpoint of a self-hosted server, e.g. http://10.0.0.5:9000 [default: AWS].
    #[arg(long, env = "WHARF_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "WHARF_S3_REGION")]
    s3_region: Option<String>,
    /// Encrypt content and stored secrets under the master key; `false` stores new ones in the
    /// clear [default: true].
    #[arg(long, env = "WHARF_ENCRYPTION")]
    encryption: Option<bool>,
    /// The master key file, created on first start if missing (WHARF_MASTER_KEY, if set, is
    /// used instead) [default: master.key in the data directory].
    #[arg(long, env = "WHARF_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Data keys a key rotation rewraps per second at most; 0 for no limit [default: 0].
    #[arg(long, env = "WHARF_REWRAP_RATE")]
    rewrap_rate: Option<u32>,
    /// Garbage collection leaves alone content pushed, uploaded or mounted this recently: a
    /// push's blobs wait this long for the manifest that references them [default: 1h].
    #[arg(long, env = "WHARF_GC_GRACE", value_parser = duration)]
    gc_grace: Option<Duration>,
    /// Tests only: collections wait between marking and sweeping while this file exists.
    #[arg(long, env = "WHARF_GC_PAUSE_FILE", hide = true)]
    gc_pause_file: Option<PathBuf>,
    /// Tests only: how often a running collection says it is alive [default: 5s].
    #[arg(long, env = "WHARF_GC_HEARTBEAT", hide = true, value_parser = duration)]
    gc_heartbeat: Option<Duration>,
    /// Image scans this node runs at once (registries with scanning on); 0 leaves them to
    /// other nodes [default: 2].
    #[arg(long, env = "WHARF_SCAN_WORKERS")]
    scan_workers: Option<usize>,
    /// A scan still reading layers after this long marks its image Unknown [default: 10m].
    #[arg(long, env = "WHARF_SCAN_TIMEOUT", value_parser = duration)]
    scan_timeout: Option<Duration>,
    /// Tests only: no scan starts while this file exists.
    #[arg(long, env = "WHARF_SCAN_PAUSE_FILE", hide = true)]
    scan_pause_file: Option<PathBuf>,
    /// A pull-through cache's upstream that sends nothing for this long fails the pull (what
    /// it sent is not kept) [default: 30s].
    #[arg(long, env = "WHARF_UPSTREAM_TIMEOUT", value_parser = duration)]
    upstream_timeout: Option<Duration>,
    /// Tests only: the wait before a failed replication's first retry (it doubles each time).
    #[arg(long, hide = true, value_parser = duration)]
    replication_backoff: Option<Duration>,
    /// Tests only: how often registries' storage is sampled (the console's chart) [default: 1h].
    #[arg(long, hide = true, value_parser = duration)]
    storage_sample_interval: Option<Duration>,
    /// Vulnerability data imported on a schedule: files, directories (as `wharf vulndb import`
    /// takes) and http(s) URLs of OSV dumps; comma-separated or repeated [default: none].
    #[arg(
        long = "vulndb-source",
        env = "WHARF_VULNDB_SOURCES",
        value_delimiter = ','
    )]
    vulndb_sources: Option<Vec<String>>,
    /// How often the vulnerability sources are imported [default: 6h].
    #[arg(long, env = "WHARF_VULNDB_INTERVAL", value_parser = duration)]
    vulndb_interval: Option<Duration>,
}

/// `storage` in the configuration file: a URL, or a table with the S3 settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileStorage {
    Url(String),
    Table(StorageTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageTable {
    /// `file` or s3://bucket[/prefix].
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    #[serde(default)]
    virtual_hosted: bool,
}

/// Where content is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// The data directory.
    File,
    S3(wharf_store::S3Config),
}

impl Storage {
    fn from_settings(table: StorageTable) -> Result<Storage, String> {
        if table.url == "file" {
            return Ok(Storage::File);
        }
        let mut s3 = wharf_store::S3Config::from_url(&table.url)?;
        if let Some(e) = &table.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "S3 endpoint {e:?} must start with http:// or https://"
                ));
            }
        }
        s3.endpoint = table.endpoint;
        s3.region = table.region;
        if table.access_key_id.is_some() != table.secret_access_key.is_some() {
            return Err("storage: give access_key_id and secret_access_key together".to_string());
        }
        s3.access_key_id = table.access_key_id;
        s3.secret_access_key = table.secret_access_key;
        s3.virtual_hosted = table.virtual_hosted;
        Ok(Storage::S3(s3))
    }
}

impl StorageTable {
    fn file() -> StorageTable {
        StorageTable {
            url: "file".to_string(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted: false,
        }
    }
}

/// A duration such as `30s`, `10m` or `24h`.
fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 24h: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

/// Durations in the configuration file are written as in flags (`"30s"`).
fn file_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => duration(&s).map(Some).map_err(serde::de::Error::custom),
    }
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
    public_url: Option<String>,
    #[serde(default, deserialize_with = "file_duration")]
    header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "file_duration")]
    idle_timeout: Option<Duration>,
    upload_max_sessions: Option<i64>,
    #[serde(default, deserialize_with = "file_duration")]
    upload_max_age: Option<Duration>,
    rate_limit: Option<u32>,
    storage: Option<FileStorage>,
    encryption: Option<bool>,
    master_key_file: Option<PathBuf>,
    rewrap_rate: Option<u32>,
    #[serde(default, deserialize_with = "file_duration")]
    gc_grace: Option<Duration>,
    scan_workers: Option<usize>,
    #[serde(default, deserialize_with = "file_duration")]
    scan_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "file_duration")]
    upstream_timeout: Option<Duration>,
    vulndb_sources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "file_duration")]
    vulndb_interval: Option<Duration>,
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
    pub public_url: Option<PublicUrl>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upload_max_sessions: i64,
    pub upload_max_age: Duration,
    pub rate_limit: u32,
    pub storage: Storage,
    pub encryption: bool,
    pub master_key_file: Option<PathBuf>,
    pub rewrap_rate: u32,
    pub gc_grace: Duration,
    pub gc_pause_file: Option<PathBuf>,
    pub gc_heartbeat: Duration,
    pub scan_workers: usize,
    pub scan_timeout: Duration,
    pub scan_pause_file: Option<PathBuf>,
    pub upstream_timeout: Duration,
    pub replication_backoff: Duration,
    pub storage_sample_interval: Duration,
    pub vulndb_sources: Vec<String>,
    pub vulndb_interval: Duration,
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
            public_url: match args.public_url.or(file.public_url) {
                None => None,
                Some(u) if u.is_empty() => None,
                Some(u) => Some(PublicUrl::parse(&u)?),
            },
            header_read_timeout: args
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(Duration::from_secs(30)),
            idle_timeout: args
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(Duration::from_secs(60)),
            upload_max_sessions: match args.upload_max_sessions.or(file.upload_max_sessions) {
                None => 1000,
                Some(n) if n >= 1 => n,
                Some(n) => return Err(format!("upload_max_sessions must be at least 1, not {n}")),
            },
            upload_max_age: args
                .upload_max_age
                .or(file.upload_max_age)
                .unwrap_or(Duration::from_secs(24 * 3600)),
            rate_limit: args.rate_limit.or(file.rate_limit).unwrap_or(0),
            storage: {
                // Flags and variables override the file's URL, endpoint and region; its
                // credentials stay.
                let mut table = match file.storage {
                    None => StorageTable::file(),
                    Some(FileStorage::Url(url)) => StorageTable {
                        url,
                        ..StorageTable::file()
                    },
                    Some(FileStorage::Table(t)) => t,
                };
                if let Some(url) = args.storage {
                    table.url = url;
                }
                table.endpoint = args.s3_endpoint.or(table.endpoint);
                table.region = args.s3_region.or(table.region);
                Storage::from_settings(table)?
            },
            encryption: args.encryption.or(file.encryption).unwrap_or(true),
            master_key_file: args.master_key_file.or(file.master_key_file),
            rewrap_rate: args.rewrap_rate.or(file.rewrap_rate).unwrap_or(0),
            gc_grace: args
                .gc_grace
                .or(file.gc_grace)
                .unwrap_or(Duration::from_secs(3600)),
            gc_pause_file: args.gc_pause_file,
            gc_heartbeat: args.gc_heartbeat.unwrap_or(Duration::from_secs(5)),
            scan_workers: args.scan_workers.or(file.scan_workers).unwrap_or(2),
            scan_timeout: args
                .scan_timeout
                .or(file.scan_timeout)
                .unwrap_or(Duration::from_secs(600)),
            scan_pause_file: args.scan_pause_file,
            upstream_timeout: args
                .upstream_timeout
                .or(file.upstream_timeout)
                .unwrap_or(Duration::from_secs(30)),
            replication_backoff: args.replication_backoff.unwrap_or(Duration::from_secs(10)),
            storage_sample_interval: args
                .storage_sample_interval
                .unwrap_or(Duration::from_secs(3600)),
            vulndb_sources: args
                .vulndb_sources
                .or(file.vulndb_sources)
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            vulndb_interval: {
                let every = args
                    .vulndb_interval
                    .or(file.vulndb_interval)
                    .unwrap_or(Duration::from_secs(6 * 3600));
                if every < Duration::from_secs(60) {
                    return Err("vulndb_interval must be at least 1m".to_string());
                }
                every
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration file `text` is refused with an error that says `says`.
    fn assert_refused(text: &str, says: &str) {
        let f = write(text);
        let err = Config::load(ServeArgs {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains(says), "{text}: {err}");
    }

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
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.upload_max_age, Duration::from_secs(24 * 3600));
        assert_eq!(c.rate_limit, 0);
        assert!(c.public_url.is_none());
    }

    #[test]
    fn limits_and_public_url_from_a_file() {
        let f = write(
            "public_url = \"https://registry.example.com\"\nidle_timeout = \"2m\"\nupload_max_age = \"1h\"\nrate_limit = 20\n",
        );
        let c = Config::load(ServeArgs {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.upload_max_age, Duration::from_secs(3600));
        assert_eq!(c.rate_limit, 20);
        let url = c.public_url.unwrap();
        assert!(url.https);
        assert_eq!(
            (url.host.as_str(), url.port),
            ("registry.example.com", None)
        );

        for (bad, says) in [
            ("public_url = \"registry.example.com\"", "http://"),
            ("public_url = \"https://r.example.com/v2\"", "no path"),
            ("public_url = \"http://r.example.com:99999\"", "port"),
            ("idle_timeout = \"soon\"", "duration"),
            ("upload_max_sessions = 0", "at least 1"),
        ] {
            assert_refused(bad, says);
        }
    }

    #[test]
    fn storage_as_url_or_table() {
        let c = Config::load(ServeArgs::default()).unwrap();
        assert_eq!(c.storage, Storage::File);
        let f = write("storage = \"s3://wharf/prod\"\n");
        let c = Config::load(ServeArgs {
            config: Some(f.path().into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            ..Default::default()
        })
        .unwrap();
        let Storage::S3(s3) = c.storage else {
            panic!("s3 expected")
        };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("wharf", "prod"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let f = write(
            "[storage]\nurl = \"s3://b\"\nregion = \"eu-west-1\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
        );
        let c = Config::load(ServeArgs {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap();
        let Storage::S3(s3) = c.storage else {
            panic!("s3 expected")
        };
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s3.secret_access_key.as_deref(), Some("s"));
        for (bad, says) in [
            ("storage = \"gs://x\"", "s3://"),
            (
                "[storage]\nurl = \"s3://b\"\nendpoint = \"minio:9000\"",
                "http://",
            ),
            (
                "[storage]\nurl = \"s3://b\"\naccess_key_id = \"k\"",
                "together",
            ),
            ("[storage]\nurl = \"s3://b\"\ncolour = 1", "storage"),
        ] {
            assert_refused(bad, says);
        }
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
