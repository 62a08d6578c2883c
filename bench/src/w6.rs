//! W6 of `aetheris bench` (on request: `--workloads w6`): tenant flood. Owns the W6 measurement, its
//! `--w6-*` settings, and its part of the table.
//!
//! Tenant B submits `--w6-b-jobs` short jobs (2 sequential no-op `side_effect` steps, W1's
//! tool) at a steady trickle, one every `--w6-interval-ms`. Its **queue wait** per job is
//! the `recorded_at` of the job's first `step_started` minus that of its `job_submitted`,
//! both from the store's clock (G3), read back with `read_events` after the phase.
//!
//! - Phase "unloaded": only B, on a fresh store with an idle in-process worker. (Both
//!   phases first run 32 unmeasured jobs of B at once and then pause for a second, so the
//!   cold start of the worker and of a new database counts in neither.)
//! - Phase "flood": on another fresh store, tenant A submits `--w6-ratio` × as many jobs
//!   as B, as fast as it can from many concurrent submitters (a real backlog: submissions
//!   outrun the worker); B's trickle starts once a quarter of A's jobs are stored and runs
//!   while A's backlog drains. The run ends when every job of both tenants has finished.
//!
//! Both tenants submit through one gateway (`Gateway`): a thread of its own, as a
//! gateway's HTTP workers are (in `aetheris dev` too), not the worker's actor thread. On
//! PostgreSQL the gateway has a pool of its own (as one `aetheris serve` gateway process
//! in front of the workers would), so A's submitters do not queue in front of the
//! worker's claims and reads, and its group submit sees both tenants (with several
//! gateways behind a balancer, each sees both tenants' traffic too); on the embedded
//! store everything shares the one store, as in `aetheris dev`.
//!
//! Fairness comes from the store's claim, which round-robins across tenants with runnable
//! work; the worker is the one `aetheris dev`/`aetheris worker` run (`start_worker`,
//! `--w6-max-jobs` leases at once, default 256 as theirs). Reported per phase: B's queue
//! wait p50/p99/max over all runs, and (medians over `--runs`) A's throughput (jobs/s, first submission to last
//! completion), A's own queue wait and backlog (estimated from a sample of A's jobs on the
//! same store clock, so a reader can check B really ran against a backlog), and the mean
//! fenced append as the job actors saw it (how loaded the store was). The figure of merit
//! is B's flood p99 / unloaded p99 against the target ≤ 2×: reported, never asserted. The
//! p99s are taken over B's waits of all runs pooled (with one run's 50 samples a p99 is
//! its maximum, which one slow disk flush decides); per-run p99s show the spread.

use crate::report::{W6Flood, W6Phase, W6Report};
use crate::runner::{
    self, median, opt_median, pct, progress, progress_done, sorted, BenchWorker, FinishedFeed,
    Fresh, Opener,
};
use crate::BenchArgs;
use aetheris_actors::WorkerConfig;
use aetheris_runtime::{JobId, JobStatus, Plan};
use aetheris_store::{DynStore, Scope};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The target of the issue: B's p99 under A's flood at most this many times its unloaded p99.
const TARGET_RATIO: f64 = 2.0;
/// Concurrent submitters of A's flood: enough that the store's group commit batches them,
/// so A's jobs arrive far faster than a worker runs them.
const FLOOD_SUBMITTERS: usize = 64;
/// Unmeasured jobs of B that warm each phase up.
const WARM_UP_JOBS: usize = 32;
/// The pause between the warm-up and the measurement (on PostgreSQL, B's waits in the
/// first second of a new database were 10-35 ms against 3-5 ms later, warm-up or not).
const SETTLE: Duration = Duration::from_secs(1);
/// A's jobs whose events are read back to estimate A's queue wait and backlog.
const A_SAMPLE: usize = 1_000;
/// The store clock's resolution: a ratio's denominator is never taken below it.
const CLOCK_RESOLUTION_MS: f64 = 1.0;

#[derive(Clone)]
struct Cfg {
    b_jobs: usize,
    a_jobs: usize,
    interval: Duration,
    max_jobs: usize,
    flood_tenant: String,
    trickle_tenant: String,
}

