//! The `wharf` command: `wharf serve` runs the registry.

mod admin;
mod artifact;
mod cache;
mod config;
mod keys;
mod replication;
mod scan;
mod upstream;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wharf_meta::Meta;
use wharf_server::ContentKeys;
use wharf_server::{AppState, Settings};
use wharf_store::seal::{KeyRing, Sealing};
use wharf_store::{BlobStore, FsStore, ObjectBlobStore};

use config::{Config, LogFormat, ServeArgs, Storage};

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A multi-tenant OCI container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    Serve(Box<ServeArgs>),
    /// Manage registries (tenants).
    Registry {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::RegistryCommand,
    },
    /// Manage the repositories of a registry.
    Repo {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::RepoCommand,
    },
    /// Manage administrators' API keys.
    AdminKey {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::AdminKeyCommand,
    },
    /// Image references.
    Ref {
        #[command(subcommand)]
        command: RefCommand,
    },
    /// Manage the robot tokens of a registry.
    Token {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// What scans found in a registry's images: status, vulnerabilities.
    Artifact {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: artifact::ArtifactCommand,
    },
    /// Scan an image file (OCI layout directory or `docker save` tar) for vulnerabilities.
    Scan(scan::ScanArgs),
    /// The vulnerability database used by scans.
    Vulndb {
        #[command(subcommand)]
        command: scan::VulndbCommand,
    },
    /// The metadata database.
    Metadata {
        #[command(subcommand)]
        command: MetadataCommand,
    },
    /// Show how the server is set up: version, storage, encryption.
    System {
        #[command(flatten)]
        conn: admin::Connection,
    },
    /// Credentials for external registries, and their connection test.
    Upstream {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: upstream::UpstreamCommand,
    },
    /// Pull-through caches: repository prefixes fetched from an upstream.
    Cache {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Push replication to upstreams: rules, their status and history.
    Replication {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: replication::ReplicationCommand,
    },
    /// Garbage collection: run it now (or a dry run), see past runs.
    Gc {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::GcCommand,
    },
    /// Encryption keys: rotate the master key, see what each key wraps.
    Keys {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        command: admin::KeysCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(flatten)]
        args: admin::AuditArgs,
    },
}

#[derive(Subcommand)]
enum MetadataCommand {
    /// Copy all metadata (registries, tokens, keys, manifests, tags, audit log, vulnerability
    /// data) into another, empty database, e.g. from the embedded SQLite to PostgreSQL. Stop
    /// the server first.
    Copy {
        /// The database to fill: postgres://... or sqlite:PATH (created if missing).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        db: config::DbArgs,
    },
}

fn copy_metadata(to: &str, db: config::DbArgs) -> Result<(), String> {
    scan::runtime()?.block_on(async {
        let source = scan::connect(db).await?;
        let target = wharf_meta::Meta::connect(to)
            .await
            .map_err(|e| format!("target database: {e}"))?;
        let copied = source
            .copy_into(&target, |table, rows| println!("{table}: {rows} rows"))
            .await
            .map_err(|e| format!("copying metadata: {e}"));
        source.close().await;
        target.close().await;
        copied
    })
}

