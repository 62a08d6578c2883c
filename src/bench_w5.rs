//! W5 of `aetheris bench` (DESIGN §7): many jobs parked on a signal. Reports the worker's
//! resident memory with all of them parked, its idle CPU, the latency from a stored signal
//! to the job's next step (p50/p99), and the lateness of durable timers (p50/p99). The
//! worker runs in this process, so this process's RSS and CPU are the worker's.

use aetheris_actors::{start_worker, Drain, Metrics, Shared, ToolRegistry, WorkerConfig};
use aetheris_runtime::{JobId, JobStatus, Plan};
use aetheris_store::{CommandBody, DynStore, NewJob, Scope};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ms() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) * 10.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(((v.len() - 1) as f64) * p).round() as usize]
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

/// Runs W5 on `store` (fresh): `parked` jobs parked on a signal, `samples` of them
/// signalled one at a time, and `timers` jobs with a 1.5 s sleep.
pub async fn w5(
    store: DynStore,
    parked: usize,
    samples: usize,
    timers: usize,
) -> Result<Value, String> {
    let (finished, mut done) = tokio::sync::broadcast::channel(65_536);
    let shared = Shared {
        store: store.clone(),
        tools: ToolRegistry::with_builtins(),
        metrics: Arc::new(Metrics::default()),
        config: Arc::new(WorkerConfig {
            max_jobs: 512,
            ..WorkerConfig::default()
        }),
        finished,
    };
    let (leases, _) = start_worker(shared);
    let plan: Plan = serde_json::from_value(json!({"steps": [
        {"id": "approve", "wait": {"signal": "go"}},
        {"id": "next", "tool": "echo", "needs": ["approve"], "args": {"ok": true}}
    ]}))
    .map_err(|e| e.to_string())?;
    let rss0 = rss_kib();
    let mut ids = Vec::with_capacity(parked);
    for i in 0..parked {
        if i % 1000 == 0 {
            eprint!("\rW5: submitting {i}/{parked}…   ");
        }
        let (s, _) = store
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
        ids.push(s.job_id);
    }
    eprint!("\rW5: waiting for {parked} jobs to park…   ");
    wait_for(&store, JobStatus::Waiting, parked as u64, "parking").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib();
    let cpu0 = cpu_ms();
    let idle = Duration::from_secs(5);
    tokio::time::sleep(idle).await;
    let idle_cpu_pct = (cpu_ms() - cpu0) / idle.as_millis() as f64 * 100.0;

    eprint!("\rW5: signalling {samples} jobs…                 ");
    let mut lat = Vec::with_capacity(samples);
    for id in ids.iter().take(samples) {
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
        loop {
            match tokio::time::timeout(Duration::from_secs(30), done.recv()).await {
                Ok(Ok((j, _))) if j == *id => break,
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                _ => return Err(format!("W5: job {id} did not resume after its signal")),
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }

    eprint!("\rW5: {timers} timers of 1.5 s…                 ");
    let sleep_plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "nap", "sleep": "1500ms"}]}))
            .map_err(|e| e.to_string())?;
    let mut sleepers: HashMap<JobId, ()> = HashMap::new();
    for _ in 0..timers {
        let (s, _) = store
            .submit(
                NewJob {
                    tenant: "bench".into(),
                    idempotency_key: None,
                    plan: sleep_plan.clone(),
                    input: Value::Null,
                },
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        sleepers.insert(s.job_id, ());
    }
    let mut late = Vec::with_capacity(timers);
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in sleepers.keys() {
        loop {
            let evs = store
                .read_events(Scope::System, *id, 0, 100)
                .await
                .map_err(|e| e.to_string())?;
            let at = |k: &str| {
                evs.iter()
                    .find(|e| e.body.kind() == k)
                    .map(|e| e.recorded_at_ms)
            };
            if let (Some(a), Some(b)) = (at("sleep_started"), at("sleep_finished")) {
                late.push((b - a - 1500) as f64);
                break;
            }
            if Instant::now() > deadline {
                return Err("W5: timers did not fire in 2 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("\r{:60}", "");
    let _ = leases
        .send(Drain {
            grace: Duration::from_secs(5),
        })
        .await;
    Ok(json!({
        "parked_jobs": parked,
        "rss_mib": rss as f64 / 1024.0,
        "rss_delta_mib": rss.saturating_sub(rss0) as f64 / 1024.0,
        "idle_cpu_percent": idle_cpu_pct,
        "signal_to_next_step_p50_ms": pct(&mut lat.clone(), 0.5),
        "signal_to_next_step_p99_ms": pct(&mut lat, 0.99),
        "timer_lateness_p50_ms": pct(&mut late.clone(), 0.5),
        "timer_lateness_p99_ms": pct(&mut late, 0.99),
    }))
}
