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

use super::{median, with_fresh, BenchArgs, Opener, Target};
use aetheris_store::NewJob;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A child process with its stdout lines forwarded to a channel and stderr kept.
struct Proc {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, args: &[String]) -> Result<Proc, String> {
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
                    if b.len() < 64 * 1024 {
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
    async fn wait_line(&mut self, pat: &str, within: Duration) -> Result<String, String> {
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

    fn terminate(&self) -> Result<(), String> {
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
    async fn wait_exit(&mut self, within: Duration) -> Result<Instant, String> {
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

async fn drive(
    opener: Opener,
    mode: Mode,
    cfg: &Cfg,
    stub: &StubState,
    port: u16,
) -> Result<Outcome, String> {
    let plan = plan(port, cfg.steps);
    let ttl = cfg.ttl_ms.to_string();
    let up = Duration::from_secs(60);
    match opener {
        Opener::Pg { url, .. } => {
            let store = Opener::Pg {
                url: url.clone(),
                pool: 2,
            }
            .open()
            .await?;
            let worker = |what| {
                Proc::spawn(
                    what,
                    &[
                        "worker".into(),
                        "--database-url".into(),
                        url.clone(),
                        "--no-migrate".into(),
                        "--pool-size".into(),
                        "8".into(),
                        "--lease-ttl-ms".into(),
                        ttl.clone(),
                        "--heartbeat-ms".into(),
                        cfg.heartbeat_ms.to_string(),
                    ],
                )
            };
            let mut a = worker("worker A")?;
            a.wait_line(": running", up).await?;
            let plan: aetheris_runtime::Plan =
                serde_json::from_value(plan).map_err(|e| format!("W3 plan: {e}"))?;
            for n in 0..cfg.jobs {
                store
                    .submit(
                        NewJob {
                            tenant: "bench-w3".into(),
                            idempotency_key: None,
                            plan: plan.clone(),
                            input: json!({ "n": n }),
                        },
                        None,
                    )
                    .await
                    .map_err(|e| format!("W3 submit: {e}"))?;
            }
            let a_tokens = wait_all_in_flight(stub, cfg.jobs, up).await?;
            let mut b = worker("worker B")?;
            b.wait_line(": running", up).await?;
            let t0 = Instant::now();
            match mode {
                Mode::Kill => a
                    .child
                    .kill()
                    .map_err(|e| format!("SIGKILL worker A: {e}"))?,
                Mode::Drain => a.terminate()?,
            }
            let within = Duration::from_millis(cfg.ttl_ms) + Duration::from_secs(30);
            let (exited, resumed) = tokio::join!(
                a.wait_exit(Duration::from_secs(30)),
                wait_all_resumed(stub, &a_tokens, t0, within)
            );
            let a_exit_ms = exited?.duration_since(t0).as_secs_f64() * 1000.0;
            let resumed = resumed?;
            // Stop B before the database goes.
            drop(b);
            Ok(summarize(resumed, None, a_exit_ms))
        }
        Opener::Redb(file) => {
            let dir = file
                .parent()
                .ok_or("W3: the embedded store path has no directory")?
                .display()
                .to_string();
            let dev = |what| {
                Proc::spawn(
                    what,
                    &[
                        "dev".into(),
                        "--data-dir".into(),
                        dir.clone(),
                        "--bind".into(),
                        "127.0.0.1:0".into(),
                        "--lease-ttl-ms".into(),
                        ttl.clone(),
                    ],
                )
            };
            let mut a = dev("dev A")?;
            let line = a.wait_line("listening on ", up).await?;
            let base = line
                .split("listening on ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .ok_or_else(|| format!("W3: cannot parse {line:?}"))?
                .to_string();
            // `dev` issues an admin token for tenant `default` into the data directory.
            let token = std::fs::read_to_string(std::path::Path::new(&dir).join("token"))
                .map_err(|e| format!("W3: reading the dev admin token: {e}"))?;
            let http = reqwest::Client::new();
            for n in 0..cfg.jobs {
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
            let a_tokens = wait_all_in_flight(stub, cfg.jobs, up).await?;
            let t0 = Instant::now();
            match mode {
                Mode::Kill => a.child.kill().map_err(|e| format!("SIGKILL dev A: {e}"))?,
                Mode::Drain => a.terminate()?,
            }
            let a_exit_ms = a
                .wait_exit(Duration::from_secs(30))
                .await?
                .duration_since(t0)
                .as_secs_f64()
                * 1000.0;
            let mut b = dev("dev B")?;
            b.wait_line("listening on ", up).await?;
            let b_ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let within = Duration::from_millis(cfg.ttl_ms) + Duration::from_secs(30);
            let resumed = wait_all_resumed(stub, &a_tokens, t0, within).await?;
            drop(b);
            Ok(summarize(resumed, Some(b_ready_ms), a_exit_ms))
        }
    }
}

fn summarize(resumed: Vec<f64>, b_ready_ms: Option<f64>, a_exit_ms: f64) -> Outcome {
    Outcome {
        first_ms: resumed.iter().copied().fold(f64::INFINITY, f64::min),
        last_ms: resumed.iter().copied().fold(0.0, f64::max),
        b_ready_ms,
        a_exit_ms,
    }
}

/// Runs W3a and W3b `--runs` times each and returns the report section.
pub(super) fn run(target: &Target, args: &BenchArgs) -> Result<Value, String> {
    let step_ms = args.w3_step_ms.max(1);
    let embedded = matches!(target, Target::Embedded);
    let cfg = Cfg {
        jobs: args.w3_jobs,
        // Enough steps that no job finishes during the measurement (≥ 8 s of calls).
        steps: (8_000 / step_ms as usize).clamp(100, aetheris_runtime::plan::MAX_STEPS),
        step_ms,
        ttl_ms: args.w3_lease_ttl_ms,
        heartbeat_ms: if embedded {
            (args.w3_lease_ttl_ms / 5).max(50)
        } else {
            args.w3_heartbeat_ms
        },
    };
    let mut out = json!({
        "jobs": cfg.jobs,
        "steps_per_job": cfg.steps,
        "step_ms": cfg.step_ms,
        "lease_ttl_ms": cfg.ttl_ms,
        "heartbeat_ms": cfg.heartbeat_ms,
        "claim_poll_ms": aetheris_actors::WorkerConfig::default().poll_ms,
        "workers": if embedded {
            "aetheris dev child processes; B starts after A has exited (one process owns the file)"
        } else {
            "aetheris worker child processes; standby B is running before A is signalled"
        },
    });
    for (mode, key, target_ms) in [
        (Mode::Kill, "killed", cfg.ttl_ms as f64 + 500.0),
        (Mode::Drain, "drained", 200.0),
    ] {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            super::progress(&format!(
                "W3 {key} run {}/{} ({} jobs in flight)…",
                r + 1,
                args.runs,
                cfg.jobs
            ));
            let c = cfg.clone();
            runs.push(with_fresh(target, 2, args.keep_databases, move |o| {
                once(o, mode, c)
            })?);
        }
        let m = |f: fn(&Outcome) -> f64| median(runs.iter().map(f).collect());
        let mut section = json!({
            "first_resume_ms": m(|o| o.first_ms),
            "last_resume_ms": m(|o| o.last_ms),
            "a_exit_ms": m(|o| o.a_exit_ms),
            "target_ms": target_ms,
            "runs_last_resume_ms": runs.iter().map(|o| o.last_ms).collect::<Vec<_>>(),
        });
        if runs.iter().all(|o| o.b_ready_ms.is_some()) {
            section["b_ready_ms"] =
                json!(median(runs.iter().filter_map(|o| o.b_ready_ms).collect()));
        }
        out[key] = section;
    }
    Ok(out)
}

pub(super) fn print(w: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "\nW3: {} jobs in flight (http steps held {} ms, idempotent), lease TTL {} ms, \
         heartbeat {} ms, claim poll {} ms",
        w["jobs"], w["step_ms"], w["lease_ttl_ms"], w["heartbeat_ms"], w["claim_poll_ms"]
    );
    println!("  workers: {}", w["workers"].as_str().unwrap_or(""));
    for (key, what) in [
        ("killed", "SIGKILL → resumed"),
        ("drained", "SIGTERM (drain) → resumed"),
    ] {
        let s = &w[key];
        if s.is_null() {
            continue;
        }
        let b = match s["b_ready_ms"].as_f64() {
            Some(b) => format!(", B ready after {b:.0} ms"),
            None => String::new(),
        };
        println!(
            "  {what:<26} first {:>7.0} ms, last {:>7.0} ms (target ≤ {:.0} ms; A gone after \
             {:.0} ms{b})",
            f(&s["first_resume_ms"]),
            f(&s["last_resume_ms"]),
            f(&s["target_ms"]),
            f(&s["a_exit_ms"]),
        );
    }
}
