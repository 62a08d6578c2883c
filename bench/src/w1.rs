//! W1 of `aetheris bench`: J jobs × 10 sequential no-op `side_effect` steps at concurrency
//! C, every step durable before the next. Reports steps/s, job p50/p99, per-step latency
//! p50/p99, CPU-ms per step (this process, plus every process of the PostgreSQL server
//! when it runs on this machine), where a step's time goes (fenced append, tool call) and
//! the store's growth per event (which W7 reports). On PostgreSQL each row also carries its
//! ratio to the same-run pgbench baseline, and what the database did per step: statements,
//! write transactions and WAL bytes (`pg::Counters`).
//!
//! The worker runs in this process (no HTTP in the measured path) on a fresh store per
//! run. C slots each submit a job and wait for it to finish, again and again, so C jobs
//! are in flight and submissions overlap as a gateway's would; a dispatcher hands each
//! completion to the slot waiting for that job.

use crate::pg;
use crate::report::{PgbenchReport, W1Row};
use crate::runner::{
    self, cpu_ms, median, ms, opt_median, pct, progress, progress_done, sorted, FinishedFeed,
    Fresh, Opener,
};
use crate::BenchArgs;
use aetheris_actors::WorkerConfig;
use aetheris_runtime::{JobId, Plan};
use aetheris_store::{DynStore, PgStore, Scope};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Steps per W1 job.
pub(crate) const STEPS: usize = 10;
/// Events per W1 job: submitted + 10 × (started, succeeded) + job_succeeded.
pub const EVENTS_PER_JOB: usize = 22;
/// A run that takes longer has hung.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// One W1 run's figures.
pub struct W1Run {
    pub steps_per_s: f64,
    pub job_p50_ms: f64,
    pub job_p99_ms: f64,
    pub step_p50_ms: f64,
    pub step_p99_ms: f64,
    pub cpu_ms_per_step: f64,
    pub cpu_ms_per_step_ours: f64,
    /// None when the server's processes cannot be observed (not on this machine).
    pub cpu_ms_per_step_server: Option<f64>,
    pub bytes_per_event: f64,
    pub payload_per_event: f64,
    /// Mean time of one fenced append as the job actor sees it (queue + transaction).
    pub append_mean_ms: f64,
    /// Mean time of one tool call as the job actor sees it (actor messaging included).
    pub tool_mean_ms: f64,
    /// PostgreSQL only: the `events` table breakdown (W7).
    pub pg_w7: Option<pg::W7>,
    /// PostgreSQL only: where a job's time went (`pg::JobPhases`).
    pub job_phases: Option<pg::JobPhases>,
    /// PostgreSQL only: appends per append transaction (group commit across jobs).
    pub appends_per_commit: Option<f64>,
    /// PostgreSQL only: appends written by one statement alone, per append transaction.
    pub one_statement_share: Option<f64>,
    /// PostgreSQL only: the share of jobs handed off to the worker at submission (leased
    /// in the submission's commit, no claim: `aetheris_store::handoff`).
    pub handed_off_share: Option<f64>,
    /// PostgreSQL only: what the database did per step.
    pub server_per_step: Option<pg::PerStep>,
}

/// W1 at every concurrency: the report's rows, and the runs with the most jobs (W7 reports
/// storage from them).
pub struct W1Result {
    pub rows: Vec<W1Row>,
    pub largest: Option<(usize, Vec<W1Run>)>,
}

/// Runs W1 `--runs` times at each `--concurrency`.
pub fn run(
    fresh: &Fresh,
    args: &BenchArgs,
    pgbench: Option<&PgbenchReport>,
) -> Result<W1Result, String> {
    let mut result = W1Result {
        rows: Vec::new(),
        largest: None,
    };
    for &c in &args.concurrency {
        let jobs = args.jobs.unwrap_or((c * 20).max(50));
        let runs = runs_at(fresh, c, jobs, args.runs)?;
        result.rows.push(row(c, jobs, &runs, pgbench));
        if result.largest.as_ref().is_none_or(|(j, _)| jobs > *j) {
            result.largest = Some((jobs, runs));
        }
    }
    progress_done();
    Ok(result)
}

