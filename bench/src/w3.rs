//! W3 of `aetheris bench`: crash-to-resume (W3a) and drain handoff (W3b), with real worker
//! processes (this binary, started as children), because only a real process can be
//! SIGKILLed the way a crash kills it.
//!
//! Setup per run: a stub HTTP endpoint in this process holds every call for `--w3-step-ms`
//! and records, per job, the time and the `Aetheris-Fencing-Token` of each call. N jobs of
//! many `http` steps (`effect: idempotent`, so a crashed call is re-invoked with the same
//! key rather than parked as outcome_unknown) call it in a chain. Worker A runs all N; once
//! every job has a call in flight at A, A gets SIGKILL (W3a) or SIGTERM (W3b: drain). A job
//! "resumes" when the stub first sees it called under a newer fencing token than A's: a
//! second worker B has claimed it, reloaded it from storage and re-invoked or continued
//! it. Times are from the signal to the first and to the last job resuming.
//!
//! - PostgreSQL: A and B are `aetheris worker` processes on the run's database. B is
//!   started (and has reported `running`) before A is signalled — a standby worker of a
//!   fleet — so the figure is the handoff alone. After a kill B can claim only when A's
//!   leases expire (TTL after A's last heartbeat) and notices on its next claim poll (every
//!   500 ms); after a drain A releases every lease at once and NOTIFY wakes B.
//! - Embedded: only one process may open the redb file, so A and B are `aetheris dev`
//!   processes one after the other on the same data directory: B starts when A has exited,
//!   and the figures include B's start (reported separately as `b_ready_ms`). Jobs are
//!   submitted over A's HTTP API with the admin token `dev` writes to the data directory.

use crate::report::{W3Handoff, W3Report};
use crate::runner::{self, median, ms, progress, progress_done, Fresh, Opener, Proc};
use crate::BenchArgs;
use aetheris_store::DynStore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a child process may take to report it is up, and every other W3 wait.
const UP: Duration = Duration::from_secs(60);
/// Time allowed beyond the lease TTL for every job to resume.
const RESUME_SLACK: Duration = Duration::from_secs(30);
/// How long a signalled worker may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kill,
    Drain,
}

#[derive(Clone)]
struct Cfg {
    jobs: usize,
    steps: usize,
    step_ms: u64,
    ttl_ms: u64,
    heartbeat_ms: u64,
}

struct Outcome {
    first_ms: f64,
    last_ms: f64,
    /// Embedded: signal → B reported ready.
    b_ready_ms: Option<f64>,
    /// Signal → A exited (drain: how long the drain took).
    a_exit_ms: f64,
}

/// Calls seen per job number: (fencing token, when).
#[derive(Default)]
struct Seen {
    calls: HashMap<u64, Vec<(u64, Instant)>>,
}

struct StubState {
    seen: Mutex<Seen>,
    hold: Duration,
}

async fn hold(
    path: actix_web::web::Path<u64>,
    req: actix_web::HttpRequest,
    st: actix_web::web::Data<StubState>,
) -> actix_web::HttpResponse {
    let token = req
        .headers()
        .get("aetheris-fencing-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    {
        let mut seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.calls
            .entry(path.into_inner())
            .or_default()
            .push((token, Instant::now()));
    }
    tokio::time::sleep(st.hold).await;
    actix_web::HttpResponse::Ok().json(json!({}))
}

