//! `aetheris server`, `aetheris worker` and `aetheris migrate`: the production processes,
//! all sharing one PostgreSQL (`--database-url` / `AETHERIS_DATABASE_URL`). Servers and
//! workers apply migrations at start unless `--no-migrate`; the runner holds an advisory
//! lock, so many processes starting together are safe. SIGTERM/Ctrl-C drains a worker:
//! it stops taking work, records in-flight calls and releases its leases at once. A
//! worker serves `/healthz`, `/readyz` and `/metrics` on its admin listener
//! (`--admin-bind`, no authentication: loopback by default).

use aetheris_actors::{Metrics, ToolRegistry, Worker, WorkerConfig};
use aetheris_api::{start_admin, start_node, NodeConfig};
use aetheris_store::{DynStore, PgStore};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct DbArgs {
    /// PostgreSQL URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.
    #[arg(long, env = "AETHERIS_DATABASE_URL")]
    pub database_url: String,
    /// Connections in the pool (at least 1).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_size: u16,
    /// Do not apply the database migrations at start (apply them with `aetheris
    /// migrate` first).
    #[arg(long)]
    pub no_migrate: bool,
}

/// `aetheris migrate`: only the database.
#[derive(Args, Clone)]
pub struct MigrateArgs {
    /// PostgreSQL URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.
    #[arg(long, env = "AETHERIS_DATABASE_URL")]
    pub database_url: String,
}

#[derive(Args, Clone)]
pub struct WorkerArgs {
    /// Lease TTL in milliseconds.
    #[arg(long, env = "AETHERIS_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval in milliseconds (renews all held leases in one round trip).
    #[arg(long, env = "AETHERIS_HEARTBEAT_MS", default_value_t = 1_000)]
    pub heartbeat_ms: u64,
    /// Jobs this worker runs at once. More than the database can commit for at once only
    /// adds latency: with W6 on a 2-core machine, 64 gave tenant B a p99 queue wait of
    /// 83 ms and A 954 jobs/s, where 256 gave 265 ms and 883 jobs/s.
    #[arg(long, default_value_t = 64)]
    pub max_jobs: usize,
    /// Write a job snapshot every N events.
    #[arg(long, default_value_t = 100)]
    pub snapshot_every: u64,
    /// How long a drain waits for in-flight calls before releasing anyway (ms).
    #[arg(long, default_value_t = 10_000)]
    pub drain_grace_ms: u64,
    /// Per-tenant rate limits (JSON file; see docs/limits.md).
    #[arg(long, env = "AETHERIS_LIMITS")]
    pub limits: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub llm: crate::agents::LlmArgs,
    /// Admin listener: GET /healthz, /readyz (the database answers) and /metrics
    /// (Prometheus text). It has NO authentication: keep it on loopback or a private
    /// network. Port 0 picks a free port (printed at start).
    #[arg(long, env = "AETHERIS_ADMIN_BIND", default_value = "127.0.0.1:7421")]
    pub admin_bind: String,
}

impl WorkerArgs {
    pub fn config(&self) -> Result<WorkerConfig, String> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.lease_ttl_ms {
            return Err("--heartbeat-ms must be above 0 and below --lease-ttl-ms".into());
        }
        if self.snapshot_every == 0 || self.max_jobs == 0 {
            return Err("--snapshot-every and --max-jobs must be at least 1".into());
        }
        Ok(WorkerConfig {
            lease_ttl_ms: self.lease_ttl_ms,
            heartbeat_ms: self.heartbeat_ms,
            max_jobs: self.max_jobs,
            snapshot_every: self.snapshot_every,
            rate_limits: load_limits(self.limits.as_deref())?,
            llm: self.llm.settings()?,
            ..WorkerConfig::default()
        })
    }
}

