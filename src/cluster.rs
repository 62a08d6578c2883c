//! `aetheris server`, `aetheris worker` and `aetheris migrate`: the production processes,
//! all sharing one PostgreSQL (a server may run a worker too: `with_worker`) (`[database] url`, `--database-url`,
//! `AETHERIS_DATABASE_URL`). Servers and workers apply migrations at start unless
//! `no_migrate`; the runner holds an advisory lock, so many processes starting together
//! are safe. SIGTERM/Ctrl-C drains a worker: it stops taking work, records in-flight calls
//! and releases its leases at once. A worker serves `/healthz`, `/readyz` and `/metrics`
//! on its admin listener (`admin_bind`, no authentication: loopback by default). Each
//! command takes its settings already checked (`crate::config`) and groups them here.

use crate::config::{Effective, Key, Limits};
use aetheris_actors::{Metrics, ToolRegistry, Worker, WorkerConfig};
use aetheris_api::{start_admin, start_node, NodeConfig};
use aetheris_store::{DynStore, PgStore};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The database of a server, worker or dev node (`[database]`).
#[derive(Clone)]
pub struct DbSettings {
    pub database_url: String,
    pub pool_size: usize,
    pub no_migrate: bool,
}

impl DbSettings {
    /// `None` when no URL is set (only `dev` allows that: it uses its embedded store).
    pub fn from_config(c: &Effective) -> Option<DbSettings> {
        Some(DbSettings {
            database_url: c.text(Key::DatabaseUrl)?.to_string(),
            pool_size: c.count(Key::PoolSize),
            no_migrate: c.switch(Key::NoMigrate),
        })
    }

    /// The URL a command that needs PostgreSQL was given (resolving refuses to start
    /// without one; this only keeps that rule visible here).
    fn required(c: &Effective) -> Result<DbSettings, String> {
        DbSettings::from_config(c).ok_or_else(|| "database.url is required".to_string())
    }
}

/// A worker process's settings (`[worker]`, and `[limits]`).
pub struct WorkerSettings {
    pub lease_ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub max_jobs: usize,
    pub snapshot_every: u64,
    pub drain_grace_ms: u64,
    pub limits: Limits,
    pub admin_bind: String,
}

impl WorkerSettings {
    pub fn from_config(c: &Effective) -> WorkerSettings {
        WorkerSettings {
            lease_ttl_ms: c.number(Key::LeaseTtlMs),
            heartbeat_ms: c.number(Key::HeartbeatMs),
            max_jobs: c.count(Key::MaxJobs),
            snapshot_every: c.number(Key::SnapshotEvery),
            drain_grace_ms: c.number(Key::DrainGraceMs),
            limits: c.limits().clone(),
            admin_bind: c.text(Key::AdminBind).unwrap_or_default().to_string(),
        }
    }

    /// The worker's configuration (ranges and heartbeat < TTL were checked when resolving).
    pub fn config(&self) -> Result<WorkerConfig, String> {
        Ok(WorkerConfig {
            lease_ttl_ms: self.lease_ttl_ms,
            heartbeat_ms: self.heartbeat_ms,
            max_jobs: self.max_jobs,
            snapshot_every: self.snapshot_every,
            rate_limits: load_limits(&self.limits)?,
            ..WorkerConfig::default()
        })
    }
}

/// Retention's settings (`[retention]`), read by `dev` and `worker`.
#[derive(Debug, Clone)]
pub struct GcSettings {
    pub default: String,
    pub batch_size: usize,
    pub interval_ms: u64,
    pub archive_dir: Option<std::path::PathBuf>,
}

impl GcSettings {
    pub fn from_config(c: &Effective) -> GcSettings {
        GcSettings {
            default: c
                .text(Key::RetentionDefault)
                .unwrap_or(aetheris_actors::gc::FOREVER)
                .to_string(),
            batch_size: c.count(Key::RetentionBatchSize),
            interval_ms: c.number(Key::RetentionIntervalMs),
            archive_dir: c.path(Key::RetentionArchiveDir).map(Into::into),
        }
    }

    /// The collector's configuration; archiving signs with `key` (required then).
    pub fn config(
        &self,
        key: Option<std::sync::Arc<aetheris_proof::SigningKey>>,
    ) -> Result<aetheris_actors::gc::GcConfig, String> {
        let default_retention_ms = aetheris_actors::gc::parse_retention(&self.default)
            .map_err(|e| format!("[retention] default: {e}"))?;
        let archive = match (&self.archive_dir, key) {
            (None, _) => None,
            (Some(dir), Some(key)) => Some(aetheris_actors::gc::Archive {
                dir: dir.clone(),
                key,
                exporter: format!("aetheris {}", env!("CARGO_PKG_VERSION")),
            }),
            (Some(_), None) => {
                return Err("[retention] archive_dir needs [evidence] signing_key_file \
                            (--evidence-signing-key-file) to sign the archived packages"
                    .into())
            }
        };
        Ok(aetheris_actors::gc::GcConfig {
            enabled: true,
            default_retention_ms,
            batch_size: self.batch_size,
            interval: Duration::from_millis(self.interval_ms),
            archive,
            ..aetheris_actors::gc::GcConfig::default()
        })
    }
}

