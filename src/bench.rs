//! `aetheris bench`: the benchmark command of DESIGN §7, on the embedded store (default) or
//! on a PostgreSQL given with `--database-url` / `AETHERIS_DATABASE_URL`. Runs the worker
//! in-process (no HTTP in the measured path) against fresh state per run and reports
//! medians over `--runs`:
//! - W1: J jobs × 10 sequential no-op `side_effect` steps at concurrency C — steps/s, job
//!   p50/p99, per-step latency p50/p99, CPU-ms per step (this process, plus every process
//!   of the PostgreSQL server when it runs on this machine);
//! - W3 (`w3.rs`): crash-to-resume and drain handoff with real worker processes;
//! - W4: reload of a 10,000-event job with and without a snapshot, and the latency of one
//!   fenced append at event 10,000 vs event 10;
//! - W5 (`bench_w5.rs`, on request): jobs parked on a signal — memory, idle CPU,
//!   signal→next step, timer lateness;
//! - W6 (`w6.rs`, on request: `--workloads w6`): tenant flood — tenant B's p99 queue wait
//!   (submission to first step, store clock) while tenant A floods 1000× as many jobs, vs
//!   B alone; target ≤ 2×, reported, never asserted;
//! - W7: bytes per event (embedded: file size / events; PostgreSQL: the `events` table
//!   with its indexes and TOAST, see `pg.rs`) and the average payload;
//! - on PostgreSQL, `pgbench` single-row insert commits/s with 1 and 32 clients on the
//!   same server in the same run, and the ratio of W1 steps/s to them (DESIGN §7: these
//!   machines are noisy, ratios to a same-run baseline are what compare).
//!
//! Fresh state: the embedded store gets a new temporary file per run; on PostgreSQL every
//! run gets its own database `bench_<uuid>` (created on the URL's server, migrated, and
//! dropped `WITH (FORCE)` after the run), so the bench never reads or writes existing
//! data. Each run lives on its own actix system thread, so its actors, pool and
//! connections are gone before the next run starts.
//!
//! Progress goes to stderr; the table (or `--json`) to stdout. Timings are reported,
//! never asserted.

mod pg;
mod w3;
mod w6;

use aetheris_actors::{
    start_worker, Invocation, Metrics, Shared, Tool, ToolError, ToolRegistry, WorkerConfig,
};
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId, Plan};
use aetheris_store::{load_job_state, Append, DynStore, NewJob, PgStore, RedbStore};
use clap::Args;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Concurrencies for W1 (jobs in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Jobs per W1 run (default: max(50, 20 × concurrency)).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events in the W4 job.
    #[arg(long, default_value_t = 10_000)]
    pub reload_events: u64,
    /// Jobs parked on a signal in W5 (run with `--workloads w5`).
    #[arg(long, default_value_t = 10_000)]
    pub parked: usize,
    /// Only these workloads (w1, w3, w4, w5, w6, w7; w5 and w6 run only when named).
    #[arg(long, value_delimiter = ',', default_value = "w1,w3,w4,w7")]
    pub workloads: Vec<String>,
    #[arg(long)]
    pub json: bool,
    /// Benchmark this PostgreSQL instead of the embedded store. Each run creates (and
    /// afterwards drops) its own database `bench_<uuid>` on that server, so the URL's user
    /// needs CREATEDB; existing data is never touched.
    #[arg(long, env = "AETHERIS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool of the measured worker.
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    /// Keep each run's database instead of dropping it (PostgreSQL; for inspection; their
    /// names are printed on stderr).
    #[arg(long)]
    pub keep_databases: bool,
    /// Seconds per pgbench measurement (PostgreSQL only; 0 skips pgbench).
    #[arg(long, default_value_t = 5)]
    pub pgbench_seconds: u64,
    /// W3: jobs in flight on the worker that is killed or drained.
    #[arg(long, default_value_t = 32)]
    pub w3_jobs: usize,
    /// W3: lease TTL of the workers (ms).
    #[arg(long, default_value_t = 5_000)]
    pub w3_lease_ttl_ms: u64,
    /// W3: heartbeat interval of the PostgreSQL workers (ms; `aetheris dev` uses TTL/5).
    #[arg(long, default_value_t = 1_000)]
    pub w3_heartbeat_ms: u64,
    /// W3: how long the stub tool holds each call (ms).
    #[arg(long, default_value_t = 20)]
    pub w3_step_ms: u64,
    /// W6: jobs tenant B trickles in per run (its queue-wait samples).
    #[arg(long, default_value_t = 50)]
    pub w6_b_jobs: usize,
    /// W6: tenant A floods this many times as many jobs as B.
    #[arg(long, default_value_t = 1000)]
    pub w6_ratio: usize,
    /// W6: B submits one job every this many ms.
    #[arg(long, default_value_t = 40)]
    pub w6_interval_ms: u64,
    /// W6: jobs the worker runs at once (default: as `aetheris dev` on the embedded store,
    /// 256; as `aetheris worker` on PostgreSQL, 64).
    #[arg(long)]
    pub w6_max_jobs: Option<usize>,
    /// W6: the flooding tenant's id (claims go round robin in tenant-id order).
    #[arg(long, default_value = "a")]
    pub w6_flood_tenant: String,
    /// W6: the trickling tenant's id.
    #[arg(long, default_value = "b")]
    pub w6_trickle_tenant: String,
}