/// Reads a limits file; no file means no limits.
pub fn load_limits(
    path: Option<&std::path::Path>,
) -> Result<aetheris_actors::ratelimit::RateLimiters, String> {
    let cfg = match path {
        None => aetheris_actors::ratelimit::LimitsConfig::default(),
        Some(p) => {
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

/// The store of a server or worker: connected, and migrated unless `--no-migrate`.
pub async fn connect(db: &DbArgs) -> Result<DynStore, String> {
    let store = open(&db.database_url, usize::from(db.pool_size)).await?;
    if !db.no_migrate {
        store
            .migrate()
            .await
            .map_err(|e| format!("migrations: {e}"))?;
    }
    Ok(Arc::new(store))
}

pub fn migrate(db: MigrateArgs) -> Result<ExitCode, String> {
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
/// one key is required unless `--insecure-no-auth` says otherwise.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// Verify HS256 tokens with the secret in this file (`hex:…`/`base64:…`, ≥ 32 bytes).
    /// Repeat for key rotation.
    #[arg(long, env = "AETHERIS_AUTH_HS256_SECRET_FILE", value_delimiter = ',')]
    pub auth_hs256_secret_file: Vec<PathBuf>,
    /// Verify EdDSA tokens with the Ed25519 public key in this file (32 bytes,
    /// `hex:…`/`base64:…`; `aetheris token keygen` writes one). Repeat for rotation.
    #[arg(
        long,
        env = "AETHERIS_AUTH_ED25519_PUBLIC_KEY_FILE",
        value_delimiter = ','
    )]
    pub auth_ed25519_public_key_file: Vec<PathBuf>,
    /// Require this `aud` in every token.
    #[arg(long, env = "AETHERIS_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Run without authentication (refused otherwise when no key is configured).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

fn read_key_file(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("reading {}: {e}", p.display()))
}

impl AuthArgs {
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

pub fn server(
    db: DbArgs,
    bind: String,
    limits: Option<std::path::PathBuf>,
    auth: AuthArgs,
    gateway: GatewayArgs,
    evidence: crate::evidence::KeyArgs,
    llm: crate::agents::LlmArgs,
) -> Result<ExitCode, String> {
    let auth = auth.load()?;
    let llm = llm.settings()?;
    let evidence_key = match &evidence.evidence_signing_key_file {
        Some(p) => Some(crate::evidence::load_signing_key(p)?),
        None => None,
    };
    let mut cfg = NodeConfig {
        bind: bind.clone(),
        run_worker: false,
        auth,
        evidence_key,
        ..NodeConfig::default()
    };
    gateway.validate()?;
    gateway.apply(&mut cfg);
    crate::dev::init_logging();
    let rate_limits = load_limits(limits.as_deref())?;
    crate::startup::check_bind(&bind)?;
    crate::startup::run_system(async move {
        let store = connect(&db).await?;
        let tools = ToolRegistry::with_builtins();
        cfg.worker = WorkerConfig {
            rate_limits,
            llm,
            ..WorkerConfig::default()
        };
        let (node, running) = start_node(store, tools, cfg)
            .await
            .map_err(|e| e.to_string())?;
        println!("aetheris server: listening on http://{}", node.addr);
        if evidence.evidence_signing_key_file.is_none() {
            eprintln!(
                "aetheris server: no --evidence-signing-key-file: evidence export and \
                 checkpoints answer 503 (see docs/evidence.md)"
            );
        }
        let task = actix_rt::spawn(running);
        crate::dev::wait_for_signal().await;
        node.shutdown(Duration::from_secs(1)).await;
        let _ = task.await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn worker(db: DbArgs, w: WorkerArgs) -> Result<ExitCode, String> {
    crate::dev::init_logging();
    let config = w.config()?;
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
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Connections this gateway serves at once; a connection beyond them is answered
    /// 503 (`Retry-After: 1`) at its first request. Lowered to fit the process's
    /// file-descriptor limit.
    #[arg(long, env = "AETHERIS_MAX_CONNECTIONS", default_value_t = aetheris_api::conn::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Milliseconds a client has to send a whole request body; a slower one is answered
    /// 408 and its connection closed (1-300000).
    #[arg(long, env = "AETHERIS_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
}

impl GatewayArgs {
    /// Refuses values that make no sense (checked before anything starts).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if !(1..=300_000).contains(&self.body_timeout_ms) {
            return Err("--body-timeout-ms must be between 1 and 300000".into());
        }
        Ok(())
    }

    /// Applies the (validated) flags to a node's configuration.
    pub fn apply(&self, cfg: &mut aetheris_api::NodeConfig) {
        cfg.connections.max = self.max_connections;
        cfg.body.deadline = Duration::from_millis(self.body_timeout_ms);
    }
}
