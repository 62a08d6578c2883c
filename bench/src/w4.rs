//! W4 of `aetheris bench`: reload of a long job. One job is grown to `--reload-events`
//! events (a pure step started again and again: a valid log), then loaded from storage as
//! a recovering worker would, without and with a snapshot; and the latency of one fenced
//! append at event 10 is compared with one at the last event (appends must not slow down
//! as the log grows). Then the step latency of a real worker at event ~10 and at event
//! ~`--reload-events`: a job whose plan is a chain of `STEP_CHAIN` echo steps runs on an
//! in-process worker once fresh and once after its log was grown to the full size (as a
//! job that waited and retried for long would have), and each step's latency is the span
//! of the chain on the store clock (first `step_started` to last `step_succeeded`) over
//! its steps.

use crate::report::W4Report;
use crate::runner::{self, median, ms, progress, progress_done, Fresh, Opener};
use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId};
use aetheris_store::{load_job_state, Append, DynStore, Scope};
use serde_json::{json, Value};
use std::time::Instant;

/// Reloads timed per store state (median reported).
const RELOADS: usize = 5;
/// Appends timed at each end of the log (median reported).
const TIMED_APPENDS: usize = 10;
/// Events per append while growing the log.
const GROW_BATCH: u64 = 500;
/// Steps of the chain whose span gives the step latency (2 events each).
const STEP_CHAIN: usize = 100;

/// One W4 run's figures.
struct W4Run {
    reload_no_snapshot_ms: f64,
    reload_with_snapshot_ms: f64,
    append_at_10_ms: f64,
    append_at_end_ms: f64,
    step_at_10_ms: f64,
    step_at_end_ms: f64,
}

/// Runs W4 `runs` times on fresh stores; medians.
pub fn run(fresh: &Fresh, runs: usize, events: u64) -> Result<W4Report, String> {
    let mut all = Vec::new();
    for r in 0..runs {
        progress(&format!("W4 run {}/{runs} ({events} events)…", r + 1));
        all.push(fresh.run(move |o| once(o, events))?);
    }
    progress_done();
    let m = |f: fn(&W4Run) -> f64| median(all.iter().map(f).collect());
    Ok(W4Report {
        events,
        reload_without_snapshot_ms: m(|w| w.reload_no_snapshot_ms),
        reload_with_snapshot_ms: m(|w| w.reload_with_snapshot_ms),
        append_at_event_10_ms: m(|w| w.append_at_10_ms),
        append_at_last_event_ms: m(|w| w.append_at_end_ms),
        step_at_event_10_ms: m(|w| w.step_at_10_ms),
        step_at_last_event_ms: m(|w| w.step_at_end_ms),
    })
}

/// The job W4 (and W8) grows, claimed so the bench may append to it.
pub(crate) struct Grown {
    pub(crate) job: JobId,
    pub(crate) token: u64,
    /// The job's last sequence number.
    pub(crate) seq: u64,
}

async fn once(opener: Opener, events: u64) -> Result<W4Run, String> {
    let store = opener.open().await?;
    let mut g = submit_and_claim(&store).await?;
    let (append_at_10_ms, seq) = append_latency(&store, &g, TIMED_APPENDS).await?;
    g.seq = seq;
    grow(&store, &mut g, events).await?;
    let reload_no_snapshot_ms = reload_ms(&store, g.job).await?;
    snapshot(&store, &g).await?;
    let reload_with_snapshot_ms = reload_ms(&store, g.job).await?;
    let (append_at_end_ms, _) = append_latency(&store, &g, TIMED_APPENDS).await?;
    let (step_at_10_ms, step_at_end_ms) = step_latencies(&store, events).await?;
    Ok(W4Run {
        reload_no_snapshot_ms,
        reload_with_snapshot_ms,
        append_at_10_ms,
        append_at_end_ms,
        step_at_10_ms,
        step_at_end_ms,
    })
}

/// The step latency (ms) of a real worker on a fresh chain job and on one grown to
/// `events` events first: the grown job is prepared under the bench's lease, then
/// released to the worker once the fresh one finished, so the two never overlap.
async fn step_latencies(store: &DynStore, events: u64) -> Result<(f64, f64), String> {
    let mut steps = vec![json!({"id": "s", "tool": "echo"})];
    for i in 0..STEP_CHAIN {
        let needs = if i == 0 {
            "s".to_string()
        } else {
            format!("t{}", i - 1)
        };
        steps.push(json!({"id": format!("t{i}"), "tool": "echo", "needs": [needs]}));
    }
    let plan = runner::plan(json!({ "steps": steps }))?;
    let grown_job = runner::submit(store, "bench-steps", &plan, Value::Null).await?;
    let token = store
        .claim("bench", 600_000, 1)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|l| l.job_id == grown_job)
        .map(|l| l.token)
        .ok_or("the chain job was not claimed")?;
    let mut g = Grown {
        job: grown_job,
        token,
        seq: 1,
    };
    grow(store, &mut g, events).await?;
    // As a worker would have left it: a snapshot near the end of the log.
    snapshot(store, &g).await?;
    let config = WorkerConfig {
        max_jobs: 4,
        ..WorkerConfig::default()
    };
    let (worker, mut feed) =
        runner::start_worker(store.clone(), ToolRegistry::with_builtins(), config, 64).await?;
    let fresh_job = runner::submit(store, "bench-steps", &plan, Value::Null).await?;
    wait_finished(&mut feed, fresh_job).await?;
    store
        .release("bench", &[(grown_job, token)])
        .await
        .map_err(|e| e.to_string())?;
    wait_finished(&mut feed, grown_job).await?;
    worker.drain().await;
    Ok((
        chain_step_ms(store, fresh_job).await?,
        chain_step_ms(store, grown_job).await?,
    ))
}