#[derive(Subcommand)]
enum RefCommand {
    /// Check an image reference (REGISTRY/NAMESPACE/REPOSITORY:TAG@DIGEST) and show its parts.
    Check {
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn check_reference(reference: &str, json: bool) -> Result<(), String> {
    let r = wharf_oci::ImageReference::parse(reference).map_err(|e| e.to_string())?;
    let digest = r.digest.as_ref().map(|d| d.to_string());
    if json {
        let value = serde_json::json!({
            "registry": r.registry, "namespace": r.namespace, "repository": r.repository,
            "tag": r.tag, "digest": digest,
        });
        println!("{value}");
    } else {
        let show = |v: Option<&str>| v.unwrap_or("-").to_string();
        println!("registry:   {}", show(r.registry.as_deref()));
        println!(
            "namespace:  {}",
            show(
                Some(&r.namespace)
                    .filter(|n| !n.is_empty())
                    .map(|n| n.as_str())
            )
        );
        println!("repository: {}", r.repository);
        println!("tag:        {}", show(r.tag.as_deref()));
        println!("digest:     {}", show(digest.as_deref()));
    }
    Ok(())
}

/// Allocator settings for a long-running server (glibc):
/// - glibc raises its mmap threshold after a large block is freed, so later large blocks (each
///   argon2 hash takes 19 MiB) come from the heap and stay resident, one per thread arena. A
///   fixed threshold keeps every block of 4 MiB or more in its own mapping, returned on free.
/// - Fixing that threshold also fixes the trim threshold at 128 KiB, so every freed blob buffer
///   at the top of a heap went back to the kernel and the next one was faulted in afresh, page
///   by page: blob pulls ran at 60% of their speed. Up to 2 MiB free may stay per heap.
/// - At most 2 heaps (glibc's default is 8 per core), which bounds what the two above retain.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Rust ignores SIGPIPE, so a command piped into `head` panicked on its next print. The
/// admin commands take the default action back: they end quietly when the reader goes away,
/// as other command-line tools do. The server keeps ignoring it (a client that hangs up must
/// not stop it).
fn quit_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        // A usage error in one line: what is wrong and the values allowed, without the usage
        // block (scripts read the first line of standard error).
        Err(e) => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("wharf: {}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Serve(_)) {
        quit_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Serve(args) => Config::load(*args).and_then(serve),
        Command::Registry { conn, command } => admin::registry(conn, command),
        Command::Repo { conn, command } => admin::repo(conn, command),
        Command::AdminKey { conn, command } => admin::admin_key(conn, command),
        Command::Audit { conn, args } => admin::audit(conn, args),
        Command::System { conn } => admin::system(conn),
        Command::Keys { conn, command } => admin::keys(conn, command),
        Command::Gc { conn, command } => admin::gc(conn, command),
        Command::Upstream { conn, command } => upstream::upstream(conn, command),
        Command::Cache { conn, command } => cache::cache(conn, command),
        Command::Replication { conn, command } => replication::replication(conn, command),
        Command::Artifact { conn, command } => artifact::artifact(conn, command),
        Command::Token { conn, command } => admin::token(conn, command),
        Command::Ref {
            command: RefCommand::Check { reference, json },
        } => check_reference(&reference, json),
        Command::Vulndb { command } => scan::vulndb(command),
        Command::Metadata {
            command: MetadataCommand::Copy { to, db },
        } => copy_metadata(&to, db),
        Command::Scan(args) => match scan::scan(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("log level {:?} is invalid: {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn serve(config: Config) -> Result<(), String> {
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<(), String> {
    let metrics = wharf_server::install_metrics()?;
    let data_dir = config.data_dir()?;
    let database_url = config.database_url_for(&data_dir);
    // A source that does not exist or is no URL stops the start, named, before anything else.
    let vulndb_sources = config
        .vulndb_sources
        .iter()
        .map(|s| wharf_server::vulndb::Source::parse(s))
        .collect::<Result<Vec<_>, _>>()?;

    let meta = Meta::connect(&database_url)
        .await
        .map_err(|e| format!("metadata database: {e}"))?;
    if let Some(name) = &config.default_registry {
        let location = config
            .locations
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        meta.ensure_registry(name, location)
            .await
            .map_err(|e| format!("metadata database: {e}"))?;
    }
    bootstrap_owner_key(&meta).await?;
    let stored = meta
        .stored_signing_key()
        .await
        .map_err(|e| format!("metadata database: {e}"))?;
    let masters = keys::master_keys(
        &config,
        &data_dir,
        keys::sealed_with(stored.as_deref()).as_deref(),
    )?;
    keys::jwt_signing_key(&meta, masters.as_ref().map(|(k, _)| k.as_slice())).await?;
    let content_keys = masters.map(|(keys, source)| {
        Arc::new(ContentKeys::new(
            meta.clone(),
            keys,
            source,
            config.rewrap_rate,
        ))
    });
    let sealing = Sealing::new(content_keys.clone().map(|k| k as Arc<dyn KeyRing>));
    let jwt_keys = wharf_server::jwt::load(&meta, content_keys.as_deref()).await?;
    let store: Arc<dyn BlobStore> = match &config.storage {
        Storage::File => Arc::new(
            FsStore::open(&data_dir)
                .await
                .map_err(|e| format!("content store in {}: {e}", data_dir.display()))?
                .sealed(sealing.clone()),
        ),
        Storage::S3(s3) => {
            // A wrong bucket or credentials stop the start, named, rather than every request.
            let store = ObjectBlobStore::s3(s3)
                .map_err(|e| e.to_string())?
                .sealed(sealing.clone());
            store.check().await.map_err(|e| e.to_string())?;
            Arc::new(store)
        }
    };
    let state = Arc::new(AppState::new(
        meta.clone(),
        store,
        Settings {
            delete_enabled: config.delete_enabled,
            base_domain: config.base_domain.clone(),
            default_registry: config.default_registry.clone(),
            locations: config.locations.clone(),
            min_token_lifetime_secs: config.min_token_lifetime_secs,
            public_url: config.public_url.clone(),
            listen: config.listen,
            idle_timeout: config.idle_timeout,
            max_upload_sessions: config.upload_max_sessions,
            upload_max_age: config.upload_max_age,
            rate_limit: config.rate_limit,
            storage: match &config.storage {
                Storage::File => "file".to_string(),
                Storage::S3(s3) if s3.prefix.is_empty() => format!("s3://{}", s3.bucket),
                Storage::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
            },
            gc_grace: config.gc_grace,
            gc_instance_interval: std::time::Duration::from_secs(3600),
            gc_pause_file: config.gc_pause_file.clone(),
            gc_heartbeat: config.gc_heartbeat,
            scan_workers: config.scan_workers,
            scan_timeout: config.scan_timeout,
            scan_pause_file: config.scan_pause_file.clone(),
            upstream_timeout: config.upstream_timeout,
            replication_backoff: config.replication_backoff,
            storage_sample_interval: config.storage_sample_interval,
            vulndb_sources,
            vulndb_interval: config.vulndb_interval,
        },
        jwt_keys,
        content_keys.clone(),
        Some(metrics),
    ));
    tokio::spawn(wharf_server::expire_tokens(state.clone()));
    // Goes on with a rotation a restart interrupted, and retires keys nothing uses.
    if let Some(keys) = &content_keys {
        keys.spawn_rewrap();
    }
    tokio::spawn(wharf_server::expire_uploads(state.clone()));
    tokio::spawn(wharf_server::record_annotation_keys(state.clone()));
    tokio::spawn(wharf_server::schedule_gc(state.clone()));
    tokio::spawn(wharf_server::run_scan_workers(state.clone()));
    tokio::spawn(wharf_server::run_replication(state.clone()));
    tokio::spawn(wharf_server::sample_storage(state.clone()));
    tokio::spawn(wharf_server::schedule_vulndb_imports(state.clone()));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?;
    tracing::info!(
        %addr,
        data_dir = %data_dir.display(),
        database = ?meta.backend(),
        "wharf listening"
    );
    wharf_server::serve(
        listener,
        wharf_server::router(state.clone()),
        config.header_read_timeout,
        shutdown_signal(),
    )
    .await;
    state.stopped().await;
    meta.close().await;
    tracing::info!("wharf stopped");
    Ok(())
}

/// On first start (no administrator keys yet) creates an owner key: the one from
/// `WHARF_BOOTSTRAP_KEY`, or a new one printed once on standard output.
async fn bootstrap_owner_key(meta: &Meta) -> Result<(), String> {
    let db = |e: wharf_meta::MetaError| format!("metadata database: {e}");
    if meta.count_admin_keys().await.map_err(db)? > 0 {
        return Ok(());
    }
    let (secret, generated) = match std::env::var("WHARF_BOOTSTRAP_KEY") {
        Ok(k) if !k.is_empty() => (
            wharf_auth::bootstrap_admin_key(&k).map_err(|e| format!("WHARF_BOOTSTRAP_KEY: {e}"))?,
            false,
        ),
        _ => (
            wharf_auth::generate_admin_key().map_err(|e| e.to_string())?,
            true,
        ),
    };
    meta.create_admin_key(
        "bootstrap",
        &secret.hash,
        &secret.prefix,
        wharf_auth::Permission::Owner.as_str(),
        None,
    )
    .await
    .map_err(db)?;
    if generated {
        // Printed, never logged: this is the only time the secret exists outside its owner.
        println!(
            "wharf: bootstrap owner key (shown once; store it now): {}",
            secret.secret
        );
    } else {
        tracing::info!("bootstrap owner key taken from WHARF_BOOTSTRAP_KEY");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