fn runs_at(fresh: &Fresh, c: usize, jobs: usize, runs: usize) -> Result<Vec<W1Run>, String> {
    (0..runs)
        .map(|r| {
            progress(&format!(
                "W1 c={c:<3} run {}/{runs} ({jobs} jobs × 10 steps)…",
                r + 1
            ));
            let postmaster = fresh.target.postmaster();
            fresh.run(move |o| once(o, c, jobs, postmaster))
        })
        .collect()
}

/// The report row of one concurrency: medians over its runs.
fn row(c: usize, jobs: usize, runs: &[W1Run], pgbench: Option<&PgbenchReport>) -> W1Row {
    let m = |f: fn(&W1Run) -> f64| median(runs.iter().map(f).collect());
    let steps_per_s = m(|w| w.steps_per_s);
    let (pgbench_baseline, ratio_to_pgbench) = match pgbench_ratio(c, steps_per_s, pgbench) {
        Some((label, ratio)) => (Some(label.to_string()), Some(ratio)),
        None => (None, None),
    };
    W1Row {
        concurrency: c,
        jobs,
        steps_per_s,
        job_p50_ms: m(|w| w.job_p50_ms),
        job_p99_ms: m(|w| w.job_p99_ms),
        step_p50_ms: m(|w| w.step_p50_ms),
        step_p99_ms: m(|w| w.step_p99_ms),
        cpu_ms_per_step: m(|w| w.cpu_ms_per_step),
        cpu_ms_per_step_aetheris: m(|w| w.cpu_ms_per_step_ours),
        cpu_ms_per_step_server: opt_median(runs.iter().map(|w| w.cpu_ms_per_step_server)),
        append_mean_ms: m(|w| w.append_mean_ms),
        appends_per_commit: opt_median(runs.iter().map(|w| w.appends_per_commit)),
        one_statement_share: opt_median(runs.iter().map(|w| w.one_statement_share)),
        handed_off_share: opt_median(runs.iter().map(|w| w.handed_off_share)),
        statements_per_step: opt_median(
            runs.iter()
                .map(|w| w.server_per_step.and_then(|p| p.statements)),
        ),
        write_transactions_per_step: opt_median(
            runs.iter()
                .map(|w| w.server_per_step.map(|p| p.write_transactions)),
        ),
        wal_bytes_per_step: opt_median(runs.iter().map(|w| w.server_per_step.map(|p| p.wal_bytes))),
        tool_call_mean_ms: m(|w| w.tool_mean_ms),
        job_start_ms: opt_median(runs.iter().map(|w| w.job_phases.map(|p| p.start_ms))),
        job_steps_ms: opt_median(runs.iter().map(|w| w.job_phases.map(|p| p.steps_ms))),
        bytes_per_event: m(|w| w.bytes_per_event),
        payload_bytes_per_event: m(|w| w.payload_per_event),
        pgbench_baseline,
        ratio_to_pgbench,
        ratio_to_step_floor: pgbench
            .filter(|p| c == 1 && p.step_floor_per_s_1_client > 0.0)
            .map(|p| steps_per_s / p.step_floor_per_s_1_client),
    }
}

/// W1 steps/s against pgbench: at concurrency 1 against 1 client, else against 32.
fn pgbench_ratio(
    c: usize,
    steps_per_s: f64,
    pgbench: Option<&PgbenchReport>,
) -> Option<(&'static str, f64)> {
    let p = pgbench?;
    let (label, base) = if c == 1 {
        ("1 client", p.commits_per_s_1_client)
    } else {
        ("32 clients", p.commits_per_s_32_clients)
    };
    (base > 0.0).then(|| (label, steps_per_s / base))
}

pub(crate) fn ten_step_plan() -> Result<Plan, String> {
    let steps: Vec<Value> = (0..STEPS)
        .map(|i| {
            if i == 0 {
                json!({"id": "s0", "tool": "noop"})
            } else {
                json!({"id": format!("s{i}"), "tool": "noop", "needs": [format!("s{}", i - 1)]})
            }
        })
        .collect();
    runner::plan(json!({ "steps": steps }))
}