/// The W1 tool: does nothing, declared side_effect so every step takes the full
/// at-most-once path.
struct Noop;

#[async_trait::async_trait]
impl Tool for Noop {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        Ok(Value::Null)
    }
}

/// utime + stime of `/proc/<who>/stat` (ms), plus the reaped children's when asked.
pub(crate) fn proc_cpu_ms(who: &str, with_children: bool) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    let after = s.rsplit(')').next()?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command, 0-based: 11 utime, 12 stime, 13 cutime, 14 cstime (ticks,
    // 100 Hz on Linux).
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let mut t = ticks(11) + ticks(12);
    if with_children {
        t += ticks(13) + ticks(14);
    }
    Some(t * 10.0)
}

fn cpu_ms() -> f64 {
    proc_cpu_ms("self", false).unwrap_or(0.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 0.5)
}

/// Runs `f` to completion on a new actix system on its own thread. Everything the run
/// started there (actors, pools, connections) is dropped with that system.
fn in_own_system<T, F, Fut>(f: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("aetheris-bench-run".into())
        .spawn(move || actix_rt::System::new().block_on(f()))
        .map_err(|e| format!("starting a benchmark thread: {e}"))?
        .join()
        .map_err(|_| "a benchmark run panicked".to_string())?
}

/// Where the measured store lives.
#[derive(Clone)]
enum Target {
    Embedded,
    Pg(pg::Server),
}

/// A fresh, empty store for one run.
enum RunDb {
    Embedded(tempfile::TempDir),
    Pg { server: pg::Server, name: String },
}

/// How to open a `RunDb` from inside the run's own system.
#[derive(Clone)]
enum Opener {
    Redb(PathBuf),
    Pg { url: String, pool: usize },
}

impl Opener {
    async fn open(self) -> Result<DynStore, String> {
        Ok(self.open_with_pg().await?.0)
    }

    /// The store, and on PostgreSQL also the concrete `PgStore` (for its append stats).
    async fn open_with_pg(self) -> Result<(DynStore, Option<PgStore>), String> {
        match self {
            Opener::Redb(p) => Ok((
                Arc::new(RedbStore::open(&p).map_err(|e| e.to_string())?),
                None,
            )),
            Opener::Pg { url, pool } => {
                let s = PgStore::connect(&url, pool)
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                s.migrate().await.map_err(|e| format!("migrations: {e}"))?;
                Ok((Arc::new(s.clone()), Some(s)))
            }
        }
    }

    fn pg_url(&self) -> Option<String> {
        match self {
            Opener::Pg { url, .. } => Some(url.clone()),
            Opener::Redb(_) => None,
        }
    }
}

impl Target {
    fn fresh(&self) -> Result<RunDb, String> {
        match self {
            Target::Embedded => Ok(RunDb::Embedded(
                tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?,
            )),
            Target::Pg(server) => {
                let s = server.clone();
                let name = in_own_system(move || async move { s.create_database().await })?;
                Ok(RunDb::Pg {
                    server: server.clone(),
                    name,
                })
            }
        }
    }

    fn postmaster(&self) -> Option<u32> {
        match self {
            Target::Pg(s) => s.postmaster,
            Target::Embedded => None,
        }
    }
}

impl RunDb {
    fn opener(&self, pool: usize) -> Opener {
        match self {
            RunDb::Embedded(dir) => Opener::Redb(dir.path().join("bench.redb")),
            RunDb::Pg { server, name } => Opener::Pg {
                url: server.url_for(name),
                pool,
            },
        }
    }

