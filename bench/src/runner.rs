//! What every workload shares: fresh state per run on the run's own actix system, the
//! in-process worker, child processes, CPU and memory readings, percentiles and progress.
//!
//! Invariants kept here:
//! - Fresh state: every run gets a new store — a new temporary redb file, or on PostgreSQL
//!   a database `bench_<uuid>` created on the URL's server, migrated, and dropped
//!   `WITH (FORCE)` after the run — so the bench never reads or writes existing data.
//! - Isolation: each run lives on its own actix system thread, so its actors, pool and
//!   connections are gone before the next run starts.
//! - One worker start-up: [`start_worker`] is the only place the bench builds a worker;
//!   every workload's figures about the worker's own timings come from [`BenchWorker`].
//! - Progress goes to stderr (one overwritten line); stdout is the report's alone.

use crate::pg;
use aetheris_actors::metrics as m;
use aetheris_actors::{
    Invocation, Metrics, Tool, ToolError, ToolRegistry, Worker, WorkerConfig, WorkerHandle,
};
use aetheris_runtime::{EffectClass, JobId, JobStatus, Plan};
use aetheris_store::{DynStore, NewJob, PgStore, RedbStore};
use serde_json::Value;
use std::future::Future;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- statistics

/// The `p` quantile (0..=1) of `sorted` (nearest rank); 0 when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `v` sorted ascending (total order, so a NaN cannot panic the sort).
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub fn median(v: Vec<f64>) -> f64 {
    pct(&sorted(v), 0.5)
}