async fn wait_finished(feed: &mut runner::FinishedFeed, job: JobId) -> Result<(), String> {
    let deadline = std::time::Duration::from_secs(120);
    loop {
        match tokio::time::timeout(deadline, feed.recv()).await {
            Ok(Ok((id, _))) if id == job => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("the worker's feed: {e}")),
            Err(_) => return Err(format!("job {job} did not finish within 120 s")),
        }
    }
}

/// The span of the chain (first `step_started` of `t0` to the `step_succeeded` of the
/// last step, store clock) over its steps.
async fn chain_step_ms(store: &DynStore, job: JobId) -> Result<f64, String> {
    let events = store
        .read_events(Scope::System, job, 0, 1_000_000)
        .await
        .map_err(|e| e.to_string())?;
    let last = format!("t{}", STEP_CHAIN - 1);
    let first_start = events.iter().find_map(|e| match &e.body {
        EventBody::StepStarted { step, .. } if step == "t0" => Some(e.recorded_at_ms),
        _ => None,
    });
    let last_done = events.iter().rev().find_map(|e| match &e.body {
        EventBody::StepSucceeded { step, .. } if *step == last => Some(e.recorded_at_ms),
        _ => None,
    });
    match (first_start, last_done) {
        (Some(a), Some(b)) => Ok((b - a) as f64 / STEP_CHAIN as f64),
        _ => Err(format!("job {job}: the chain did not run to its end")),
    }
}

pub(crate) async fn submit_and_claim(store: &DynStore) -> Result<Grown, String> {
    let plan = runner::plan(json!({"steps": [{"id": "s", "tool": "echo"}]}))?;
    let job = runner::submit(store, "bench", &plan, Value::Null).await?;
    let lease = store
        .claim("bench", 600_000, 1)
        .await
        .map_err(|e| e.to_string())?;
    let token = lease
        .first()
        .map(|l| l.token)
        .ok_or("claim returned nothing")?;
    Ok(Grown { job, token, seq: 1 })
}

/// A `step_started` of the pure step `s`, which may be started again and again.
fn restart(g: &Grown) -> EventBody {
    EventBody::StepStarted {
        step: "s".into(),
        attempt: 1,
        invocation_key: invocation_key("bench", g.job, "s", 0),
        tool: "echo".into(),
        effect: EffectClass::Pure,
        fencing_token: g.token,
    }
}

pub(crate) async fn append(
    store: &DynStore,
    g: &Grown,
    seq: u64,
    events: Vec<EventBody>,
) -> Result<(), String> {
    store
        .append(Append {
            job_id: g.job,
            token: g.token,
            expected_last_seq: seq,
            events,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The median of `n` single-event appends from `g.seq` on, and the sequence number after.
async fn append_latency(store: &DynStore, g: &Grown, n: usize) -> Result<(f64, u64), String> {
    let mut seq = g.seq;
    let mut samples = Vec::new();
    for _ in 0..n {
        let events = vec![restart(g)];
        let t = Instant::now();
        append(store, g, seq, events).await?;
        samples.push(ms(t.elapsed()));
        seq += 1;
    }
    Ok((median(samples), seq))
}

/// Appends until the job has `events` events.
pub(crate) async fn grow(store: &DynStore, g: &mut Grown, events: u64) -> Result<(), String> {
    while g.seq < events {
        let n = (events - g.seq).min(GROW_BATCH);
        append(store, g, g.seq, vec![restart(g); n as usize]).await?;
        g.seq += n;
    }
    Ok(())
}

/// Median time to load the job's state from storage.
async fn reload_ms(store: &DynStore, job: JobId) -> Result<f64, String> {
    let mut samples = Vec::new();
    for _ in 0..RELOADS {
        let t = Instant::now();
        load_job_state(store, job)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(ms(t.elapsed()));
    }
    Ok(median(samples))
}

async fn snapshot(store: &DynStore, g: &Grown) -> Result<(), String> {
    let state = load_job_state(store, g.job)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("job vanished")?
        .state;
    let blob = encode_versioned(SNAPSHOT_FORMAT, &state).map_err(|e| e.to_string())?;
    store
        .put_snapshot(g.job, g.token, state.last_seq, blob)
        .await
        .map_err(|e| e.to_string())
}
