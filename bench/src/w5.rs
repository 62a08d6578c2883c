//! W5 of `aetheris bench` (on request: `--workloads w5`): many jobs parked on a signal.
//! Reports the worker's resident memory with all of them parked, its idle CPU, the latency
//! from a stored signal to the job's next step (p50/p99), and the lateness of durable
//! timers (p50/p99). The worker runs in this process, so this process's RSS and CPU are
//! the worker's.

use crate::report::W5Report;
use crate::runner::{
    self, cpu_ms, ms, pct, progress, progress_done, rss_kib, sorted, FinishedFeed, Fresh,
};
use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_runtime::{JobId, JobStatus, Plan};
use aetheris_store::{CommandBody, DynStore, Scope};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Parked jobs signalled one at a time (at most).
const SIGNAL_SAMPLES: usize = 200;
/// Jobs sleeping on a durable timer.
const TIMERS: usize = 200;
/// The timers' sleep.
const TIMER_MS: i64 = 1500;
/// How long the parked worker is watched for idle CPU.
const IDLE: Duration = Duration::from_secs(5);
/// Jobs the W5 worker runs at once.
const MAX_JOBS: usize = 512;

/// Runs W5 once on a fresh store with `parked` jobs parked.
pub fn run(fresh: &Fresh, parked: usize) -> Result<W5Report, String> {
    progress(&format!("W5 ({parked} parked jobs)…"));
    let samples = SIGNAL_SAMPLES.min(parked);
    let report = fresh.run(move |o| async move {
        let store = o.open().await?;
        once(store, parked, samples, TIMERS).await
    })?;
    progress_done();
    Ok(report)
}

/// W5 on `store` (fresh): `parked` jobs parked on a signal, `samples` of them signalled
/// one at a time, and `timers` jobs with a 1.5 s sleep.
async fn once(
    store: DynStore,
    parked: usize,
    samples: usize,
    timers: usize,
) -> Result<W5Report, String> {
    let config = WorkerConfig {
        max_jobs: MAX_JOBS,
        ..WorkerConfig::default()
    };
    let (worker, mut feed) =
        runner::start_worker(store.clone(), ToolRegistry::with_builtins(), config, 65_536).await?;
    let rss0 = rss_kib();
    let ids = park(&store, parked).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib();
    let cpu0 = cpu_ms();
    tokio::time::sleep(IDLE).await;
    let idle_cpu_percent = (cpu_ms() - cpu0) / IDLE.as_millis() as f64 * 100.0;
    let signal = sorted(signal_latencies(&store, &ids[..samples], &mut feed).await?);
    let late = sorted(timer_lateness(&store, timers).await?);
    eprintln!("\r{:60}", "");
    worker.drain().await;
    Ok(W5Report {
        parked_jobs: parked,
        rss_mib: rss as f64 / 1024.0,
        rss_delta_mib: rss.saturating_sub(rss0) as f64 / 1024.0,
        idle_cpu_percent,
        signal_to_next_step_p50_ms: pct(&signal, 0.5),
        signal_to_next_step_p99_ms: pct(&signal, 0.99),
        timer_lateness_p50_ms: pct(&late, 0.5),
        timer_lateness_p99_ms: pct(&late, 0.99),
    })
}

/// Submits `parked` jobs that wait for signal `go`, and waits until all are parked.
async fn park(store: &DynStore, parked: usize) -> Result<Vec<JobId>, String> {
    let plan = runner::plan(json!({"steps": [
        {"id": "approve", "wait": {"signal": "go"}},
        {"id": "next", "tool": "echo", "needs": ["approve"], "args": {"ok": true}}
    ]}))?;
    let mut ids = Vec::with_capacity(parked);
    for i in 0..parked {
        if i % 1000 == 0 {
            eprint!("\rW5: submitting {i}/{parked}…   ");
        }
        ids.push(runner::submit(store, "bench", &plan, Value::Null).await?);
    }
    eprint!("\rW5: waiting for {parked} jobs to park…   ");
    wait_for(store, JobStatus::Waiting, parked as u64, "parking").await?;
    Ok(ids)
}

async fn count(store: &DynStore, status: JobStatus) -> u64 {
    store
        .count_by_status()
        .await
        .map(|c| {
            c.iter()
                .filter(|x| x.status == status)
                .map(|x| x.count)
                .sum()
        })
        .unwrap_or(0)
}

async fn wait_for(store: &DynStore, status: JobStatus, n: u64, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(store, status).await < n {
        if Instant::now() > deadline {
            return Err(format!("W5: {what} did not happen in 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Signals each job in turn; per job, ms from storing the signal to the job finishing.
async fn signal_latencies(
    store: &DynStore,
    ids: &[JobId],
    feed: &mut FinishedFeed,
) -> Result<Vec<f64>, String> {
    eprint!("\rW5: signalling {} jobs…                 ", ids.len());
    let mut lat = Vec::with_capacity(ids.len());
    for id in ids {
        let t0 = Instant::now();
        let body = CommandBody::Signal {
            signal: "go".into(),
            signal_id: format!("w5-{id}"),
            payload: Value::Null,
            by: None,
        };
        store
            .put_command(Scope::System, *id, body, None)
            .await
            .map_err(|e| e.to_string())?;
        wait_finished(feed, *id).await?;
        lat.push(ms(t0.elapsed()));
    }
    Ok(lat)
}

async fn wait_finished(feed: &mut FinishedFeed, id: JobId) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), feed.recv()).await {
            Ok(Ok((j, _))) if j == id => return Ok(()),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            _ => return Err(format!("W5: job {id} did not resume after its signal")),
        }
    }
}

/// Submits `timers` jobs sleeping 1.5 s; per job, ms its timer fired late (store clock).
async fn timer_lateness(store: &DynStore, timers: usize) -> Result<Vec<f64>, String> {
    eprint!("\rW5: {timers} timers of 1.5 s…                 ");
    let plan: Plan = runner::plan(json!({"steps": [{"id": "nap", "sleep": "1500ms"}]}))?;
    let mut sleepers = Vec::with_capacity(timers);
    for _ in 0..timers {
        sleepers.push(runner::submit(store, "bench", &plan, Value::Null).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut late = Vec::with_capacity(timers);
    for id in sleepers {
        late.push(lateness(store, id, deadline).await?);
    }
    Ok(late)
}

/// When job `id`'s sleep has finished: how late it fired (ms).
async fn lateness(store: &DynStore, id: JobId, deadline: Instant) -> Result<f64, String> {
    loop {
        let evs = store
            .read_events(Scope::System, id, 0, 100)
            .await
            .map_err(|e| e.to_string())?;
        let at = |k: &str| {
            evs.iter()
                .find(|e| e.body.kind() == k)
                .map(|e| e.recorded_at_ms)
        };
        if let (Some(a), Some(b)) = (at("sleep_started"), at("sleep_finished")) {
            return Ok((b - a - TIMER_MS) as f64);
        }
        if Instant::now() > deadline {
            return Err("W5: timers did not fire in 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