/// Appends, append transactions, one-statement transactions and jobs handed off at
/// submission of a PostgreSQL store so far.
fn batching(pg: &PgStore) -> (u64, u64, u64, u64) {
    let s = pg.append_stats();
    (s.appends, s.transactions, s.one_statement, pg.handed_off())
}

/// The measured window: what is read just before it, to subtract just after it.
struct Window {
    size: u64,
    server_cpu: Option<f64>,
    batching: Option<(u64, u64, u64, u64)>,
    /// PostgreSQL: the connection reading the server's counters, and their values.
    server: Option<(pg::CounterReader, pg::Counters)>,
    cpu: f64,
    at: Instant,
}

/// What the window took: time, CPU (ours and the server's), group commit.
struct Spent {
    wall_s: f64,
    cpu_ms: f64,
    server_cpu_ms: Option<f64>,
    appends_per_commit: Option<f64>,
    one_statement_share: Option<f64>,
    /// Jobs handed off at submission (PostgreSQL).
    handed_off: Option<u64>,
    /// The server's counters at the end of the window.
    server_after: Option<(pg::Counters, pg::Counters)>,
}

impl Window {
    async fn open(
        store: &DynStore,
        pg: Option<&PgStore>,
        pg_url: Option<&str>,
        postmaster: Option<u32>,
    ) -> Result<Window, String> {
        let server = match pg_url {
            Some(url) => {
                let reader = pg::CounterReader::connect(url).await?;
                let before = reader.read().await?;
                Some((reader, before))
            }
            None => None,
        };
        Ok(Window {
            size: store.size_bytes().await.unwrap_or(0),
            server_cpu: postmaster.and_then(pg::server_cpu_ms),
            batching: pg.map(batching),
            server,
            cpu: cpu_ms(),
            at: Instant::now(),
        })
    }

