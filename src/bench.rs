//! `aetheris bench`: the benchmark command of DESIGN §7 on the embedded store. Runs the
//! worker in-process (no HTTP in the measured path) against a fresh store per run and
//! reports medians over `--runs`:
//! - W1: J jobs × 10 sequential no-op `side_effect` steps at concurrency C — steps/s, job
//!   p50/p99, per-step latency p50/p99, CPU-ms per step (this process = the whole system
//!   on the embedded store);
//! - W4: reload of a 10,000-event job with and without a snapshot, and the latency of one
//!   fenced append at event 10,000 vs event 10;
//! - W7: bytes per event on disk (file size / events) and the average payload.
//!
//! Timings are reported, never asserted.

use aetheris_actors::job::load_state;
use aetheris_actors::{
    start_worker, Invocation, Metrics, Shared, Tool, ToolError, ToolRegistry, WorkerConfig,
};
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId, Plan};
use aetheris_store::{Append, DynStore, NewJob, RedbStore};
use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::ExitCode;
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
    /// Only these workloads (w1, w4, w7).
    #[arg(long, value_delimiter = ',', default_value = "w1,w4,w7")]
    pub workloads: Vec<String>,
    #[arg(long)]
    pub json: bool,
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

fn cpu_ms() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10.0
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
    serde_json::from_value(json!({ "steps": steps })).unwrap_or(Plan { steps: vec![] })
}

struct W1 {
    steps_per_s: f64,
    job_p50_ms: f64,
    job_p99_ms: f64,
    step_p50_ms: f64,
    step_p99_ms: f64,
    cpu_ms_per_step: f64,
    bytes_per_event: f64,
    payload_per_event: f64,
}

