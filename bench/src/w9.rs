//! W9 of `aetheris bench`: agent steps against a fake OpenAI-compatible provider that
//! answers at once (an actix-web server in this process: turns 1-20 each call `echo`
//! once, a 21st model call answers). The worker runs in this process on a fresh store per run.
//!
//! - Runtime overhead per turn: jobs of one 20-turn agent step run one after another; a
//!   turn is the time between two consecutive model requests of a job as the provider
//!   receives them (the answer, its durable record, the tool call's start and result, the
//!   next decision and the next request: everything but a model's thinking). p50/p99.
//! - Jobs/s of 100 concurrent 20-turn agents, and their turn p50/p99 under that load.
//! - Stored bytes per turn: the payload bytes of a turn's events (from its
//!   `agent_model_started` to the next), at turn 1 and turn 20 — flat when each event holds
//!   only the turn's new messages.

use crate::runner::{
    median, ms, pct, progress, progress_done, sorted, start_worker, Fresh, Opener,
};
use aetheris_actors::llm::LlmSettings;
use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_runtime::{EventBody, JobId, Plan};
use aetheris_store::{DynStore, NewJob, Scope};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::{self, Display, Formatter};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tool-calling turns per job (one `echo` call each), then one more model call answers.
const TURNS: usize = 20;
/// Jobs run one after another for the per-turn overhead.
const SOLO_JOBS: usize = 5;
/// Jobs at once for the throughput.
const CONCURRENT_JOBS: usize = 100;
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// W9: agent loops.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W9Report {
    pub turns_per_job: usize,
    pub turn_p50_ms: f64,
    pub turn_p99_ms: f64,
    pub concurrent_jobs: usize,
    pub jobs_per_s: f64,
    pub turns_per_s: f64,
    pub concurrent_turn_p50_ms: f64,
    pub concurrent_turn_p99_ms: f64,
    pub bytes_turn_1: f64,
    pub bytes_turn_20: f64,
}

impl Display for W9Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW9: agents of {} turns against a provider answering at once: turn p50 {:.2} ms, \
             p99 {:.2} ms (goal ≤ 2 ms, runtime overhead incl. the local HTTP round trip); {} \
             at once: {:.1} jobs/s ({:.0} turns/s), turn p50 {:.2} ms, p99 {:.2} ms; stored \
             bytes per turn: turn 1 {:.0}, turn 20 {:.0} (goal: flat)",
            self.turns_per_job,
            self.turn_p50_ms,
            self.turn_p99_ms,
            self.concurrent_jobs,
            self.jobs_per_s,
            self.turns_per_s,
            self.concurrent_turn_p50_ms,
            self.concurrent_turn_p99_ms,
            self.bytes_turn_1,
            self.bytes_turn_20
        )
    }
}

struct W9Run {
    turns: Vec<f64>,
    concurrent_turns: Vec<f64>,
    jobs_per_s: f64,
    bytes_turn_1: f64,
    bytes_turn_20: f64,
}

/// When each job's model requests arrived, by the job's tag.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// Runs W9 `runs` times on fresh stores; medians of each run's figures.
pub fn run(fresh: &Fresh, runs: usize) -> Result<W9Report, String> {
    let mut all = Vec::new();
    for r in 0..runs {
        progress(&format!("W9 run {}/{runs}…", r + 1));
        all.push(fresh.run(once)?);
    }
    progress_done();
    let m = |f: &dyn Fn(&W9Run) -> f64| median(all.iter().map(f).collect());
    Ok(W9Report {
        turns_per_job: TURNS,
        turn_p50_ms: m(&|w| pct(&w.turns, 0.5)),
        turn_p99_ms: m(&|w| pct(&w.turns, 0.99)),
        concurrent_jobs: CONCURRENT_JOBS,
        jobs_per_s: m(&|w| w.jobs_per_s),
        turns_per_s: m(&|w| w.jobs_per_s * TURNS as f64),
        concurrent_turn_p50_ms: m(&|w| pct(&w.concurrent_turns, 0.5)),
        concurrent_turn_p99_ms: m(&|w| pct(&w.concurrent_turns, 0.99)),
        bytes_turn_1: m(&|w| w.bytes_turn_1),
        bytes_turn_20: m(&|w| w.bytes_turn_20),
    })
}

/// The fake provider's answer to a Chat Completions request: an `echo` call on every
/// turn but the last, then the final answer.
fn answer(body: &Value) -> Value {
    let turn = body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let message = if turn < TURNS {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{turn}"),
            "type": "function", "function": {"name": "echo", "arguments": format!("{{\"turn\":{turn}}}")}}]})
    } else {
        json!({"role": "assistant", "content": "done"})
    };
    json!({"id": "w9", "object": "chat.completion", "choices": [{"index": 0, "message": message,
        "finish_reason": "stop"}], "usage": {"prompt_tokens": 100, "completion_tokens": 10}})
}

