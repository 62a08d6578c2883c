//! `aetheris dev`: gateway + worker in one process on the embedded redb store, signing
//! evidence packages with `<data-dir>/evidence.key` (made on first start). With
//! `--run FILE` it also submits that job, prints its trace when it finishes, and exits
//! (0 if it succeeded): the README's first command. Start-up checks everything it can —
//! settings (`crate::config`), job file, limits file, listen address, data dir — before
//! opening the store or starting an actor, and any failure is one `error: …` line (see
//! `startup.rs`).

use crate::client::{fetch_events, print_trace, submit, wait_for, Api, TokenSource};
use crate::cluster::{DbSettings, GatewaySettings};
use crate::config::{Effective, Key, Limits};
use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_api::{start_node, NodeConfig};
use aetheris_store::{DynStore, RedbStore};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `aetheris dev`'s command line: `--run` and the settings' flags.
#[derive(Args)]
pub struct DevArgs {
    /// Submit this job file, print its trace when it stops, then exit (0 if it succeeded).
    /// `${input.server}` in its plan is this node's URL unless its input sets `server`.
    #[arg(long)]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::config::Flags<crate::config::ForDev>,
    /// LLM providers (a `scripted` one, answering offline, is always there).
    #[command(flatten)]
    pub llm: crate::agents::LlmArgs,
}

/// A dev node's settings (checked when resolved).
struct DevSettings {
    data_dir: PathBuf,
    bind: String,
    run: Option<PathBuf>,
    snapshot_every: u64,
    max_jobs: usize,
    lease_ttl_ms: u64,
    database: Option<DbSettings>,
    limits: Limits,
    insecure_no_auth: bool,
    gateway: GatewaySettings,
    /// `--evidence-signing-key-file`; unset: `<data-dir>/evidence.key`, made on first start.
    evidence_key_file: Option<PathBuf>,
    gc: crate::cluster::GcSettings,
}

impl DevSettings {
    fn from_config(c: &Effective, run: Option<PathBuf>) -> DevSettings {
        DevSettings {
            data_dir: c
                .path(Key::DataDir)
                .unwrap_or(".aetheris".as_ref())
                .to_path_buf(),
            bind: c.text(Key::Bind).unwrap_or_default().to_string(),
            run,
            snapshot_every: c.number(Key::SnapshotEvery),
            max_jobs: c.count(Key::MaxJobs),
            lease_ttl_ms: c.number(Key::LeaseTtlMs),
            database: DbSettings::from_config(c),
            limits: c.limits().clone(),
            insecure_no_auth: c.switch(Key::InsecureNoAuth),
            gateway: GatewaySettings::from_config(c),
            evidence_key_file: c.path(Key::EvidenceKeyFile).map(PathBuf::from),
            gc: crate::cluster::GcSettings::from_config(c),
        }
    }
}