/// One phase of one run.
struct Phase {
    /// B's queue waits (ms), sorted.
    b_waits: Vec<f64>,
    /// A's jobs per second, first submission to last completion (flood only).
    a_jobs_per_s: Option<f64>,
    /// A's submissions per second while it floods (flood only).
    a_submit_per_s: Option<f64>,
    /// A's queue waits (ms) of the sampled jobs, sorted (flood only).
    a_waits: Vec<f64>,
    /// A's queued jobs (estimated from the sample) at each of B's submissions.
    a_backlog: Vec<f64>,
    /// Mean fenced append (queue + commit) as the job actors saw it.
    append_mean_ms: f64,
}

fn two_step_plan() -> Result<Plan, String> {
    runner::plan(json!({"steps": [
        {"id": "s0", "tool": "noop"},
        {"id": "s1", "tool": "noop", "needs": ["s0"]}
    ]}))
}

/// `recorded_at_ms` of a job's `job_submitted` and of its first `step_started`.
async fn submitted_and_started(store: &DynStore, id: JobId) -> Result<(i64, i64), String> {
    let events = store
        .read_events(Scope::System, id, 0, 100)
        .await
        .map_err(|e| format!("W6: reading events of {id}: {e}"))?;
    let at = |kind: &str| {
        events
            .iter()
            .find(|e| e.body.kind() == kind)
            .map(|e| e.recorded_at_ms)
    };
    match (at("job_submitted"), at("step_started")) {
        (Some(s), Some(t)) => Ok((s, t)),
        _ => Err(format!("W6: job {id} has no job_submitted or step_started")),
    }
}

async fn submit(store: &DynStore, tenant: &str, plan: &Plan) -> Result<JobId, String> {
    runner::submit(store, tenant, plan, Value::Null)
        .await
        .map_err(|e| format!("W6 {e}"))
}

/// Jobs the worker reported finished, with their status and when this process saw it.
type Finished = Rc<RefCell<HashMap<JobId, (JobStatus, Instant)>>>;

/// A's flood under way on the gateway's thread.
struct Flood {
    /// A's jobs in all.
    jobs: usize,
    /// When the flood started.
    t0: Instant,
    /// A's jobs stored so far.
    stored: Arc<AtomicUsize>,
    /// Every `every`-th of A's job ids, and when the last one was stored (since `t0`).
    done: tokio::sync::oneshot::Receiver<Result<(Vec<JobId>, Duration), String>>,
}