fn plan(port: u16, steps: usize) -> Value {
    let url = format!("http://127.0.0.1:{port}/hold/${{input.n}}");
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "tool": "http", "effect": "idempotent",
                               "args": {"url": url}});
            if i > 0 {
                s["needs"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({ "steps": steps })
}

/// Per job: the first token A used. Waits until every job has a call in flight.
async fn wait_all_in_flight(
    st: &StubState,
    jobs: usize,
    within: Duration,
) -> Result<HashMap<u64, u64>, String> {
    let deadline = Instant::now() + within;
    loop {
        {
            let seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.calls.len() >= jobs {
                return Ok(seen
                    .calls
                    .iter()
                    .map(|(n, c)| (*n, c.iter().map(|x| x.0).max().unwrap_or(0)))
                    .collect());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "W3: not all {jobs} jobs reached worker A within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per job: ms from `t0` to the first call under a newer token than A's.
async fn wait_all_resumed(
    st: &StubState,
    a_tokens: &HashMap<u64, u64>,
    t0: Instant,
    within: Duration,
) -> Result<Vec<f64>, String> {
    let deadline = Instant::now() + within;
    loop {
        let resumed: Vec<f64> = {
            let seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
            a_tokens
                .iter()
                .filter_map(|(n, ta)| {
                    seen.calls.get(n)?.iter().find_map(|(t, at)| {
                        (*t > *ta && *at >= t0)
                            .then(|| at.duration_since(t0).as_secs_f64() * 1000.0)
                    })
                })
                .collect()
        };
        if resumed.len() == a_tokens.len() {
            return Ok(resumed);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "W3: only {} of {} jobs resumed within {within:?}",
                resumed.len(),
                a_tokens.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn once(opener: Opener, mode: Mode, cfg: Cfg) -> Result<Outcome, String> {
    let state = actix_web::web::Data::new(StubState {
        seen: Mutex::new(Seen::default()),
        hold: Duration::from_millis(cfg.step_ms),
    });
    let app_state = state.clone();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(app_state.clone())
            .route("/hold/{n}", actix_web::web::get().to(hold))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .map_err(|e| format!("W3 stub: {e}"))?;
    let port = server
        .addrs()
        .first()
        .map(|a| a.port())
        .ok_or("W3 stub has no address")?;
    let server = server.run();
    let stub = server.handle();
    actix_rt::spawn(server);
    let r = drive(opener, mode, &cfg, &state, port).await;
    stub.stop(false).await;
    r
}

/// Runs one handoff against the run's store: PostgreSQL workers side by side, or embedded
/// `dev` processes one after the other.
async fn drive(
    opener: Opener,
    mode: Mode,
    cfg: &Cfg,
    stub: &StubState,
    port: u16,
) -> Result<Outcome, String> {
    let plan = plan(port, cfg.steps);
    match opener {
        Opener::Pg { url, .. } => drive_pg(&url, mode, cfg, stub, plan).await,
        Opener::Redb(file) => {
            let dir = file
                .parent()
                .ok_or("W3: the embedded store path has no directory")?;
            drive_embedded(dir, mode, cfg, stub, plan).await
        }
    }
}

/// An `aetheris worker` child on the run's database.
fn pg_worker(what: &'static str, url: &str, cfg: &Cfg) -> Result<Proc, String> {
    let args = [
        "worker",
        "--database-url",
        url,
        "--no-migrate",
        "--pool-size",
        "8",
        "--lease-ttl-ms",
        &cfg.ttl_ms.to_string(),
        "--heartbeat-ms",
        &cfg.heartbeat_ms.to_string(),
        // Two workers run at once: each takes a free admin port.
        "--admin-bind",
        "127.0.0.1:0",
    ];
    Proc::spawn(what, &args.map(String::from))
}

/// SIGKILL (a crash) or SIGTERM (a drain) to worker A.
fn signal(a: &mut Proc, mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Kill => a.kill(),
        Mode::Drain => a.terminate(),
    }
}

/// Resumption must happen within the TTL (a kill) plus slack.
fn resume_within(cfg: &Cfg) -> Duration {
    Duration::from_millis(cfg.ttl_ms) + RESUME_SLACK
}

async fn drive_pg(
    url: &str,
    mode: Mode,
    cfg: &Cfg,
    stub: &StubState,
    plan: Value,
) -> Result<Outcome, String> {
    let store = Opener::Pg {
        url: url.to_string(),
        pool: 2,
    }
    .open()
    .await?;
    let mut a = pg_worker("worker A", url, cfg)?;
    a.wait_line(": running", UP).await?;
    submit_direct(&store, plan, cfg.jobs).await?;
    let a_tokens = wait_all_in_flight(stub, cfg.jobs, UP).await?;
    let mut b = pg_worker("worker B", url, cfg)?;
    b.wait_line(": running", UP).await?;
    let t0 = Instant::now();
    signal(&mut a, mode)?;
    let (exited, resumed) = tokio::join!(
        a.wait_exit(EXIT_WITHIN),
        wait_all_resumed(stub, &a_tokens, t0, resume_within(cfg))
    );
    let a_exit_ms = ms(exited?.duration_since(t0));
    let resumed = resumed?;
    // Stop B before the database goes.
    drop(b);
    Ok(summarize(resumed, None, a_exit_ms))
}

async fn submit_direct(store: &DynStore, plan: Value, jobs: usize) -> Result<(), String> {
    let plan = runner::plan(plan)?;
    for n in 0..jobs {
        runner::submit(store, "bench-w3", &plan, json!({ "n": n }))
            .await
            .map_err(|e| format!("W3 {e}"))?;
    }
    Ok(())
}

/// An `aetheris dev` child on the run's data directory.
fn dev(what: &'static str, dir: &Path, cfg: &Cfg) -> Result<Proc, String> {
    let args = [
        "dev".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--lease-ttl-ms".into(),
        cfg.ttl_ms.to_string(),
    ];
    Proc::spawn(what, &args)
}

async fn drive_embedded(
    dir: &Path,
    mode: Mode,
    cfg: &Cfg,
    stub: &StubState,
    plan: Value,
) -> Result<Outcome, String> {
    let mut a = dev("dev A", dir, cfg)?;
    let line = a.wait_line("listening on ", UP).await?;
    let base = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or_else(|| format!("W3: cannot parse {line:?}"))?
        .to_string();
    submit_http(&base, dir, &plan, cfg.jobs).await?;
    let a_tokens = wait_all_in_flight(stub, cfg.jobs, UP).await?;
    let t0 = Instant::now();
    signal(&mut a, mode)?;
    let a_exit_ms = ms(a.wait_exit(EXIT_WITHIN).await?.duration_since(t0));
    let mut b = dev("dev B", dir, cfg)?;
    b.wait_line("listening on ", UP).await?;
    let b_ready_ms = ms(t0.elapsed());
    let resumed = wait_all_resumed(stub, &a_tokens, t0, resume_within(cfg)).await?;
    drop(b);
    Ok(summarize(resumed, Some(b_ready_ms), a_exit_ms))
}

/// Submits over dev A's HTTP API with the admin token `dev` writes to its data directory
/// (for tenant `default`).
async fn submit_http(base: &str, dir: &Path, plan: &Value, jobs: usize) -> Result<(), String> {
    let token = std::fs::read_to_string(dir.join("token"))
        .map_err(|e| format!("W3: reading the dev admin token: {e}"))?;
    let http = reqwest::Client::new();
    for n in 0..jobs {
        let resp = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(token.trim())
            .json(&json!({"plan": plan, "input": {"n": n}}))
            .send()
            .await
            .map_err(|e| format!("W3 submit: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("W3 submit answered {status}: {body}"));
        }
    }
    Ok(())
}

fn summarize(resumed: Vec<f64>, b_ready_ms: Option<f64>, a_exit_ms: f64) -> Outcome {
    Outcome {
        first_ms: resumed.iter().copied().fold(f64::INFINITY, f64::min),
        last_ms: resumed.iter().copied().fold(0.0, f64::max),
        b_ready_ms,
        a_exit_ms,
    }
}

/// The W3 settings of this invocation.
fn config(fresh: &Fresh, args: &BenchArgs) -> Cfg {
    let step_ms = args.w3_step_ms.max(1);
    Cfg {
        jobs: args.w3_jobs,
        // Enough steps that no job finishes during the measurement (≥ 8 s of calls).
        steps: (8_000 / step_ms as usize).clamp(100, aetheris_runtime::plan::MAX_STEPS),
        step_ms,
        ttl_ms: args.w3_lease_ttl_ms,
        heartbeat_ms: if fresh.target.is_embedded() {
            (args.w3_lease_ttl_ms / 5).max(50)
        } else {
            args.w3_heartbeat_ms
        },
    }
}

/// Runs W3a and W3b `--runs` times each and returns the report section.
pub fn run(fresh: &Fresh, args: &BenchArgs) -> Result<W3Report, String> {
    let cfg = config(fresh, args);
    // The handoff runs its own small pools; the measured processes are the children.
    let fresh = Fresh {
        pool: 2,
        ..fresh.clone()
    };
    let killed = handoff(&fresh, &cfg, Mode::Kill, args.runs)?;
    let drained = handoff(&fresh, &cfg, Mode::Drain, args.runs)?;
    progress_done();
    Ok(W3Report {
        jobs: cfg.jobs,
        steps_per_job: cfg.steps,
        step_ms: cfg.step_ms,
        lease_ttl_ms: cfg.ttl_ms,
        heartbeat_ms: cfg.heartbeat_ms,
        claim_poll_ms: aetheris_actors::WorkerConfig::default().poll_ms,
        workers: if fresh.target.is_embedded() {
            "aetheris dev child processes; B starts after A has exited (one process owns the file)"
        } else {
            "aetheris worker child processes; standby B is running before A is signalled"
        }
        .to_string(),
        killed,
        drained,
    })
}

/// One handoff mode, `runs` times: medians.
fn handoff(fresh: &Fresh, cfg: &Cfg, mode: Mode, runs: usize) -> Result<W3Handoff, String> {
    let (key, target_ms) = match mode {
        Mode::Kill => ("killed", cfg.ttl_ms as f64 + 500.0),
        Mode::Drain => ("drained", 200.0),
    };
    let mut outcomes = Vec::new();
    for r in 0..runs {
        progress(&format!(
            "W3 {key} run {}/{runs} ({} jobs in flight)…",
            r + 1,
            cfg.jobs
        ));
        let c = cfg.clone();
        outcomes.push(fresh.run(move |o| once(o, mode, c))?);
    }
    let m = |f: fn(&Outcome) -> f64| median(outcomes.iter().map(f).collect());
    Ok(W3Handoff {
        first_resume_ms: m(|o| o.first_ms),
        last_resume_ms: m(|o| o.last_ms),
        a_exit_ms: m(|o| o.a_exit_ms),
        target_ms,
        runs_last_resume_ms: outcomes.iter().map(|o| o.last_ms).collect(),
        b_ready_ms: runner::opt_median(outcomes.iter().map(|o| o.b_ready_ms)),
    })
}