/// The rate limiters of `limits`: a limits file is read and checked here; inline limits
/// were checked with the config file; none means no limits.
pub fn load_limits(limits: &Limits) -> Result<aetheris_actors::ratelimit::RateLimiters, String> {
    let cfg = match limits {
        Limits::None => aetheris_actors::ratelimit::LimitsConfig::default(),
        Limits::Inline(cfg) => cfg.clone(),
        Limits::File(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            aetheris_actors::ratelimit::LimitsConfig::parse(&text)
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
    };
    Ok(aetheris_actors::ratelimit::RateLimiters::new(cfg))
}

/// Connects a pool to `--database-url`; a failure says where it tried and why.
async fn open(url: &str, pool_size: usize) -> Result<PgStore, String> {
    crate::startup::describe_database_url(url)?;
    match PgStore::connect(url, pool_size).await {
        Ok(store) => Ok(store),
        Err(e) => Err(crate::startup::database_error(url, e.to_string()).await),
    }
}

/// The store of a server or worker: connected, and migrated unless `no_migrate`.
pub async fn connect(db: &DbSettings) -> Result<DynStore, String> {
    let store = open(&db.database_url, db.pool_size).await?;
    if !db.no_migrate {
        store
            .migrate()
            .await
            .map_err(|e| format!("migrations: {e}"))?;
    }
    Ok(Arc::new(store))
}

pub fn migrate(config: &Effective) -> Result<ExitCode, String> {
    let db = DbSettings::required(config)?;
    crate::startup::run_system(async move {
        let store = open(&db.database_url, 1).await?;
        let applied = store
            .migrate()
            .await
            .map_err(|e| format!("migrations: {e}"))?;
        if applied.is_empty() {
            println!("migrations: up to date");
        } else {
            for m in applied {
                println!("applied {m}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// How `aetheris server` verifies bearer tokens (docs/auth.md): any number of HS256
/// secrets and Ed25519 public keys, each from a file, plus an optional audience. At least
/// one key is required unless `insecure_no_auth` says otherwise.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub auth_hs256_secret_file: Vec<PathBuf>,
    pub auth_ed25519_public_key_file: Vec<PathBuf>,
    pub auth_audience: Option<String>,
    pub insecure_no_auth: bool,
}

impl AuthSettings {
    pub fn from_config(c: &Effective) -> AuthSettings {
        AuthSettings {
            auth_hs256_secret_file: c.paths(Key::Hs256SecretFiles).to_vec(),
            auth_ed25519_public_key_file: c.paths(Key::Ed25519PublicKeyFiles).to_vec(),
            auth_audience: c.text(Key::Audience).map(str::to_string),
            insecure_no_auth: c.switch(Key::InsecureNoAuth),
        }
    }

    /// The checked configuration, `None` with `--insecure-no-auth`; an error names the bad
    /// file, or says how to configure auth when nothing is given.
    pub fn load(&self) -> Result<Option<aetheris_api::auth::AuthConfig>, String> {
        use aetheris_api::auth;
        let no_keys =
            self.auth_hs256_secret_file.is_empty() && self.auth_ed25519_public_key_file.is_empty();
        if self.insecure_no_auth {
            if !no_keys {
                return Err("--insecure-no-auth contradicts the auth key files given".into());
            }
            return Ok(None);
        }
        if no_keys {
            return Err(
                "no authentication configured: pass --auth-hs256-secret-file FILE or \
                        --auth-ed25519-public-key-file FILE (see docs/auth.md), or \
                        --insecure-no-auth"
                    .into(),
            );
        }
        let mut cfg = auth::AuthConfig {
            audience: self.auth_audience.clone(),
            ..Default::default()
        };
        for p in &self.auth_hs256_secret_file {
            cfg.hs256_secrets.push(
                auth::decode_hs256_secret(&read_key_file(p)?)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
        }
        for p in &self.auth_ed25519_public_key_file {
            cfg.ed25519_public_keys.push(
                auth::decode_ed25519_public_key(&read_key_file(p)?)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
        }
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

fn read_key_file(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("reading {}: {e}", p.display()))
}

pub fn server(config: &Effective, llm: &crate::agents::LlmArgs) -> Result<ExitCode, String> {
    let db = DbSettings::required(config)?;
    let llm = llm.settings(config.path(Key::LlmProvidersFile))?;
    let bind = config.text(Key::Bind).unwrap_or_default().to_string();
    let gateway = GatewaySettings::from_config(config);
    let auth = AuthSettings::from_config(config).load()?;
    let evidence_key = match config.path(Key::EvidenceKeyFile) {
        Some(p) => Some(crate::evidence::load_signing_key(p)?),
        None => None,
    };
    let signs_evidence = evidence_key.is_some();
    let with_worker = config.switch(Key::WithWorker);
    let w = WorkerSettings::from_config(config);
    let worker = if with_worker {
        WorkerConfig {
            llm,
            gc: GcSettings::from_config(config).config(evidence_key.clone())?,
            ..w.config()?
        }
    } else {
        WorkerConfig {
            rate_limits: load_limits(config.limits())?,
            llm,
            ..WorkerConfig::default()
        }
    };
    let mut cfg = NodeConfig {
        bind: bind.clone(),
        run_worker: with_worker,
        worker,
        auth,
        evidence_key,
        ..NodeConfig::default()
    };
    gateway.apply(&mut cfg);
    // A server with a worker drains it on SIGTERM like `aetheris worker`.
    let grace = if with_worker {
        Duration::from_millis(w.drain_grace_ms)
    } else {
        Duration::from_secs(1)
    };
    crate::startup::check_bind(&bind)?;
    crate::startup::run_system(async move {
        let store = connect(&db).await?;
        let tools = ToolRegistry::with_builtins();
        let (node, running) = start_node(store, tools, cfg)
            .await
            .map_err(|e| e.to_string())?;
        println!("aetheris server: listening on http://{}", node.addr);
        if let Some(id) = node.worker.as_ref().map(|w| w.worker_id().to_string()) {
            // The same line as `aetheris worker` prints.
            println!("aetheris worker {id}: running");
        }
        if !signs_evidence {
            eprintln!(
                "aetheris server: no --evidence-signing-key-file: evidence export and \
                 checkpoints answer 503 (see docs/evidence.md)"
            );
        }
        let task = actix_rt::spawn(running);
        crate::dev::wait_for_signal().await;
        if with_worker {
            eprintln!("aetheris server: draining its worker");
        }
        node.shutdown(grace).await;
        let _ = task.await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn worker(settings: &Effective, llm: &crate::agents::LlmArgs) -> Result<ExitCode, String> {
    let db = DbSettings::required(settings)?;
    let w = WorkerSettings::from_config(settings);
    let evidence_key = match settings.path(Key::EvidenceKeyFile) {
        Some(p) => Some(crate::evidence::load_signing_key(p)?),
        None => None,
    };
    let config = WorkerConfig {
        llm: llm.settings(settings.path(Key::LlmProvidersFile))?,
        gc: GcSettings::from_config(settings).config(evidence_key)?,
        ..w.config()?
    };
    crate::startup::check_bind(&w.admin_bind)?;
    crate::startup::run_system(async move {
        let store = connect(&db).await?;
        // The admin listener first: a worker that cannot listen fails before it takes work.
        let (admin, admin_server) = start_admin(&w.admin_bind, store.clone(), Metrics::install())
            .map_err(|e| e.to_string())?;
        let admin_task = actix_rt::spawn(admin_server);
        let worker = Worker::start(store, ToolRegistry::with_builtins(), config)
            .await
            .map_err(|e| format!("announcing the worker: {e}"))?;
        let id = worker.worker_id().to_string();
        println!(
            "aetheris worker {id}: admin on http://{} (/healthz, /readyz, /metrics)",
            admin.addr
        );
        // Printed before the lease manager's first claim (it runs once this task yields).
        println!("aetheris worker {id}: running");
        crate::dev::wait_for_signal().await;
        eprintln!("aetheris worker: draining");
        worker.drain(Duration::from_millis(w.drain_grace_ms)).await;
        admin.server.stop(true).await;
        let _ = admin_task.await;
        Ok(ExitCode::SUCCESS)
    })
}

/// How the gateway protects itself from slow and numerous clients (`dev` and `server`).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub max_connections: usize,
    pub body_timeout_ms: u64,
}

impl GatewaySettings {
    /// The (checked) `[gateway]` settings.
    pub fn from_config(c: &Effective) -> GatewaySettings {
        GatewaySettings {
            max_connections: c.count(Key::MaxConnections),
            body_timeout_ms: c.number(Key::BodyTimeoutMs),
        }
    }

    /// Applies them to a node's configuration.
    pub fn apply(&self, cfg: &mut aetheris_api::NodeConfig) {
        cfg.connections.max = self.max_connections;
        cfg.body.deadline = Duration::from_millis(self.body_timeout_ms);
    }
}