    async fn close(&self, pg: Option<&PgStore>, postmaster: Option<u32>) -> Result<Spent, String> {
        let wall_s = self.at.elapsed().as_secs_f64();
        let cpu_ms = cpu_ms() - self.cpu;
        let server_cpu_ms = match (self.server_cpu, postmaster.and_then(pg::server_cpu_ms)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let delta =
            self.batching
                .zip(pg.map(batching))
                .map(|((a0, t0, o0, h0), (a1, t1, o1, h1))| {
                    (a1 - a0, (t1 - t0).max(1), o1 - o0, h1 - h0)
                });
        let server_after = match &self.server {
            Some((reader, before)) => Some((*before, reader.read().await?)),
            None => None,
        };
        Ok(Spent {
            wall_s,
            cpu_ms,
            server_cpu_ms,
            appends_per_commit: delta.map(|(a, t, _, _)| a as f64 / t as f64),
            one_statement_share: delta.map(|(_, t, o, _)| o as f64 / t as f64),
            handed_off: delta.map(|(_, _, _, h)| h),
            server_after,
        })
    }
}

async fn once(
    opener: Opener,
    concurrency: usize,
    jobs: usize,
    postmaster: Option<u32>,
) -> Result<W1Run, String> {
    let pg_url = opener.pg_url();
    let (store, pg_store) = opener.open_with_pg().await?;
    let config = WorkerConfig {
        max_jobs: concurrency.max(1) * 2,
        ..WorkerConfig::default()
    };
    let (worker, feed) =
        runner::start_worker(store.clone(), runner::tools_with_noop(), config, 65_536).await?;
    let plan = ten_step_plan()?;
    let window = Window::open(&store, pg_store.as_ref(), pg_url.as_deref(), postmaster).await?;
    let (latencies, sample_job) = drive(&store, &plan, concurrency, jobs, feed).await?;
    let spent = window.close(pg_store.as_ref(), postmaster).await?;
    let times = (worker.append_mean_ms(), worker.tool_call_mean_ms());
    worker.drain().await;
    let grown = store
        .size_bytes()
        .await
        .unwrap_or(0)
        .saturating_sub(window.size);
    let mut run = figures(jobs, latencies, &spent, grown);
    (run.append_mean_ms, run.tool_mean_ms) = times;
    run.payload_per_event = payload_per_event(&store, sample_job).await;
    if let Some(url) = &pg_url {
        run.pg_w7 = Some(pg::w7(url).await?);
        run.job_phases = Some(pg::job_phases(url).await?);
    }
    Ok(run)
}

/// A run's figures from its job latencies (ms), what the window took and how many bytes
/// the store grew; the figures read from elsewhere are left at zero or `None`.
fn figures(jobs: usize, latencies: Vec<f64>, spent: &Spent, grown: u64) -> W1Run {
    let steps = (jobs * STEPS) as f64;
    let events = (jobs * EVENTS_PER_JOB) as f64;
    let latencies = sorted(latencies);
    let step: Vec<f64> = latencies.iter().map(|l| l / STEPS as f64).collect();
    W1Run {
        steps_per_s: steps / spent.wall_s,
        job_p50_ms: pct(&latencies, 0.5),
        job_p99_ms: pct(&latencies, 0.99),
        step_p50_ms: pct(&step, 0.5),
        step_p99_ms: pct(&step, 0.99),
        cpu_ms_per_step: (spent.cpu_ms + spent.server_cpu_ms.unwrap_or(0.0)) / steps,
        cpu_ms_per_step_ours: spent.cpu_ms / steps,
        cpu_ms_per_step_server: spent.server_cpu_ms.map(|c| c / steps),
        bytes_per_event: grown as f64 / events,
        payload_per_event: 0.0,
        append_mean_ms: 0.0,
        tool_mean_ms: 0.0,
        pg_w7: None,
        job_phases: None,
        appends_per_commit: spent.appends_per_commit,
        one_statement_share: spent.one_statement_share,
        handed_off_share: spent.handed_off.map(|h| h as f64 / jobs.max(1) as f64),
        server_per_step: spent
            .server_after
            .map(|(before, after)| before.per_step(&after, steps)),
    }
}

/// Average payload bytes of one job's events.
async fn payload_per_event(store: &DynStore, job: Option<JobId>) -> f64 {
    let ev = store
        .read_events(Scope::System, job.unwrap_or_default(), 0, 100)
        .await
        .unwrap_or_default();
    ev.iter()
        .map(|e| e.body.payload().len() as f64)
        .sum::<f64>()
        / ev.len().max(1) as f64
}

/// Completions the dispatcher has seen: waited for, or seen before anyone waited.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<JobId, tokio::sync::oneshot::Sender<Instant>>,
    early: HashMap<JobId, Instant>,
}

/// What the slots share.
#[derive(Clone)]
struct Slots {
    store: DynStore,
    plan: Plan,
    /// Jobs not yet submitted.
    left: Rc<Cell<usize>>,
    waiters: Rc<RefCell<Waiters>>,
    /// The first job submitted (W7 reads its payloads).
    sample: Rc<Cell<Option<JobId>>>,
    deadline: tokio::time::Instant,
}