/// The tenants' gateway of a phase: a thread with its own runtime, as a gateway
/// process's HTTP workers are. On PostgreSQL it holds a store (a pool) of its own, through
/// which both tenants submit, as through one `aetheris serve` gateway: its group submit
/// sees both tenants and serves them fairly, and A's 64 submitters do not queue in front
/// of the worker's claims and reads. On the embedded store it shares the worker's store,
/// as in `aetheris dev`. Stops when dropped.
struct Gateway {
    store: DynStore,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn start_gateway(own: Option<Opener>, shared: DynStore) -> Result<Gateway, String> {
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("w6-gateway".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("W6 gateway runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let store = match own {
                    Some(o) => o.open().await,
                    None => Ok(shared),
                };
                let ok = store.is_ok();
                let _ = ready_tx.send(store.map(|s| (s, tokio::runtime::Handle::current())));
                if ok {
                    let _ = stopped.await;
                }
            });
        })
        .map_err(|e| format!("W6 gateway thread: {e}"))?;
    // On failure the thread has ended on its own (it waits for `stop` only with a store).
    let (store, runtime) = ready
        .await
        .map_err(|_| "W6: the gateway thread ended without an answer".to_string())??;
    Ok(Gateway {
        store,
        runtime,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Starts A's `a_jobs` submissions from `FLOOD_SUBMITTERS` concurrent submitters on the
/// gateway's runtime, through the gateway's store.
fn start_flood(
    gateway: &Gateway,
    tenant: String,
    plan: Plan,
    a_jobs: usize,
    every: usize,
) -> Flood {
    let t0 = Instant::now();
    let stored = Arc::new(AtomicUsize::new(0));
    let (tx, done) = tokio::sync::oneshot::channel();
    let counted = stored.clone();
    let store = gateway.store.clone();
    let flood = async move {
        let reserved = Arc::new(AtomicUsize::new(0));
        let sampled: Arc<Mutex<Vec<JobId>>> = Arc::default();
        let mut submitters = Vec::new();
        for _ in 0..FLOOD_SUBMITTERS.min(a_jobs) {
            let (store, plan, tenant) = (store.clone(), plan.clone(), tenant.clone());
            let (reserved, stored, sampled) = (reserved.clone(), counted.clone(), sampled.clone());
            // Submitters share one counter of reserved indices, so exactly `a_jobs` are
            // submitted.
            submitters.push(tokio::spawn(async move {
                loop {
                    let i = reserved.fetch_add(1, Ordering::Relaxed);
                    if i >= a_jobs {
                        return Ok::<Instant, String>(Instant::now());
                    }
                    let id = submit(&store, &tenant, &plan).await?;
                    stored.fetch_add(1, Ordering::Relaxed);
                    if i % every == 0 {
                        if let Ok(mut s) = sampled.lock() {
                            s.push(id);
                        }
                    }
                }
            }));
        }
        // When A's last job was stored (the submitters end as soon as the counter runs out).
        let mut last = Duration::ZERO;
        for s in submitters {
            let at = s.await.map_err(|e| format!("W6 submitter: {e}"))??;
            last = last.max(at.duration_since(t0));
        }
        let ids = sampled.lock().map(|s| s.clone()).unwrap_or_default();
        Ok((ids, last))
    };
    gateway.runtime.spawn(async move {
        let _ = tx.send(flood.await);
    });
    Flood {
        jobs: a_jobs,
        t0,
        stored,
        done,
    }
}

/// One phase's moving parts, on the run's own system.
struct Rig {
    /// The worker's store (events are read back from it).
    store: DynStore,
    gateway: Gateway,
    worker: BenchWorker,
    finished: Finished,
    feed: actix_rt::task::JoinHandle<()>,
    plan: Plan,
}

impl Rig {
    /// The store, the tenants' gateway, and a worker whose every completion is recorded.
    async fn start(opener: &Opener, cfg: &Cfg, total: usize) -> Result<Rig, String> {
        let store = opener.clone().open().await?;
        let gateway = start_gateway(
            matches!(opener, Opener::Pg { .. }).then(|| opener.clone()),
            store.clone(),
        )
        .await?;
        let config = WorkerConfig {
            max_jobs: cfg.max_jobs,
            ..WorkerConfig::default()
        };
        // The completion feed has room for every job, B's warm-up included, so it can
        // never lag and lose one.
        let (worker, feed) = runner::start_worker(
            store.clone(),
            runner::tools_with_noop(),
            config,
            total + 1024,
        )
        .await?;
        let finished: Finished = Rc::default();
        let feed = actix_rt::spawn(record(feed, finished.clone()));
        Ok(Rig {
            store,
            gateway,
            worker,
            finished,
            feed,
            plan: two_step_plan()?,
        })
    }

    fn finished_count(&self) -> usize {
        self.finished.borrow().len()
    }

    /// Unmeasured jobs of B first, at once, so neither phase counts a cold start against
    /// B: the worker's first claim, actor start and tool spawn, and on PostgreSQL a new
    /// database and pool connections that have not yet prepared their statements (one
    /// warm-up job left B's first ~15 unloaded waits at 6-22 ms against 3-4 ms after).
    async fn warm_up(&self, cfg: &Cfg) -> Result<Vec<JobId>, String> {
        let submitting: Vec<_> = (0..WARM_UP_JOBS)
            .map(|_| {
                let (gateway, tenant, plan) = (
                    self.gateway.store.clone(),
                    cfg.trickle_tenant.clone(),
                    self.plan.clone(),
                );
                actix_rt::spawn(async move { submit(&gateway, &tenant, &plan).await })
            })
            .collect();
        let mut warm_up = Vec::with_capacity(WARM_UP_JOBS);
        for s in submitting {
            warm_up.push(s.await.map_err(|e| format!("W6 warm-up: {e}"))??);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while warm_up
            .iter()
            .any(|id| !self.finished.borrow().contains_key(id))
        {
            if Instant::now() > deadline {
                return Err("W6: the warm-up jobs did not finish in 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(warm_up)
    }

    /// B's trickle starts once a quarter of A's jobs are stored (with the defaults far more
    /// than the worker holds), so B meets a backlog from its first job; the backlog each of
    /// B's jobs met is reported, so a setup where A drains too fast shows.
    async fn trickle(&self, cfg: &Cfg, flood: &Flood, label: &str) -> Result<Vec<JobId>, String> {
        let a_jobs = flood.jobs;
        let stored = || flood.stored.load(Ordering::Relaxed);
        while stored() < a_jobs / 4 {
            if flood.t0.elapsed() > Duration::from_secs(600) {
                return Err("W6: A's flood did not get stored in 10 minutes".into());
            }
            progress(&format!("{label}: A stored {}/{a_jobs}…", stored()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b_start = tokio::time::Instant::now();
        let mut b_ids = Vec::with_capacity(cfg.b_jobs);
        for i in 0..cfg.b_jobs {
            // A fixed schedule: a late submission does not push the later ones back.
            tokio::time::sleep_until(b_start + cfg.interval * i as u32).await;
            b_ids.push(submit(&self.gateway.store, &cfg.trickle_tenant, &self.plan).await?);
            progress(&format!(
                "{label}: B submitted {}/{}, A stored {}/{a_jobs}, finished {}…",
                i + 1,
                cfg.b_jobs,
                stored(),
                self.finished_count()
            ));
        }
        Ok(b_ids)
    }

    async fn wait_all_finished(&self, total: usize, label: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut shown = Instant::now();
        while self.finished_count() < total {
            if Instant::now() > deadline {
                return Err(format!(
                    "W6: only {} of {total} jobs finished in 10 minutes",
                    self.finished_count()
                ));
            }
            if shown.elapsed() > Duration::from_millis(250) {
                shown = Instant::now();
                progress(&format!(
                    "{label}: finished {}/{total}…",
                    self.finished_count()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the feed and drains the worker; returns the mean fenced append the job actors
    /// saw and every finished job, after checking they all succeeded.
    async fn stop(self) -> Result<(f64, HashMap<JobId, (JobStatus, Instant)>, DynStore), String> {
        self.feed.abort();
        let append_mean_ms = self.worker.append_mean_ms();
        self.worker.drain().await;
        let finished = self.finished.take();
        if let Some((id, (status, _))) = finished
            .iter()
            .find(|(_, (s, _))| *s != JobStatus::Succeeded)
        {
            return Err(format!("W6: job {id} ended {status:?}, not succeeded"));
        }
        Ok((append_mean_ms, finished, self.store))
    }
}

/// Records every completion with when this process saw it.
async fn record(mut feed: FinishedFeed, finished: Finished) {
    while let Ok((id, status)) = feed.recv().await {
        finished.borrow_mut().insert(id, (status, Instant::now()));
    }
}

/// A database created a moment ago is still flushing its creation, and the run before (an
/// earlier phase, pgbench) left dirty pages that a checkpoint would flush in the middle of
/// this one: flush them now, then let it settle.
async fn settle(pg_url: Option<String>) {
    if let Some(url) = &pg_url {
        if let Err(e) = crate::pg::checkpoint(url).await {
            eprintln!("W6: {e}; phases may include flushes of earlier writes");
        }
    }
    tokio::time::sleep(SETTLE).await;
}

async fn phase(opener: Opener, cfg: Cfg, flood: bool, label: String) -> Result<Phase, String> {
    let a_jobs = if flood { cfg.a_jobs } else { 0 };
    let total = a_jobs + cfg.b_jobs + WARM_UP_JOBS;
    let rig = Rig::start(&opener, &cfg, total).await?;
    let warm_up = rig.warm_up(&cfg).await?;
    settle(opener.pg_url()).await;
    // A's flood; every `every`-th job is sampled for A's own wait and backlog.
    let every = (a_jobs / A_SAMPLE).max(1);
    let flood_run = start_flood(
        &rig.gateway,
        cfg.flood_tenant.clone(),
        rig.plan.clone(),
        a_jobs,
        every,
    );
    let b_ids = rig.trickle(&cfg, &flood_run, &label).await?;
    let t0 = flood_run.t0;
    let (a_sampled, a_stored_at) = flood_run
        .done
        .await
        .map_err(|_| "W6: the flood thread ended without an answer".to_string())??;
    rig.wait_all_finished(total, &label).await?;
    let (append_mean_ms, finished, store) = rig.stop().await?;
    let b_set: HashSet<JobId> = b_ids.iter().chain(&warm_up).copied().collect();
    let a_last = finished
        .iter()
        .filter(|(id, _)| !b_set.contains(id))
        .map(|(_, (_, at))| *at)
        .max();

    progress(&format!("{label}: reading events…"));
    let b_spans = spans(&store, &b_ids).await?;
    let a_spans = spans(&store, &a_sampled).await?;
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Ok(Phase {
        b_waits: waits(&b_spans),
        a_jobs_per_s: a_last
            .filter(|_| flood)
            .map(|at| a_jobs as f64 / secs(at.duration_since(t0))),
        a_submit_per_s: flood.then(|| a_jobs as f64 / secs(a_stored_at)),
        a_waits: waits(&a_spans),
        a_backlog: if flood {
            backlog(&b_spans, &a_spans, every)
        } else {
            Vec::new()
        },
        append_mean_ms,
    })
}

/// `(job_submitted, first step_started)` of each job, store clock.
async fn spans(store: &DynStore, ids: &[JobId]) -> Result<Vec<(i64, i64)>, String> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(submitted_and_started(store, *id).await?);
    }
    Ok(out)
}

/// Queue waits (ms), sorted.
fn waits(spans: &[(i64, i64)]) -> Vec<f64> {
    sorted(spans.iter().map(|(s, t)| (t - s) as f64).collect())
}

/// A's jobs stored but not yet started at each of B's submissions, scaled up from the
/// sample (every `every`-th of A's jobs).
fn backlog(b_spans: &[(i64, i64)], a_spans: &[(i64, i64)], every: usize) -> Vec<f64> {
    b_spans
        .iter()
        .map(|(b, _)| {
            let queued = a_spans.iter().filter(|(s, t)| s <= b && t > b).count();
            (queued * every) as f64
        })
        .collect()
}

/// Median over runs of one figure of a phase.
fn med(runs: &[Phase], f: impl Fn(&Phase) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

/// A phase's section: B's waits of every run pooled, the rest medians over runs.
fn phase_report(runs: &[Phase], flood: bool) -> W6Phase {
    let pooled = sorted(
        runs.iter()
            .flat_map(|p| p.b_waits.iter().copied())
            .collect(),
    );
    W6Phase {
        b_samples: pooled.len(),
        b_queue_wait_p50_ms: pct(&pooled, 0.5),
        b_queue_wait_p99_ms: pct(&pooled, 0.99),
        b_queue_wait_max_ms: pooled.last().copied().unwrap_or(0.0),
        append_mean_ms: med(runs, |p| p.append_mean_ms),
        b_queue_wait_p99_ms_per_run: runs.iter().map(|p| pct(&p.b_waits, 0.99)).collect(),
        flood: flood.then(|| flood_report(runs)),
    }
}

fn flood_report(runs: &[Phase]) -> W6Flood {
    W6Flood {
        a_jobs_per_s: opt_median(runs.iter().map(|p| p.a_jobs_per_s)),
        a_submitted_per_s: opt_median(runs.iter().map(|p| p.a_submit_per_s)),
        a_queue_wait_p50_ms: med(runs, |p| pct(&p.a_waits, 0.5)),
        a_queue_wait_p99_ms: med(runs, |p| pct(&p.a_waits, 0.99)),
        // The smallest backlog any of B's jobs met (min over B's jobs, median over runs).
        a_backlog_at_b_submit_min: med(runs, |p| {
            p.a_backlog.iter().copied().fold(f64::INFINITY, f64::min)
        }),
        a_backlog_at_b_submit_median: med(runs, |p| median(p.a_backlog.clone())),
    }
}

/// The W6 settings of this invocation.
fn config(fresh: &Fresh, args: &BenchArgs) -> Result<Cfg, String> {
    let a_jobs = args
        .w6_b_jobs
        .checked_mul(args.w6_ratio)
        .ok_or("--w6-b-jobs × --w6-ratio is too large")?;
    Ok(Cfg {
        b_jobs: args.w6_b_jobs,
        a_jobs,
        interval: Duration::from_millis(args.w6_interval_ms),
        max_jobs: args
            .w6_max_jobs
            .unwrap_or(if fresh.target.is_embedded() { 256 } else { 64 }),
        flood_tenant: args.w6_flood_tenant.clone(),
        trickle_tenant: args.w6_trickle_tenant.clone(),
    })
}

/// Both phases, `--runs` times each, alternating.
fn phases(fresh: &Fresh, cfg: &Cfg, runs: usize) -> Result<(Vec<Phase>, Vec<Phase>), String> {
    let mut unloaded = Vec::new();
    let mut flooded = Vec::new();
    for r in 0..runs {
        for flood in [false, true] {
            let label = format!(
                "W6 run {}/{runs} {}",
                r + 1,
                if flood { "flood" } else { "unloaded" }
            );
            progress(&format!("{label}…"));
            let c = cfg.clone();
            let p = fresh.run(move |o| phase(o, c, flood, label))?;
            if flood {
                flooded.push(p);
            } else {
                unloaded.push(p);
            }
        }
    }
    Ok((unloaded, flooded))
}

pub fn run(fresh: &Fresh, args: &BenchArgs) -> Result<W6Report, String> {
    let cfg = config(fresh, args)?;
    let (unloaded, flooded) = phases(fresh, &cfg, args.runs)?;
    progress_done();
    let unloaded = phase_report(&unloaded, false);
    let flood = phase_report(&flooded, true);
    // The store clock counts whole milliseconds: an unloaded p99 of 0 ms means "below
    // 1 ms", so the ratio is taken against 1 ms rather than dividing by zero.
    let ratio = flood.b_queue_wait_p99_ms / unloaded.b_queue_wait_p99_ms.max(CLOCK_RESOLUTION_MS);
    Ok(W6Report {
        b_jobs: cfg.b_jobs,
        runs: args.runs,
        a_jobs: cfg.a_jobs,
        ratio_a_to_b: args.w6_ratio,
        b_interval_ms: args.w6_interval_ms,
        worker_max_jobs: cfg.max_jobs,
        flood_tenant: cfg.flood_tenant,
        trickle_tenant: cfg.trickle_tenant,
        flood_submitters: FLOOD_SUBMITTERS,
        a_sample: cfg.a_jobs.min(A_SAMPLE),
        plan: "2 sequential no-op side_effect steps".into(),
        queue_wait: "first step_started.recorded_at - job_submitted.recorded_at (store clock, ms)"
            .into(),
        unloaded,
        flood,
        b_p99_flood_over_unloaded: ratio,
        ratio_denominator_floor_ms: CLOCK_RESOLUTION_MS,
        target_ratio: TARGET_RATIO,
        meets_target: ratio <= TARGET_RATIO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_counts_sampled_a_jobs_queued_at_each_b_submission() {
        // A's sampled jobs: stored at 0, 10, 20; started at 50, 15, 30.
        let a = [(0, 50), (10, 15), (20, 30)];
        // B submitted at 12 (A0, A1 queued), at 25 (A0, A2), at 60 (none).
        let b = [(12, 13), (25, 26), (60, 61)];
        assert_eq!(backlog(&b, &a, 10), vec![20.0, 20.0, 0.0]);
        assert_eq!(waits(&a), vec![5.0, 10.0, 50.0]);
    }

    #[test]
    fn phase_report_pools_b_waits_and_takes_medians_of_the_rest() {
        let p = |waits: Vec<f64>, append: f64| Phase {
            b_waits: sorted(waits),
            a_jobs_per_s: Some(append * 100.0),
            a_submit_per_s: None,
            a_waits: vec![1.0, 2.0],
            a_backlog: vec![3.0, 7.0],
            append_mean_ms: append,
        };
        let runs = [
            p(vec![1.0, 2.0], 0.5),
            p(vec![3.0, 40.0], 0.7),
            p(vec![5.0, 6.0], 0.6),
        ];
        let r = phase_report(&runs, true);
        assert_eq!(r.b_samples, 6);
        assert_eq!(r.b_queue_wait_max_ms, 40.0);
        assert_eq!(r.b_queue_wait_p99_ms_per_run, vec![2.0, 40.0, 6.0]);
        assert_eq!(r.append_mean_ms, 0.6);
        let flood = r.flood.expect("flood figures");
        assert_eq!(flood.a_jobs_per_s, Some(60.0));
        assert_eq!(flood.a_submitted_per_s, None);
        assert_eq!(flood.a_backlog_at_b_submit_min, 3.0);
        assert!(phase_report(&runs, false).flood.is_none());
    }
}