async fn w1_once(concurrency: usize, jobs: usize) -> Result<W1, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store: DynStore =
        Arc::new(RedbStore::open(&dir.path().join("bench.redb")).map_err(|e| e.to_string())?);
    let mut tools = ToolRegistry::with_builtins();
    tools.register("noop", Noop);
    let (finished, mut done_rx) = tokio::sync::broadcast::channel(65_536);
    let shared = Shared {
        store: store.clone(),
        tools,
        metrics: Arc::new(Metrics::default()),
        config: Arc::new(WorkerConfig {
            max_jobs: concurrency.max(1) * 2,
            ..WorkerConfig::default()
        }),
        finished,
    };
    let (leases, _) = start_worker(shared);
    let plan = ten_step_plan();
    let size0 = store.size_bytes().await.unwrap_or(0);
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let mut started: HashMap<JobId, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(jobs);
    let mut submitted = 0usize;
    let mut sample_job: Option<JobId> = None;
    let submit = |store: DynStore, plan: Plan| async move {
        store
            .submit(NewJob {
                tenant: "bench".into(),
                idempotency_key: None,
                plan,
                input: Value::Null,
            })
            .await
            .map(|(s, _)| s.job_id)
            .map_err(|e| e.to_string())
    };
    while submitted < concurrency.min(jobs) {
        let id = submit(store.clone(), plan.clone()).await?;
        sample_job.get_or_insert(id);
        started.insert(id, Instant::now());
        submitted += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < jobs {
        let (id, _) = tokio::time::timeout_at(deadline.into(), done_rx.recv())
            .await
            .map_err(|_| "W1 run did not finish in 10 minutes".to_string())?
            .map_err(|e| format!("completion feed: {e}"))?;
        if let Some(t) = started.remove(&id) {
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            if submitted < jobs {
                let id = submit(store.clone(), plan.clone()).await?;
                started.insert(id, Instant::now());
                submitted += 1;
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
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
    latencies.sort_by(|a, b| a.total_cmp(b));
    let step: Vec<f64> = latencies.iter().map(|l| l / 10.0).collect();
    Ok(W1 {
        steps_per_s: steps / wall,
        job_p50_ms: pct(&latencies, 0.5),
        job_p99_ms: pct(&latencies, 0.99),
        step_p50_ms: pct(&step, 0.5),
        step_p99_ms: pct(&step, 0.99),
        cpu_ms_per_step: cpu / steps,
        bytes_per_event: size / events,
        payload_per_event: payload,
    })
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

async fn w4_once(events: u64) -> Result<W4, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store: DynStore =
        Arc::new(RedbStore::open(&dir.path().join("bench.redb")).map_err(|e| e.to_string())?);
    let plan: Plan = serde_json::from_value(json!({"steps": [{"id": "s", "tool": "echo"}]}))
        .map_err(|e| e.to_string())?;
    let (job, _) = store
        .submit(NewJob {
            tenant: "bench".into(),
            idempotency_key: None,
            plan,
            input: Value::Null,
        })
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
        load_state(&store, job.job_id).await?;
        no_snap.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (state, _, _) = load_state(&store, job.job_id)
        .await?
        .ok_or("job vanished")?;
    let blob = encode_versioned(SNAPSHOT_FORMAT, &state).map_err(|e| e.to_string())?;
    store
        .put_snapshot(job.job_id, token, state.last_seq, blob)
        .await
        .map_err(|e| e.to_string())?;
    let mut with_snap = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        load_state(&store, job.job_id).await?;
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

pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.runs == 0 || args.concurrency.contains(&0) {
        return Err("--runs and every --concurrency must be at least 1".into());
    }
    let want = |w: &str| args.workloads.iter().any(|x| x.eq_ignore_ascii_case(w));
    let system = actix_rt::System::new();
    system.block_on(async move {
        let mut report = json!({"store": "embedded (redb)", "runs": args.runs});
        if want("w1") || want("w7") {
            let mut rows = Vec::new();
            for &c in &args.concurrency {
                let jobs = args.jobs.unwrap_or((c * 20).max(50));
                let mut runs = Vec::new();
                for r in 0..args.runs {
                    eprint!(
                        "\rW1 c={c:<3} run {}/{} ({jobs} jobs × 10 steps)…   ",
                        r + 1,
                        args.runs
                    );
                    runs.push(w1_once(c, jobs).await?);
                }
                let m = |f: fn(&W1) -> f64| median(runs.iter().map(f).collect());
                rows.push(json!({
                    "concurrency": c, "jobs": jobs,
                    "steps_per_s": m(|w| w.steps_per_s),
                    "job_p50_ms": m(|w| w.job_p50_ms), "job_p99_ms": m(|w| w.job_p99_ms),
                    "step_p50_ms": m(|w| w.step_p50_ms), "step_p99_ms": m(|w| w.step_p99_ms),
                    "cpu_ms_per_step": m(|w| w.cpu_ms_per_step),
                    "bytes_per_event": m(|w| w.bytes_per_event),
                    "payload_bytes_per_event": m(|w| w.payload_per_event),
                }));
            }
            eprintln!("\r{:60}", "");
            report["w1"] = json!(rows);
        }
        if want("w4") {
            let mut runs = Vec::new();
            for r in 0..args.runs {
                eprint!(
                    "\rW4 run {}/{} ({} events)…   ",
                    r + 1,
                    args.runs,
                    args.reload_events
                );
                runs.push(w4_once(args.reload_events).await?);
            }
            eprintln!("\r{:60}", "");
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
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_table(r: &Value) {
    println!(
        "aetheris bench — {} — medians of {} runs",
        r["store"].as_str().unwrap_or(""),
        r["runs"]
    );
    if let Some(rows) = r["w1"].as_array() {
        println!("\nW1: jobs × 10 sequential no-op side_effect steps");
        println!(
            "{:>5} {:>6} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9} {:>11}",
            "conc",
            "jobs",
            "steps/s",
            "job p50",
            "job p99",
            "step p50",
            "step p99",
            "cpu/step",
            "bytes/event"
        );
        for w in rows {
            println!(
                "{:>5} {:>6} {:>10.0} {:>7.2}ms {:>7.2}ms {:>8.3}ms {:>8.3}ms {:>7.3}ms {:>7.0} ({:.0} payload)",
                w["concurrency"].as_u64().unwrap_or(0),
                w["jobs"].as_u64().unwrap_or(0),
                w["steps_per_s"].as_f64().unwrap_or(0.0),
                w["job_p50_ms"].as_f64().unwrap_or(0.0),
                w["job_p99_ms"].as_f64().unwrap_or(0.0),
                w["step_p50_ms"].as_f64().unwrap_or(0.0),
                w["step_p99_ms"].as_f64().unwrap_or(0.0),
                w["cpu_ms_per_step"].as_f64().unwrap_or(0.0),
                w["bytes_per_event"].as_f64().unwrap_or(0.0),
                w["payload_bytes_per_event"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(w) = r.get("w4").filter(|w| !w.is_null()) {
        println!("\nW4: reload of a {}-event job", w["events"]);
        println!(
            "  without snapshot {:>9.2} ms",
            w["reload_without_snapshot_ms"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  with snapshot    {:>9.2} ms",
            w["reload_with_snapshot_ms"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  one append at event 10: {:.3} ms; at event {}: {:.3} ms",
            w["append_at_event_10_ms"].as_f64().unwrap_or(0.0),
            w["events"],
            w["append_at_last_event_ms"].as_f64().unwrap_or(0.0)
        );
    }
}