/// Runs `jobs` jobs, `concurrency` at a time; returns every job's latency (submission to
/// completion, ms) and one job's id.
pub(crate) async fn drive(
    store: &DynStore,
    plan: &Plan,
    concurrency: usize,
    jobs: usize,
    feed: FinishedFeed,
) -> Result<(Vec<f64>, Option<JobId>), String> {
    let shared = Slots {
        store: store.clone(),
        plan: plan.clone(),
        left: Rc::new(Cell::new(jobs)),
        waiters: Rc::default(),
        sample: Rc::default(),
        deadline: tokio::time::Instant::now() + RUN_DEADLINE,
    };
    let dispatcher = actix_rt::spawn(dispatch(feed, shared.waiters.clone()));
    let slots: Vec<_> = (0..concurrency.min(jobs))
        .map(|_| actix_rt::spawn(slot(shared.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(jobs);
    for s in slots {
        latencies.extend(s.await.map_err(|e| format!("W1 slot: {e}"))??);
    }
    dispatcher.abort();
    Ok((latencies, shared.sample.get()))
}

/// Hands each completion to the slot waiting for it, or keeps it for one that will wait.
async fn dispatch(mut feed: FinishedFeed, waiters: Rc<RefCell<Waiters>>) {
    while let Ok((id, _)) = feed.recv().await {
        let at = Instant::now();
        let mut w = waiters.borrow_mut();
        match w.waiting.remove(&id) {
            Some(tx) => {
                let _ = tx.send(at);
            }
            None => {
                w.early.insert(id, at);
            }
        }
    }
}

/// One slot: submit a job, wait for it, again until no job is left; returns the latencies.
async fn slot(s: Slots) -> Result<Vec<f64>, String> {
    let mut latencies = Vec::new();
    while s.left.get() > 0 {
        s.left.set(s.left.get() - 1);
        let id = runner::submit(&s.store, "bench", &s.plan, Value::Null).await?;
        let submitted = Instant::now();
        if s.sample.get().is_none() {
            s.sample.set(Some(id));
        }
        let done = finished_at(&s.waiters, id, s.deadline).await?;
        latencies.push(ms(done.duration_since(submitted)));
    }
    Ok(latencies)
}

/// When job `id` finished, as the dispatcher saw it.
async fn finished_at(
    waiters: &RefCell<Waiters>,
    id: JobId,
    deadline: tokio::time::Instant,
) -> Result<Instant, String> {
    let rx = {
        let mut w = waiters.borrow_mut();
        if let Some(at) = w.early.remove(&id) {
            return Ok(at);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.waiting.insert(id, tx);
        rx
    };
    tokio::time::timeout_at(deadline, rx)
        .await
        .map_err(|_| "W1 run did not finish in 10 minutes".to_string())?
        .map_err(|_| "completion feed closed".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_ten_sequential_noop_steps() {
        let plan = ten_step_plan().unwrap();
        let v = serde_json::to_value(&plan).unwrap();
        let steps = v["steps"].as_array().unwrap();
        assert_eq!(steps.len(), STEPS);
        assert_eq!(steps[3]["needs"], json!(["s2"]));
        assert!(steps.iter().all(|s| s["tool"] == "noop"));
    }

    #[test]
    fn figures_divide_by_steps_and_events() {
        let spent = Spent {
            wall_s: 2.0,
            cpu_ms: 100.0,
            server_cpu_ms: Some(300.0),
            appends_per_commit: Some(4.0),
            one_statement_share: Some(0.5),
            handed_off: Some(5),
            server_after: None,
        };
        let run = figures(10, vec![30.0, 10.0, 20.0], &spent, 2200);
        assert_eq!(run.steps_per_s, 50.0);
        assert_eq!((run.job_p50_ms, run.job_p99_ms), (20.0, 30.0));
        assert_eq!((run.step_p50_ms, run.step_p99_ms), (2.0, 3.0));
        assert_eq!(run.cpu_ms_per_step, 4.0);
        assert_eq!(run.cpu_ms_per_step_ours, 1.0);
        assert_eq!(run.cpu_ms_per_step_server, Some(3.0));
        assert_eq!(run.bytes_per_event, 10.0);
        assert_eq!(run.appends_per_commit, Some(4.0));
        assert_eq!(run.handed_off_share, Some(0.5));
    }

    #[test]
    fn ratio_is_against_one_client_at_concurrency_one_else_thirty_two() {
        let p = PgbenchReport {
            binary: "pgbench".into(),
            seconds: 1,
            script: String::new(),
            commits_per_s_1_client: 1000.0,
            commits_per_s_32_clients: 4000.0,
            step_floor_per_s_1_client: 0.0,
        };
        assert_eq!(pgbench_ratio(1, 500.0, Some(&p)), Some(("1 client", 0.5)));
        assert_eq!(
            pgbench_ratio(16, 2000.0, Some(&p)),
            Some(("32 clients", 0.5))
        );
        assert_eq!(pgbench_ratio(16, 2000.0, None), None);
        let zero = PgbenchReport {
            commits_per_s_32_clients: 0.0,
            ..p
        };
        assert_eq!(pgbench_ratio(16, 2000.0, Some(&zero)), None);
    }
}