/// Starts the fake provider on this actix system; its URL.
fn fake_provider(arrivals: Arrivals) -> Result<(String, actix_web::dev::ServerHandle), String> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let server = HttpServer::new(move || {
        let arrivals = arrivals.clone();
        App::new().route(
            "/v1/chat/completions",
            web::post().to(move |body: web::Json<Value>| {
                let arrivals = arrivals.clone();
                async move {
                    let at = Instant::now();
                    let tag = body["messages"]
                        .as_array()
                        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or("")
                        .to_string();
                    if let Ok(mut a) = arrivals.lock() {
                        a.entry(tag).or_default().push(at);
                    }
                    HttpResponse::Ok().json(answer(&body))
                }
            }),
        )
    })
    .workers(2)
    .disable_signals()
    .bind("127.0.0.1:0")
    .map_err(|e| format!("W9 fake provider: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or("W9 fake provider: no address")?;
    let running = server.run();
    let handle = running.handle();
    actix_rt::spawn(running);
    Ok((format!("http://{addr}"), handle))
}

fn plan() -> Result<Plan, String> {
    serde_json::from_value(json!({"steps": [{"id": "agent", "agent": {
        "provider": "w9", "model": "fake", "prompt": "${input.tag}", "tools": ["echo"],
        "max_turns": TURNS + 5, "max_tokens": 64}}]}))
    .map_err(|e| format!("W9 plan: {e}"))
}

async fn submit(store: &DynStore, plan: &Plan, tag: &str) -> Result<JobId, String> {
    let (job, _) = store
        .submit(
            NewJob {
                tenant: "w9".into(),
                idempotency_key: None,
                plan: plan.clone(),
                input: json!({ "tag": tag }),
            },
            None,
        )
        .await
        .map_err(|e| format!("W9 submit: {e}"))?;
    Ok(job.job_id)
}

/// Each job's turn times (ms): gaps between its consecutive model requests.
fn turn_times(arrivals: &Arrivals, tags: &[String]) -> Vec<f64> {
    let a = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    tags.iter()
        .filter_map(|t| a.get(t))
        .flat_map(|times| {
            times
                .windows(2)
                .map(|w| ms(w[1] - w[0]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Payload bytes of each turn of a job's agent step, turn 1 first.
async fn bytes_per_turn(store: &DynStore, job: JobId) -> Result<Vec<f64>, String> {
    let events = store
        .read_events(Scope::System, job, 0, 10_000)
        .await
        .map_err(|e| format!("W9 events: {e}"))?;
    let mut turns: Vec<f64> = Vec::new();
    for e in &events {
        if matches!(e.body, EventBody::AgentModelStarted { .. }) {
            turns.push(0.0);
        }
        let agent_event = e.body.agent_step().is_some();
        if let (Some(t), true) = (turns.last_mut(), agent_event) {
            *t += e.body.payload().len() as f64;
        }
    }
    Ok(turns)
}

/// Waits until `n` more jobs finished.
async fn wait(
    feed: &mut crate::runner::FinishedFeed,
    n: usize,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let mut done = 0;
    while done < n {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(Ok((_, aetheris_runtime::JobStatus::Succeeded))) => done += 1,
            Ok(Ok((id, status))) if status.is_terminal() => {
                return Err(format!("W9: job {id} ended {}", status.as_str()))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("W9 feed: {e}")),
            Err(_) => return Err("W9: jobs did not finish in time".into()),
        }
    }
    Ok(())
}

async fn once(opener: Opener) -> Result<W9Run, String> {
    let store = opener.open().await?;
    let arrivals: Arrivals = Arc::default();
    let (url, server) = fake_provider(arrivals.clone())?;
    let llm = LlmSettings::default().with_flags(&[format!("w9=openai:{url}")], &[])?;
    let config = WorkerConfig {
        llm,
        max_jobs: CONCURRENT_JOBS * 2,
        ..WorkerConfig::default()
    };
    let (worker, mut feed) = start_worker(
        store.clone(),
        ToolRegistry::with_builtins(),
        config,
        (SOLO_JOBS + CONCURRENT_JOBS) * 2,
    )
    .await?;
    let plan = plan()?;
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    // One job at a time: the overhead of a turn with nothing else running.
    let mut solo_tags = Vec::new();
    let mut solo_jobs = Vec::new();
    for k in 0..SOLO_JOBS {
        let tag = format!("solo {k}");
        solo_jobs.push(submit(&store, &plan, &tag).await?);
        solo_tags.push(tag);
        wait(&mut feed, 1, deadline).await?;
    }
    // Many at once: throughput.
    let tags: Vec<String> = (0..CONCURRENT_JOBS).map(|k| format!("busy {k}")).collect();
    let t0 = Instant::now();
    for tag in &tags {
        submit(&store, &plan, tag).await?;
    }
    wait(&mut feed, CONCURRENT_JOBS, deadline).await?;
    let wall = t0.elapsed();
    let mut first = Vec::new();
    let mut last = Vec::new();
    for job in &solo_jobs {
        let b = bytes_per_turn(&store, *job).await?;
        if b.len() != TURNS + 1 {
            return Err(format!(
                "W9: a job took {} model calls, not {}",
                b.len(),
                TURNS + 1
            ));
        }
        first.push(b[0]);
        last.push(b[TURNS - 1]);
    }
    worker.drain().await;
    server.stop(false).await;
    Ok(W9Run {
        turns: sorted(turn_times(&arrivals, &solo_tags)),
        concurrent_turns: sorted(turn_times(&arrivals, &tags)),
        jobs_per_s: CONCURRENT_JOBS as f64 / wall.as_secs_f64(),
        bytes_turn_1: median(first),
        bytes_turn_20: median(last),
    })
}