    /// Drops the run's database (the embedded file goes with its directory).
    fn cleanup(self, keep: bool) -> Result<(), String> {
        match self {
            RunDb::Embedded(_) => Ok(()),
            RunDb::Pg { name, .. } if keep => {
                eprintln!("\nkept database {name}");
                Ok(())
            }
            RunDb::Pg { server, name } => {
                in_own_system(move || async move { server.drop_database(&name).await })
            }
        }
    }
}

/// Runs `f` on a fresh store in its own system, then removes the store.
fn with_fresh<T, F, Fut>(target: &Target, pool: usize, keep: bool, f: F) -> Result<T, String>
where
    F: FnOnce(Opener) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
    T: Send + 'static,
{
    let db = target.fresh()?;
    let opener = db.opener(pool);
    let r = in_own_system(move || f(opener));
    let c = db.cleanup(keep);
    let r = r?;
    c?;
    Ok(r)
}

fn ten_step_plan() -> Plan {
    let steps: Vec<Value> = (0..10)
        .map(|i| {
            if i == 0 {
                json!({"id": "s0", "tool": "noop"})
            } else {
                json!({"id": format!("s{i}"), "tool": "noop", "needs": [format!("s{}", i - 1)]})
            }
        })
        .collect();
    serde_json::from_value(json!({ "steps": steps })).unwrap_or_default()
}

/// Completions the W1 dispatcher has seen: waited for, or seen before anyone waited.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<JobId, tokio::sync::oneshot::Sender<Instant>>,
    early: HashMap<JobId, Instant>,
}

struct W1 {
    steps_per_s: f64,
    job_p50_ms: f64,
    job_p99_ms: f64,
    step_p50_ms: f64,
    step_p99_ms: f64,
    cpu_ms_per_step: f64,
    cpu_ms_per_step_ours: f64,
    /// None when the server's processes cannot be observed (not on this machine).
    cpu_ms_per_step_server: Option<f64>,
    bytes_per_event: f64,
    payload_per_event: f64,
    /// Mean time of one fenced append as the job actor sees it (queue + transaction).
    append_mean_ms: f64,
    /// Mean time of one tool call as the job actor sees it (actor messaging included).
    tool_mean_ms: f64,
    /// PostgreSQL only: the `events` table breakdown (W7).
    pg_w7: Option<pg::W7>,
    /// PostgreSQL only: appends per append transaction (group commit across jobs).
    appends_per_commit: Option<f64>,
}