/// The median of a figure every run has, or `None` when a run lacks it (or there is none).
pub fn opt_median(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    match v.collect::<Option<Vec<f64>>>() {
        Some(v) if !v.is_empty() => Some(median(v)),
        _ => None,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- process readings

/// utime + stime of `/proc/<who>/stat` (ms), plus the reaped children's when asked.
pub fn proc_cpu_ms(who: &str, with_children: bool) -> Option<f64> {
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

/// CPU time of this process so far (ms).
pub fn cpu_ms() -> f64 {
    proc_cpu_ms("self", false).unwrap_or(0.0)
}

/// Resident memory of this process (KiB), 0 when unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------- progress

pub fn progress(msg: &str) {
    eprint!("\r{msg:<72}");
}

pub fn progress_done() {
    eprint!("\r{:72}\r", "");
}

// ---------------------------------------------------------------- runs and fresh state

/// Runs `f` to completion on a new actix system on its own thread. Everything the run
/// started there (actors, pools, connections) is dropped with that system.
pub fn in_own_system<T, F, Fut>(f: F) -> Result<T, String>
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
pub enum Target {
    Embedded,
    Pg(pg::Server),
}

impl Target {
    /// The embedded store, or the PostgreSQL server of `url` (probed once).
    pub fn connect(database_url: Option<&str>) -> Result<Target, String> {
        match database_url {
            None => Ok(Target::Embedded),
            Some(url) => {
                let url = url.to_string();
                progress("connecting to PostgreSQL…");
                Ok(Target::Pg(in_own_system(move || async move {
                    pg::Server::probe(&url).await
                })?))
            }
        }
    }

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

    /// The PostgreSQL postmaster's pid, when its processes can be observed from here.
    pub fn postmaster(&self) -> Option<u32> {
        match self {
            Target::Pg(s) => s.postmaster,
            Target::Embedded => None,
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, Target::Embedded)
    }
}

/// A fresh, empty store for one run.
enum RunDb {
    Embedded(tempfile::TempDir),
    Pg { server: pg::Server, name: String },
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

/// How to open a run's store from inside the run's own system.
#[derive(Clone)]
pub enum Opener {
    Redb(PathBuf),
    Pg { url: String, pool: usize },
}

impl Opener {
    pub async fn open(self) -> Result<DynStore, String> {
        Ok(self.open_with_pg().await?.0)
    }

    /// The store, and on PostgreSQL also the concrete `PgStore` (for its append stats).
    pub async fn open_with_pg(self) -> Result<(DynStore, Option<PgStore>), String> {
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

    pub fn pg_url(&self) -> Option<String> {
        match self {
            Opener::Pg { url, .. } => Some(url.clone()),
            Opener::Redb(_) => None,
        }
    }
}

/// How each run gets its store: the target, the pool size of the measured process, and
/// whether PostgreSQL databases are kept afterwards.
#[derive(Clone)]
pub struct Fresh {
    pub target: Target,
    pub pool: usize,
    pub keep: bool,
}

impl Fresh {
    /// Runs `f` on a fresh store in its own system, then removes the store.
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(Opener) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, String>>,
        T: Send + 'static,
    {
        self.run_with_pool(self.pool, f)
    }

    /// As [`Fresh::run`], with another pool size.
    pub fn run_with_pool<T, F, Fut>(&self, pool: usize, f: F) -> Result<T, String>
    where
        F: FnOnce(Opener) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, String>>,
        T: Send + 'static,
    {
        let db = self.target.fresh()?;
        let opener = db.opener(pool);
        let r = in_own_system(move || f(opener));
        let c = db.cleanup(self.keep);
        let r = r?;
        c?;
        Ok(r)
    }
}

// ---------------------------------------------------------------- jobs

/// A plan from its JSON form.
pub fn plan(json: Value) -> Result<Plan, String> {
    serde_json::from_value(json).map_err(|e| format!("benchmark plan: {e}"))
}

/// Stores a new job of `tenant` directly (no gateway) and returns its id.
pub async fn submit(
    store: &DynStore,
    tenant: &str,
    plan: &Plan,
    input: Value,
) -> Result<JobId, String> {
    let (summary, _) = store
        .submit(
            NewJob {
                tenant: tenant.to_string(),
                idempotency_key: None,
                plan: plan.clone(),
                input,
            },
            None,
        )
        .await
        .map_err(|e| format!("submit for {tenant}: {e}"))?;
    Ok(summary.job_id)
}

// ---------------------------------------------------------------- the worker

/// The W1 and W6 tool: does nothing, declared side_effect so every step takes the full
/// at-most-once path.
pub struct Noop;

#[async_trait::async_trait]
impl Tool for Noop {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        Ok(Value::Null)
    }
}

/// The built-in tools plus `noop`.
pub fn tools_with_noop() -> ToolRegistry {
    let mut tools = ToolRegistry::with_builtins();
    tools.register("noop", Noop);
    tools
}

/// Jobs a worker finished, as it recorded them.
pub type FinishedFeed = tokio::sync::broadcast::Receiver<(JobId, JobStatus)>;

/// A worker running in this process, started exactly as `aetheris dev` and `aetheris
/// worker` start one (`Worker::start`).
pub struct BenchWorker {
    handle: WorkerHandle,
    /// The process's histograms when the worker started: the recorder is process-wide and
    /// cumulative, so a run's means are taken from the difference.
    at_start: Histograms,
}

/// (sum, count) of the two histograms the bench reads.
#[derive(Clone, Copy, Default)]
struct Histograms {
    append: (f64, f64),
    tool_call: (f64, f64),
}

impl Histograms {
    fn now() -> Histograms {
        let text = Metrics::install().render(&[]);
        Histograms {
            append: histogram_totals(&text, m::STORE_APPEND_DURATION),
            tool_call: histogram_totals(&text, m::STEP_DURATION),
        }
    }
}

/// Starts a worker on the current actix system. `feed_capacity` bounds the returned feed of
/// finished jobs: a workload that must see every completion sizes it above its job count,
/// so the feed can never lag and lose one.
pub async fn start_worker(
    store: DynStore,
    tools: ToolRegistry,
    config: WorkerConfig,
    feed_capacity: usize,
) -> Result<(BenchWorker, FinishedFeed), String> {
    let config = WorkerConfig {
        finished_buffer: feed_capacity,
        ..config
    };
    let at_start = Histograms::now();
    let handle = Worker::start(store, tools, config)
        .await
        .map_err(|e| format!("starting the worker: {e}"))?;
    let feed = handle.finished();
    Ok((BenchWorker { handle, at_start }, feed))
}

impl BenchWorker {
    /// A new subscription to the jobs this worker finishes from now on.
    pub fn feed(&self) -> FinishedFeed {
        self.handle.finished()
    }

    /// Graceful stop: in-flight calls recorded, leases released.
    pub async fn drain(self) {
        self.handle.drain(Duration::from_secs(5)).await;
    }

    /// Mean time of one fenced append (queue + transaction) as the job actors saw it
    /// since this worker started (ms).
    pub fn append_mean_ms(&self) -> f64 {
        mean_ms(self.at_start.append, Histograms::now().append)
    }

    /// Mean time of one tool call as the job actors saw it, actor messaging included,
    /// since this worker started (ms).
    pub fn tool_call_mean_ms(&self) -> f64 {
        mean_ms(self.at_start.tool_call, Histograms::now().tool_call)
    }
}

fn mean_ms(before: (f64, f64), after: (f64, f64)) -> f64 {
    let (sum, count) = (after.0 - before.0, after.1 - before.1);
    if count > 0.0 {
        sum / count * 1000.0
    } else {
        0.0
    }
}

/// (sum, count) of a histogram in Prometheus text, over all its label sets.
fn histogram_totals(text: &str, name: &str) -> (f64, f64) {
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
    (total("_sum"), total("_count"))
}

// ---------------------------------------------------------------- child processes

/// A child process of this executable (the `aetheris` binary: `aetheris bench` is what
/// runs this code), with its stdout lines forwarded to a channel and its stderr kept.
/// Killed when dropped.
pub struct Proc {
    pub child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    what: &'static str,
}

/// Stderr kept per child, enough for any start-up error.
const STDERR_KEPT: usize = 64 * 1024;

impl Proc {
    pub fn spawn(what: &'static str, args: &[String]) -> Result<Proc, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("finding the aetheris binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Flags say everything; an inherited store URL must not turn `dev` into PostgreSQL.
        cmd.env_remove("AETHERIS_DATABASE_URL");
        let mut child = cmd.spawn().map_err(|e| format!("starting {what}: {e}"))?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                    if b.len() < STDERR_KEPT {
                        b.push_str(&line);
                        b.push('\n');
                    }
                }
            });
        }
        Ok(Proc {
            child,
            lines,
            stderr,
            what,
        })
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a stdout line containing `pat` and returns it.
    pub async fn wait_line(&mut self, pat: &str, within: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(pat) => return Ok(l),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(format!(
                        "{} did not report {pat:?}; its stderr: {}",
                        self.what,
                        self.stderr()
                    ))
                }
            }
        }
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) -> Result<(), String> {
        self.child
            .kill()
            .map_err(|e| format!("SIGKILL {}: {e}", self.what))
    }

    /// SIGTERM: the process drains and exits.
    pub fn terminate(&self) -> Result<(), String> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("running kill: {e}"))?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!("kill -TERM {} failed", self.child.id()))
        }
    }

    /// Waits for the process to exit (polling every 2 ms), up to `within`; returns when
    /// its exit was seen.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(Instant::now()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Ok(None) => return Err(format!("{} did not exit in {within:?}", self.what)),
                Err(e) => return Err(format!("waiting for {}: {e}", self.what)),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let v = sorted(vec![5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(pct(&v, 0.0), 1.0);
        assert_eq!(pct(&v, 0.5), 3.0);
        assert_eq!(pct(&v, 1.0), 5.0);
        assert_eq!(pct(&[], 0.5), 0.0);
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
        assert_eq!(
            opt_median([Some(1.0), Some(3.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
        assert_eq!(opt_median([Some(1.0), None].into_iter()), None);
        assert_eq!(opt_median(std::iter::empty()), None);
    }

    #[test]
    fn histogram_means_read_sum_over_count_of_every_label_set_since_a_start() {
        let text = "\
# TYPE aetheris_store_append_seconds histogram
aetheris_store_append_seconds_bucket{le=\"0.001\"} 3
aetheris_store_append_seconds_sum{tenant=\"a\"} 0.006
aetheris_store_append_seconds_count{tenant=\"a\"} 3
aetheris_store_append_seconds_sum{tenant=\"b\"} 0.002
aetheris_store_append_seconds_count{tenant=\"b\"} 1
aetheris_store_append_seconds_total 99
";
        let totals = histogram_totals(text, "aetheris_store_append_seconds");
        let mean = mean_ms((0.0, 0.0), totals);
        assert!((mean - 2.0).abs() < 1e-9, "{mean}");
        // A run's mean is the difference from where the process's histogram stood.
        let later = (totals.0 + 0.010, totals.1 + 1.0);
        assert!((mean_ms(totals, later) - 10.0).abs() < 1e-9);
        assert_eq!(
            mean_ms((0.0, 0.0), histogram_totals(text, "aetheris_other_seconds")),
            0.0
        );
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(proc_cpu_ms("self", true).is_some());
        assert!(proc_cpu_ms("not-a-pid", false).is_none());
    }
}