/// On first start, creates `<data-dir>/auth.key` (an HS256 secret); on every start issues
/// a 30-day admin token for tenant `default` into `<data-dir>/token`, which the CLI reads
/// when no `--token` is given. Returns the auth config and the token.
pub fn dev_auth(
    data_dir: &std::path::Path,
) -> Result<(aetheris_api::auth::AuthConfig, String), String> {
    use aetheris_api::auth;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
    let key_path = data_dir.join("auth.key");
    let secret = match std::fs::read_to_string(&key_path) {
        Ok(t) => auth::decode_hs256_secret(t.trim())
            .map_err(|e| format!("{}: {e}", key_path.display()))?,
        Err(_) => {
            let s = auth::generate_hs256_secret().map_err(|e| e.to_string())?;
            write_private(&key_path, &auth::encode_key_hex(&s))?;
            s
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = auth::Claims::new(
        "dev-admin",
        "default",
        &[auth::Role::Admin],
        now,
        30 * 86_400,
    );
    let token = auth::issue_hs256(&secret, &claims);
    write_private(&data_dir.join("token"), &token)?;
    let cfg = auth::AuthConfig {
        hs256_secrets: vec![secret],
        ..Default::default()
    };
    cfg.validate()?;
    Ok((cfg, token))
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

pub fn run(
    config: &Effective,
    run: Option<PathBuf>,
    llm: &crate::agents::LlmArgs,
) -> Result<ExitCode, String> {
    let args = DevSettings::from_config(config, run);
    let llm = llm.dev_settings(config.path(Key::LlmProvidersFile))?;
    let job_file = match &args.run {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?)
        }
        None => None,
    };
    let rate_limits = crate::cluster::load_limits(&args.limits)?;
    crate::startup::check_bind(&args.bind)?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("--data-dir {}: {e}", args.data_dir.display()))?;
    let path = args.data_dir.join("aetheris.redb");
    let redb: Option<DynStore> = match &args.database {
        Some(_) => None,
        None => Some(Arc::new(RedbStore::open(&path).map_err(|e| {
            format!("--data-dir {}: {e}", args.data_dir.display())
        })?)),
    };
    let (auth, token) = if args.insecure_no_auth {
        (None, None)
    } else {
        let (a, t) = dev_auth(&args.data_dir)?;
        (Some(a), Some(t))
    };
    let (evidence_key, evidence_pub) =
        crate::evidence::dev_signing_key(args.evidence_key_file.as_deref(), &args.data_dir)?;
    let gc = args.gc.config(Some(evidence_key.clone()))?;
    crate::startup::run_system(async move {
        // The PostgreSQL pool must live on this long-lived system (a pool dies with the
        // runtime that created it).
        let (store, where_) = match (redb, &args.database) {
            (Some(s), _) => (s, path.display().to_string()),
            (None, Some(db)) => (crate::cluster::connect(db).await?, "postgresql".to_string()),
            (None, None) => return Err("no store".to_string()),
        };
        // The default tenant the dev admin token is for (created once).
        match store
            .create_tenant("default", "default", serde_json::json!({}), None)
            .await
        {
            Ok(_) | Err(aetheris_store::StoreError::Conflict(_)) => {}
            Err(e) => return Err(format!("creating the default tenant: {e}")),
        }
        let tools = ToolRegistry::with_builtins();
        let worker = WorkerConfig {
            rate_limits,
            snapshot_every: args.snapshot_every,
            max_jobs: args.max_jobs,
            lease_ttl_ms: args.lease_ttl_ms,
            heartbeat_ms: (args.lease_ttl_ms / 5).max(50),
            llm,
            gc,
            ..WorkerConfig::default()
        };
        let mut cfg = NodeConfig {
            bind: args.bind.clone(),
            worker,
            auth,
            evidence_key: Some(evidence_key),
            ..NodeConfig::default()
        };
        args.gateway.apply(&mut cfg);
        let (node, running) = start_node(store, tools, cfg)
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("http://{}", node.addr);
        println!("aetheris dev: listening on {url} (store: {where_})");
        println!(
            "aetheris dev: trace UI at {url}/ui/{}",
            if token.is_some() {
                " (sign in with the admin token below)"
            } else {
                ""
            }
        );
        if token.is_some() {
            println!(
                "aetheris dev: admin token for tenant \"default\" in {} (the CLI uses it; for curl: -H \"Authorization: Bearer $(cat {})\")",
                args.data_dir.join("token").display(),
                args.data_dir.join("token").display()
            );
        }
        if let Some(p) = &evidence_pub {
            println!(
                "aetheris dev: evidence packages are signed by {}; verify them with \
                 --public-key {}",
                args.data_dir.join("evidence.key").display(),
                p.display()
            );
        }
        let server_task = actix_rt::spawn(running);
        let code = match job_file {
            Some(body) => {
                let result = run_job(&url, token.as_deref(), body).await;
                node.shutdown(Duration::from_secs(5)).await;
                result?
            }
            None => {
                wait_for_signal().await;
                eprintln!("aetheris dev: draining");
                node.shutdown(Duration::from_secs(10)).await;
                ExitCode::SUCCESS
            }
        };
        let _ = server_task.await;
        Ok(code)
    })
}

/// `--run`: submits the job to this node, waits until it stops, prints its trace.
async fn run_job(url: &str, token: Option<&str>, body: String) -> Result<ExitCode, String> {
    let api = Api::new(url.to_string(), token, TokenSource::Given)?;
    let (_, job) = submit(&api, body).await?;
    let id = job["job_id"].as_str().unwrap_or_default().to_string();
    println!("submitted job {id}");
    let job = wait_for(&api, &id, Duration::from_secs(600)).await?;
    let events = fetch_events(&api, &id).await?;
    print_trace(&job, &events);
    Ok(if job["status"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