async fn w1_once(
    opener: Opener,
    concurrency: usize,
    jobs: usize,
    postmaster: Option<u32>,
) -> Result<W1, String> {
    let pg_url = opener.pg_url();
    let (store, pg_store) = opener.open_with_pg().await?;
    let mut tools = ToolRegistry::with_builtins();
    tools.register("noop", Noop);
    let (finished, mut done_rx) = tokio::sync::broadcast::channel(65_536);
    let metrics = Arc::new(Metrics::default());
    let shared = Shared {
        store: store.clone(),
        tools,
        metrics: metrics.clone(),
        config: Arc::new(WorkerConfig {
            max_jobs: concurrency.max(1) * 2,
            ..WorkerConfig::default()
        }),
        finished,
    };
    let (leases, _) = start_worker(shared);
    let plan = ten_step_plan();
    let size0 = store.size_bytes().await.unwrap_or(0);
    let server0 = postmaster.and_then(pg::server_cpu_ms);
    let stats0 = pg_store.as_ref().map(|p| p.append_stats());
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    // C slots, each submitting a job and waiting for it to finish, again and again, so
    // that C jobs are in flight and submissions overlap like a gateway's would. A
    // dispatcher hands each completion to the slot waiting for that job.
    let waiters: Rc<RefCell<Waiters>> = Rc::default();
    let w = waiters.clone();
    let dispatcher = actix_rt::spawn(async move {
        while let Ok((id, _)) = done_rx.recv().await {
            let at = Instant::now();
            let mut w = w.borrow_mut();
            match w.waiting.remove(&id) {
                Some(tx) => {
                    let _ = tx.send(at);
                }
                None => {
                    w.early.insert(id, at);
                }
            }
        }
    });
    let left = Rc::new(Cell::new(jobs));
    let sample_job: Rc<Cell<Option<JobId>>> = Rc::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut slots = Vec::new();
    for _ in 0..concurrency.min(jobs) {
        let (store, plan, left, waiters, sample) = (
            store.clone(),
            plan.clone(),
            left.clone(),
            waiters.clone(),
            sample_job.clone(),
        );
        slots.push(actix_rt::spawn(async move {
            let mut latencies = Vec::new();
            while left.get() > 0 {
                left.set(left.get() - 1);
                let (summary, _) = store
                    .submit(
                        NewJob {
                            tenant: "bench".into(),
                            idempotency_key: None,
                            plan: plan.clone(),
                            input: Value::Null,
                        },
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let id = summary.job_id;
                let submitted = Instant::now();
                if sample.get().is_none() {
                    sample.set(Some(id));
                }
                let done = {
                    let mut w = waiters.borrow_mut();
                    match w.early.remove(&id) {
                        Some(at) => Ok(at),
                        None => {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            w.waiting.insert(id, tx);
                            Err(rx)
                        }
                    }
                };
                let at = match done {
                    Ok(at) => at,
                    Err(rx) => tokio::time::timeout_at(deadline, rx)
                        .await
                        .map_err(|_| "W1 run did not finish in 10 minutes".to_string())?
                        .map_err(|_| "completion feed closed".to_string())?,
                };
                latencies.push(at.duration_since(submitted).as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(jobs);
    for s in slots {
        latencies.extend(s.await.map_err(|e| format!("W1 slot: {e}"))??);
    }
    dispatcher.abort();
    let sample_job = sample_job.get();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
    let server_cpu = match (server0, postmaster.and_then(pg::server_cpu_ms)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let rendered = metrics.render(&[]);
    let stats0 = stats0.zip(pg_store.as_ref().map(|p| p.append_stats()));
    let _ = leases
        .send(aetheris_actors::Drain {
            grace: Duration::from_secs(5),
        })
        .await;
    let steps = (jobs * 10) as f64;
    let events = (jobs * 22) as f64; // submitted + 10 × (started, succeeded) + job_succeeded
    let size = store.size_bytes().await.unwrap_or(0).saturating_sub(size0) as f64;
    let payload = {
        let ev = store
            .read_events(
                aetheris_store::Scope::System,
                sample_job.unwrap_or_default(),
                0,
                100,
            )
            .await
            .unwrap_or_default();
        ev.iter()
            .map(|e| e.body.payload().len() as f64)
            .sum::<f64>()
            / ev.len().max(1) as f64
    };
    let pg_w7 = match &pg_url {
        Some(url) => Some(pg::w7(url).await?),
        None => None,
    };
    latencies.sort_by(|a, b| a.total_cmp(b));
    let step: Vec<f64> = latencies.iter().map(|l| l / 10.0).collect();
    Ok(W1 {
        steps_per_s: steps / wall,
        job_p50_ms: pct(&latencies, 0.5),
        job_p99_ms: pct(&latencies, 0.99),
        step_p50_ms: pct(&step, 0.5),
        step_p99_ms: pct(&step, 0.99),
        cpu_ms_per_step: (cpu + server_cpu.unwrap_or(0.0)) / steps,
        cpu_ms_per_step_ours: cpu / steps,
        cpu_ms_per_step_server: server_cpu.map(|c| c / steps),
        bytes_per_event: size / events,
        payload_per_event: payload,
        append_mean_ms: histogram_mean_ms(&rendered, "aetheris_store_append_seconds"),
        tool_mean_ms: histogram_mean_ms(&rendered, "aetheris_step_duration_seconds"),
        pg_w7,
        appends_per_commit: stats0.map(|(a, b)| {
            (b.appends - a.appends) as f64 / (b.transactions - a.transactions).max(1) as f64
        }),
    })
}

/// Mean (ms) of a histogram in Prometheus text, over all its label sets.
fn histogram_mean_ms(text: &str, name: &str) -> f64 {
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(suffix))
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = total("_count");
    if count > 0.0 {
        total("_sum") / count * 1000.0
    } else {
        0.0
    }
}

struct W4 {
    reload_no_snapshot_ms: f64,
    reload_with_snapshot_ms: f64,
    append_at_10_ms: f64,
    append_at_end_ms: f64,
}

async fn append_latency(
    store: &DynStore,
    job: JobId,
    token: u64,
    mut seq: u64,
    n: usize,
) -> Result<(f64, u64), String> {
    let key = invocation_key("bench", job, "s", 0);
    let mut samples = Vec::new();
    for _ in 0..n {
        let body = EventBody::StepStarted {
            step: "s".into(),
            attempt: 1,
            invocation_key: key.clone(),
            tool: "echo".into(),
            effect: EffectClass::Pure,
            fencing_token: token,
        };
        let t = Instant::now();
        store
            .append(Append {
                job_id: job,
                token,
                expected_last_seq: seq,
                events: vec![body],
            })
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        seq += 1;
    }
    Ok((median(samples), seq))
}

async fn w4_once(opener: Opener, events: u64) -> Result<W4, String> {
    let store = opener.open().await?;
    let plan: Plan = serde_json::from_value(json!({"steps": [{"id": "s", "tool": "echo"}]}))
        .map_err(|e| e.to_string())?;
    let (job, _) = store
        .submit(
            NewJob {
                tenant: "bench".into(),
                idempotency_key: None,
                plan,
                input: Value::Null,
            },
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let lease = store
        .claim("bench", 600_000, 1)
        .await
        .map_err(|e| e.to_string())?;
    let token = lease
        .first()
        .map(|l| l.token)
        .ok_or("claim returned nothing")?;
    // A pure step may be started again and again: a valid 10,000-event log.
    let (append_at_10_ms, mut seq) = append_latency(&store, job.job_id, token, 1, 10).await?;
    let key = invocation_key("bench", job.job_id, "s", 0);
    while seq < events {
        let n = (events - seq).min(500);
        let body = EventBody::StepStarted {
            step: "s".into(),
            attempt: 1,
            invocation_key: key.clone(),
            tool: "echo".into(),
            effect: EffectClass::Pure,
            fencing_token: token,
        };
        store
            .append(Append {
                job_id: job.job_id,
                token,
                expected_last_seq: seq,
                events: vec![body; n as usize],
            })
            .await
            .map_err(|e| e.to_string())?;
        seq += n;
    }
    let mut no_snap = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        load_job_state(&store, job.job_id)
            .await
            .map_err(|e| e.to_string())?;
        no_snap.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let state = load_job_state(&store, job.job_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("job vanished")?
        .state;
    let blob = encode_versioned(SNAPSHOT_FORMAT, &state).map_err(|e| e.to_string())?;
    store
        .put_snapshot(job.job_id, token, state.last_seq, blob)
        .await
        .map_err(|e| e.to_string())?;
    let mut with_snap = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        load_job_state(&store, job.job_id)
            .await
            .map_err(|e| e.to_string())?;
        with_snap.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (append_at_end_ms, _) = append_latency(&store, job.job_id, token, seq, 10).await?;
    Ok(W4 {
        reload_no_snapshot_ms: median(no_snap),
        reload_with_snapshot_ms: median(with_snap),
        append_at_10_ms,
        append_at_end_ms,
    })
}

/// The median of values every run has, or null.
fn opt_median(v: impl Iterator<Item = Option<f64>>) -> Value {
    match v.collect::<Option<Vec<f64>>>() {
        Some(v) if !v.is_empty() => json!(median(v)),
        _ => json!(null),
    }
}

fn progress(msg: &str) {
    eprint!("\r{msg:<72}");
}

fn progress_done() {
    eprint!("\r{:72}\r", "");
}

pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.runs == 0 || args.concurrency.contains(&0) {
        return Err("--runs and every --concurrency must be at least 1".into());
    }
    if args.pool_size == 0 || args.w3_jobs == 0 {
        return Err("--pool-size and --w3-jobs must be at least 1".into());
    }
    if args.w3_heartbeat_ms == 0 || args.w3_heartbeat_ms >= args.w3_lease_ttl_ms {
        return Err("--w3-heartbeat-ms must be above 0 and below --w3-lease-ttl-ms".into());
    }
    if args.w6_b_jobs == 0 || args.w6_ratio == 0 || args.w6_max_jobs == Some(0) {
        return Err("--w6-b-jobs, --w6-ratio and --w6-max-jobs must be at least 1".into());
    }
    if args.w6_flood_tenant.is_empty()
        || args.w6_trickle_tenant.is_empty()
        || args.w6_flood_tenant == args.w6_trickle_tenant
    {
        return Err(
            "--w6-flood-tenant and --w6-trickle-tenant must be two different, non-empty ids".into(),
        );
    }
    for w in &args.workloads {
        if !["w1", "w3", "w4", "w5", "w6", "w7"].contains(&w.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown workload {w:?} (expected w1, w3, w4, w5, w6 or w7)"
            ));
        }
    }
    let want = |w: &str| args.workloads.iter().any(|x| x.eq_ignore_ascii_case(w));
    let target = match &args.database_url {
        None => Target::Embedded,
        Some(url) => {
            let url = url.clone();
            progress("connecting to PostgreSQL…");
            Target::Pg(in_own_system(move || async move {
                pg::Server::probe(&url).await
            })?)
        }
    };
    let mut report = json!({"runs": args.runs});
    match &target {
        Target::Embedded => {
            report["store"] = json!("embedded (redb)");
            report["fresh_state"] = json!("a new temporary redb file per run");
        }
        Target::Pg(s) => {
            report["store"] = json!("postgresql");
            report["server"] = json!(s.version);
            report["fresh_state"] = json!("a new database bench_<uuid> per run, dropped after it");
            report["server_cpu_observed"] = json!(s.postmaster.is_some());
        }
    }

    if let (Target::Pg(server), true) = (&target, args.pgbench_seconds > 0) {
        let mut one = Vec::new();
        let mut many = Vec::new();
        let mut binary = String::new();
        for r in 0..args.runs {
            progress(&format!(
                "pgbench run {}/{} (1 and 32 clients, {} s each)…",
                r + 1,
                args.runs,
                args.pgbench_seconds
            ));
            let s = server.clone();
            let secs = args.pgbench_seconds;
            match in_own_system(move || async move { s.pgbench(secs).await })? {
                Some(p) => {
                    one.push(p.clients_1);
                    many.push(p.clients_32);
                    binary = p.binary;
                }
                None => break,
            }
        }
        report["pgbench"] = if one.is_empty() {
            json!(null)
        } else {
            json!({
                "binary": binary,
                "seconds": args.pgbench_seconds,
                "script": "\\set x random(1, 1000000000); INSERT INTO pgb(x) VALUES (:x) \
                           (logged table, bigserial primary key), -n",
                "commits_per_s_1_client": median(one),
                "commits_per_s_32_clients": median(many),
            })
        };
    }

    let mut largest_w1: Option<(usize, Vec<W1>)> = None;
    if want("w1") || want("w7") {
        let mut rows = Vec::new();
        for &c in &args.concurrency {
            let jobs = args.jobs.unwrap_or((c * 20).max(50));
            let mut runs = Vec::new();
            for r in 0..args.runs {
                progress(&format!(
                    "W1 c={c:<3} run {}/{} ({jobs} jobs × 10 steps)…",
                    r + 1,
                    args.runs
                ));
                let pm = target.postmaster();
                runs.push(with_fresh(
                    &target,
                    args.pool_size,
                    args.keep_databases,
                    move |o| w1_once(o, c, jobs, pm),
                )?);
            }
            let m = |f: fn(&W1) -> f64| median(runs.iter().map(f).collect());
            let server = if runs.iter().all(|w| w.cpu_ms_per_step_server.is_some()) {
                json!(median(
                    runs.iter()
                        .filter_map(|w| w.cpu_ms_per_step_server)
                        .collect()
                ))
            } else {
                json!(null)
            };
            let steps_per_s = m(|w| w.steps_per_s);
            let mut row = json!({
                "concurrency": c, "jobs": jobs,
                "steps_per_s": steps_per_s,
                "job_p50_ms": m(|w| w.job_p50_ms), "job_p99_ms": m(|w| w.job_p99_ms),
                "step_p50_ms": m(|w| w.step_p50_ms), "step_p99_ms": m(|w| w.step_p99_ms),
                "cpu_ms_per_step": m(|w| w.cpu_ms_per_step),
                "cpu_ms_per_step_aetheris": m(|w| w.cpu_ms_per_step_ours),
                "cpu_ms_per_step_server": server,
                "append_mean_ms": m(|w| w.append_mean_ms),
                "appends_per_commit": opt_median(runs.iter().map(|w| w.appends_per_commit)),
                "tool_call_mean_ms": m(|w| w.tool_mean_ms),
                "bytes_per_event": m(|w| w.bytes_per_event),
                "payload_bytes_per_event": m(|w| w.payload_per_event),
            });
            if let Some(p) = report.get("pgbench").filter(|p| !p.is_null()) {
                let base = if c == 1 {
                    p["commits_per_s_1_client"].as_f64()
                } else {
                    p["commits_per_s_32_clients"].as_f64()
                };
                if let Some(b) = base.filter(|b| *b > 0.0) {
                    row["pgbench_baseline"] = json!(if c == 1 { "1 client" } else { "32 clients" });
                    row["ratio_to_pgbench"] = json!(steps_per_s / b);
                }
            }
            rows.push(row);
            if largest_w1.as_ref().is_none_or(|(j, _)| jobs > *j) {
                largest_w1 = Some((jobs, runs));
            }
        }
        progress_done();
        if want("w1") {
            report["w1"] = json!(rows);
        }
    }
    if want("w7") {
        if let Some((jobs, runs)) = &largest_w1 {
            let m = |f: &dyn Fn(&W1) -> f64| median(runs.iter().map(f).collect());
            let mut w7 = json!({
                "from_w1_jobs": jobs,
                "events": jobs * 22,
                "store_bytes_per_event": m(&|w| w.bytes_per_event),
                "payload_bytes_per_event": m(&|w| w.payload_per_event),
            });
            if runs.iter().all(|w| w.pg_w7.is_some()) {
                let p = |f: fn(&pg::W7) -> f64| {
                    median(
                        runs.iter()
                            .filter_map(|w| w.pg_w7.as_ref().map(f))
                            .collect(),
                    )
                };
                w7["store_counts"] = json!(
                    "jobs + events + ledger + snapshots tables (pg_total_relation_size) / events"
                );
                w7["events_table"] = json!({
                    "counts": "pg_total_relation_size('events'): heap + primary-key index + \
                               TOAST + free-space and visibility maps",
                    "bytes_per_event": p(|w| w.total_per_event),
                    "heap_bytes_per_event": p(|w| w.heap_per_event),
                    "index_bytes_per_event": p(|w| w.index_per_event),
                    "toast_and_maps_bytes_per_event": p(|w| w.rest_per_event),
                    "payload_bytes_per_event": p(|w| w.payload_per_event),
                    "overhead_bytes_per_event": p(|w| w.total_per_event - w.payload_per_event),
                });
            } else {
                w7["store_counts"] = json!("redb file growth / events");
                w7["overhead_bytes_per_event"] =
                    json!(m(&|w| w.bytes_per_event - w.payload_per_event));
            }
            report["w7"] = w7;
        }
    }
    if want("w3") {
        report["w3"] = w3::run(&target, &args)?;
        progress_done();
    }
    if want("w5") {
        progress(&format!("W5 ({} parked jobs)…", args.parked));
        let (parked, samples) = (args.parked, 200.min(args.parked));
        report["w5"] = with_fresh(
            &target,
            args.pool_size,
            args.keep_databases,
            move |o| async move {
                let store = o.open().await?;
                crate::bench_w5::w5(store, parked, samples, 200).await
            },
        )?;
        progress_done();
    }
    if want("w6") {
        report["w6"] = w6::run(&target, &args)?;
        progress_done();
    }
    if want("w4") {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            progress(&format!(
                "W4 run {}/{} ({} events)…",
                r + 1,
                args.runs,
                args.reload_events
            ));
            let n = args.reload_events;
            runs.push(with_fresh(
                &target,
                args.pool_size,
                args.keep_databases,
                move |o| w4_once(o, n),
            )?);
        }
        progress_done();
        let m = |f: fn(&W4) -> f64| median(runs.iter().map(f).collect());
        report["w4"] = json!({
            "events": args.reload_events,
            "reload_without_snapshot_ms": m(|w| w.reload_no_snapshot_ms),
            "reload_with_snapshot_ms": m(|w| w.reload_with_snapshot_ms),
            "append_at_event_10_ms": m(|w| w.append_at_10_ms),
            "append_at_last_event_ms": m(|w| w.append_at_end_ms),
        });
    }
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
        if let Some(w) = report.get("w5").filter(|w| !w.is_null()) {
            println!(
                "\nW5: {} jobs parked on a signal: RSS {:.1} MiB (+{:.1}), idle CPU {:.2}%, \
                 signal→next step p50 {:.1} ms p99 {:.1} ms, timer lateness p50 {:.0} ms p99 {:.0} ms",
                w["parked_jobs"],
                f(&w["rss_mib"]),
                f(&w["rss_delta_mib"]),
                f(&w["idle_cpu_percent"]),
                f(&w["signal_to_next_step_p50_ms"]),
                f(&w["signal_to_next_step_p99_ms"]),
                f(&w["timer_lateness_p50_ms"]),
                f(&w["timer_lateness_p99_ms"]),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn print_table(r: &Value) {
    println!(
        "aetheris bench — {} — medians of {} runs",
        r["store"].as_str().unwrap_or(""),
        r["runs"]
    );
    if let Some(v) = r["server"].as_str() {
        println!("server: {v}");
    }
    if let Some(s) = r["fresh_state"].as_str() {
        println!("fresh state: {s}");
    }
    if let Some(p) = r.get("pgbench").filter(|p| !p.is_null()) {
        println!(
            "\npgbench (same server, single-row INSERT commits, {} s): {:.0}/s with 1 client, \
             {:.0}/s with 32 clients",
            p["seconds"],
            f(&p["commits_per_s_1_client"]),
            f(&p["commits_per_s_32_clients"])
        );
    }
    if let Some(rows) = r["w1"].as_array() {
        println!("\nW1: jobs × 10 sequential no-op side_effect steps");
        println!(
            "{:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17} {:>11}  vs pgbench",
            "conc",
            "jobs",
            "steps/s",
            "job p50",
            "job p99",
            "step p50",
            "step p99",
            "cpu/step",
            "(ours + server)",
            "bytes/event",
        );
        for w in rows {
            let split = match w["cpu_ms_per_step_server"].as_f64() {
                Some(s) => format!("({:.3} + {:.3})", f(&w["cpu_ms_per_step_aetheris"]), s),
                None => "(ours only)".to_string(),
            };
            let ratio = match w["ratio_to_pgbench"].as_f64() {
                Some(x) => format!(
                    "{x:.2}× {}",
                    w["pgbench_baseline"].as_str().unwrap_or_default()
                ),
                None => String::new(),
            };
            println!(
                "{:>5} {:>6} {:>9.0} {:>7.2}ms {:>7.2}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>17} {:>5.0} ({:.0}p)  {}",
                w["concurrency"].as_u64().unwrap_or(0),
                w["jobs"].as_u64().unwrap_or(0),
                f(&w["steps_per_s"]),
                f(&w["job_p50_ms"]),
                f(&w["job_p99_ms"]),
                f(&w["step_p50_ms"]),
                f(&w["step_p99_ms"]),
                f(&w["cpu_ms_per_step"]),
                split,
                f(&w["bytes_per_event"]),
                f(&w["payload_bytes_per_event"]),
                ratio,
            );
        }
        println!("  (bytes/event: whole store growth per event, (Np) = average payload bytes)");
        println!("  where a step's time goes (means, as the job actor sees them):");
        for w in rows {
            let batching = match w["appends_per_commit"].as_f64() {
                Some(b) => format!(", {b:.1} appends per commit"),
                None => String::new(),
            };
            println!(
                "  c={:<3} fenced append (queue + commit) {:.3} ms{batching}, tool call {:.3} ms",
                w["concurrency"].as_u64().unwrap_or(0),
                f(&w["append_mean_ms"]),
                f(&w["tool_call_mean_ms"]),
            );
        }
    }
    if let Some(w) = r.get("w7").filter(|w| !w.is_null()) {
        println!(
            "\nW7: storage, from the W1 run of {} jobs",
            w["from_w1_jobs"]
        );
        println!(
            "  whole store: {:.0} bytes/event ({}), payload {:.0} bytes/event",
            f(&w["store_bytes_per_event"]),
            w["store_counts"].as_str().unwrap_or(""),
            f(&w["payload_bytes_per_event"])
        );
        if let Some(e) = w.get("events_table") {
            println!(
                "  events table incl. indexes: {:.0} bytes/event = heap {:.0} + index {:.0} \
                 + TOAST/maps {:.0}; minus payload {:.0} = {:.0} bytes overhead/event",
                f(&e["bytes_per_event"]),
                f(&e["heap_bytes_per_event"]),
                f(&e["index_bytes_per_event"]),
                f(&e["toast_and_maps_bytes_per_event"]),
                f(&e["payload_bytes_per_event"]),
                f(&e["overhead_bytes_per_event"]),
            );
        }
    }
    if let Some(w) = r.get("w3").filter(|w| !w.is_null()) {
        w3::print(w);
    }
    if let Some(w) = r.get("w6").filter(|w| !w.is_null()) {
        w6::print(w);
    }
    if let Some(w) = r.get("w4").filter(|w| !w.is_null()) {
        println!("\nW4: reload of a {}-event job", w["events"]);
        println!(
            "  without snapshot {:>9.2} ms",
            f(&w["reload_without_snapshot_ms"])
        );
        println!(
            "  with snapshot    {:>9.2} ms",
            f(&w["reload_with_snapshot_ms"])
        );
        println!(
            "  one append at event 10: {:.3} ms; at event {}: {:.3} ms",
            f(&w["append_at_event_10_ms"]),
            w["events"],
            f(&w["append_at_last_event_ms"])
        );
    }
}
