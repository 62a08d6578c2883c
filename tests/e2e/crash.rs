//! Crash tests, in the style of sled's: the real `aetheris` binary runs as a child process
//! on a temp data dir and is SIGKILLed at random points while jobs run, then restarted on
//! the same data dir and port, over and over. Every job is a chain of `side_effect` HTTP
//! steps against a counting stub in this test, so the stub is the witness for G2: no
//! invocation key may ever reach it twice. At the end one last incarnation settles every
//! job and we check G1 (every acknowledged job exists), G2 (no duplicate effect; every
//! succeeded step's effect happened exactly once), G4 (every job reaches `succeeded`, or
//! `waiting` on an `outcome_unknown` step — never stuck, never failed) and G7 (every event
//! chain verifies).
//!
//! `AETHERIS_CRASH_KILLS=N` sets the number of kills (default 20, e.g. 1000 for W2).

use aetheris_runtime::{JobId, RecordedEvent};
use futures::stream::{self, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DEFAULT_KILLS: usize = 20;
const LEASE_TTL_MS: u64 = 1_000;

/// A counting HTTP stub: records every `Idempotency-Key` it sees (with the fencing token
/// that came with it) and answers `200 {"ok":true}` after a random 0–20 ms delay, which
/// widens the window in which a kill lands mid-call.
mod stub {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use rand::Rng;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::thread;
    use std::time::Duration;

    #[derive(Default)]
    pub struct Seen {
        /// invocation key → fencing tokens of every call that carried it.
        pub keys: Mutex<HashMap<String, Vec<Option<u64>>>>,
        pub calls: AtomicUsize,
        pub keyless: AtomicUsize,
    }

    impl Seen {
        pub fn snapshot(&self) -> HashMap<String, Vec<Option<u64>>> {
            self.keys.lock().unwrap().clone()
        }
    }

    pub struct Stub {
        pub url: String,
        pub seen: Arc<Seen>,
        handle: actix_web::dev::ServerHandle,
        thread: Option<thread::JoinHandle<()>>,
    }

    async fn effect(req: HttpRequest, seen: web::Data<Arc<Seen>>) -> HttpResponse {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        seen.calls.fetch_add(1, Ordering::SeqCst);
        match header("idempotency-key") {
            Some(key) => {
                let token = header("aetheris-fencing-token").and_then(|t| t.parse().ok());
                seen.keys
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .push(token);
            }
            None => {
                seen.keyless.fetch_add(1, Ordering::SeqCst);
            }
        }
        let delay = rand::rng().random_range(0..=20u64);
        actix_rt::time::sleep(Duration::from_millis(delay)).await;
        HttpResponse::Ok().json(json!({"ok": true}))
    }

    impl Stub {
        pub fn start() -> Stub {
            let seen = Arc::new(Seen::default());
            let (tx, rx) = mpsc::channel();
            let data = web::Data::new(seen.clone());
            let thread = thread::Builder::new()
                .name("crash-stub".into())
                .spawn(move || {
                    actix_rt::System::new().block_on(async move {
                        let server = HttpServer::new(move || {
                            App::new()
                                .app_data(data.clone())
                                .default_service(web::to(effect))
                        })
                        .workers(2)
                        .disable_signals()
                        .bind(("127.0.0.1", 0))
                        .expect("stub: bind 127.0.0.1:0");
                        let addr = server.addrs()[0];
                        let running = server.run();
                        tx.send((addr, running.handle()))
                            .expect("stub: report address");
                        let _ = running.await;
                    })
                })
                .expect("stub: spawn thread");
            let (addr, handle) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("stub did not start within 10 s");
            Stub {
                url: format!("http://{addr}/effect"),
                seen,
                handle,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), self.handle.stop(false)).await;
                });
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

use stub::Stub;

/// The `aetheris dev` child process: one data dir, one port (picked once), one log file
/// that every incarnation appends to.
struct Node {
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
    incarnations: usize,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Node {
    fn new(dir: &Path) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        Node {
            data_dir: dir.join("data"),
            log: dir.join("node.log"),
            port,
            child: None,
            incarnations: 0,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("reqwest client"),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the child without waiting for it to be ready.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        self.incarnations += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        use std::io::Write;
        let _ = writeln!(log, "=== incarnation {} ===", self.incarnations);
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_aetheris"))
            .arg("dev")
            .arg("--insecure-no-auth")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--lease-ttl-ms")
            .arg(LEASE_TTL_MS.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn the aetheris binary");
        self.child = Some(child);
    }

    /// Whether `/healthz` answers 200.
    fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.url());
        let client = &self.client;
        self.rt.block_on(async {
            matches!(
                client.get(url).timeout(Duration::from_millis(500)).send().await,
                Ok(r) if r.status().is_success()
            )
        })
    }

    /// Starts the child and waits until it serves HTTP. A child that exits at once (the
    /// port is briefly unavailable after a kill) is started again, for up to 10 s.
    fn start(&mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(20);
        let mut respawns_left = 100;
        self.spawn();
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "node (incarnation {}) not ready within 20 s",
                    self.incarnations
                ));
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                if respawns_left == 0 {
                    return Err(format!("node keeps exiting at start ({status})"));
                }
                respawns_left -= 1;
                thread::sleep(Duration::from_millis(100));
                self.spawn();
                continue;
            }
            if self.healthy() {
                return Ok(t0.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn get_json(&self, path: &str) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.url());
        let client = &self.client;
        self.rt.block_on(get_json(client, url))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn get_json(client: &reqwest::Client, url: String) -> Result<(u16, Value), String> {
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .json::<Value>()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok((status, body))
}

/// A job of 3–5 sequential side_effect calls to the stub.
fn job_body(stub_url: &str, n: usize, idempotency_key: Option<&str>) -> Value {
    let steps: Vec<Value> = (1..=n)
        .map(|i| {
            let needs: Vec<String> = if i > 1 {
                vec![format!("s{}", i - 1)]
            } else {
                vec![]
            };
            json!({
                "id": format!("s{i}"),
                "tool": "http",
                "effect": "side_effect",
                "needs": needs,
                "timeout": "10s",
                "args": {"method": "POST", "url": stub_url, "body": {"n": i}},
            })
        })
        .collect();
    json!({
        "plan": {"steps": steps},
        "input": {"n": n},
        "idempotency_key": idempotency_key,
    })
}

#[derive(Debug, Clone)]
struct Ack {
    job_id: String,
    idempotency_key: Option<String>,
    code: u16,
}

#[derive(Default)]
struct Submissions {
    stop: AtomicBool,
    attempts: AtomicUsize,
    refused: AtomicUsize,
    acked: Mutex<Vec<Ack>>,
    /// Answers that were neither 200/201 nor a transport error.
    unexpected: Mutex<Vec<String>>,
}

/// Submits jobs continuously (from `loops` concurrent loops) until told to stop, whether
/// or not the node is up; remembers every acknowledged job.
fn start_submitter(
    url: String,
    stub_url: String,
    loops: usize,
    subs: Arc<Submissions>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("crash-submitter".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .connect_timeout(Duration::from_millis(500))
                .build()
                .expect("reqwest client");
            let lanes = (0..loops).map(|lane| submit_loop(lane, &client, &subs, &url, &stub_url));
            rt.block_on(futures::future::join_all(lanes));
        })
        .expect("spawn submitter")
}

async fn submit_loop(
    lane: usize,
    client: &reqwest::Client,
    subs: &Submissions,
    url: &str,
    stub_url: &str,
) {
    let mut i = 0usize;
    while !subs.stop.load(Ordering::SeqCst) {
        i += 1;
        let (n, key, pause) = {
            let mut rng = rand::rng();
            let n = rng.random_range(3..=5usize);
            // A third of the jobs carry a key, drawn from a small pool so that some are
            // repeats (which must return the same job, even across kills).
            let key = rng
                .random_bool(1.0 / 3.0)
                .then(|| format!("crash-{lane}-{}", rng.random_range(0..=i / 2)));
            // A repeat of a key sends the same body (another body would be a 409).
            let n = key
                .as_deref()
                .map_or(n, |k| 3 + crate::support::keyed_draw(k, 3) as usize);
            (n, key, rng.random_range(5..=25u64))
        };
        subs.attempts.fetch_add(1, Ordering::SeqCst);
        submit_one(
            client,
            subs,
            url,
            &job_body(stub_url, n, key.as_deref()),
            key,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn submit_one(
    client: &reqwest::Client,
    subs: &Submissions,
    url: &str,
    body: &Value,
    key: Option<String>,
) {
    let resp = match client
        .post(format!("{url}/v1/jobs"))
        .json(body)
        .send()
        .await
    {
        Ok(r) => r,
        // The node is down (killed, restarting): not acknowledged.
        Err(_) => {
            subs.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let code = resp.status().as_u16();
    let text = match resp.text().await {
        Ok(t) => t,
        // The reply was cut by a kill: not acknowledged.
        Err(_) => {
            subs.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    if code != 200 && code != 201 {
        subs.unexpected
            .lock()
            .unwrap()
            .push(format!("{code}: {text}"));
        return;
    }
    let job_id = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["job_id"].as_str().map(str::to_owned));
    match job_id {
        Some(job_id) => subs.acked.lock().unwrap().push(Ack {
            job_id,
            idempotency_key: key,
            code,
        }),
        None => subs
            .unexpected
            .lock()
            .unwrap()
            .push(format!("{code} without a job_id: {text}")),
    }
}

/// Everything the final incarnation reports about one job.
struct JobReport {
    status: String,
    steps: Vec<(String, String, Option<String>)>,
    events: Result<Vec<RecordedEvent>, String>,
}

async fn fetch_report(client: &reqwest::Client, base: &str, id: &str) -> Result<JobReport, String> {
    let (code, job) = get_json(client, format!("{base}/v1/jobs/{id}")).await?;
    if code != 200 {
        return Err(format!("GET /v1/jobs/{id} answered {code}: {job}"));
    }
    let steps = job["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_string(),
                        s["status"].as_str().unwrap_or_default().to_string(),
                        s["invocation_key"].as_str().map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut events: Vec<RecordedEvent> = Vec::new();
    let events = loop {
        let after = events.last().map(|e| e.seq).unwrap_or(0);
        let url = format!("{base}/v1/jobs/{id}/events?after={after}&limit=1000");
        let page = match get_json(client, url).await {
            Ok((200, page)) => page,
            Ok((code, body)) => break Err(format!("events answered {code}: {body}")),
            Err(e) => break Err(e),
        };
        let batch: Vec<RecordedEvent> = match serde_json::from_value(page["events"].clone()) {
            Ok(b) => b,
            Err(e) => break Err(format!("events do not parse as RecordedEvent: {e}")),
        };
        if batch.is_empty() {
            break Ok(events);
        }
        events.extend(batch);
    };
    Ok(JobReport {
        status: job["status"].as_str().unwrap_or_default().to_string(),
        steps,
        events,
    })
}

fn kills_wanted() -> usize {
    std::env::var("AETHERIS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_KILLS)
}

/// Lists every job the store holds (acknowledged or not), following the cursor.
fn list_all_jobs(node: &Node) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=1000&cursor={c}"),
            None => "/v1/jobs?limit=1000".to_string(),
        };
        let (code, page) = node.get_json(&path)?;
        if code != 200 {
            return Err(format!("GET {path} answered {code}: {page}"));
        }
        for j in page["jobs"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = j["job_id"].as_str() {
                ids.push(id.to_string());
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(ids),
        }
    }
}

/// Fails the test with every violation found and the tail of the node log; the data dir
/// is kept for inspection.
fn fail(violations: &[String], node: &Node, dir: tempfile::TempDir) -> ! {
    let kept = dir.keep();
    let shown: Vec<&String> = violations.iter().take(40).collect();
    panic!(
        "crash test found {} violation(s):\n  {}\n{}\n--- node log tail ({}) ---\n{}\n(data dir kept at {})",
        violations.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        if violations.len() > shown.len() { "  …" } else { "" },
        node.log.display(),
        node.log_tail(60),
        kept.display(),
    );
}

#[test]
fn sigkill_at_random_points_never_duplicates_or_loses() {
    let t_start = Instant::now();
    let kills = kills_wanted();
    // Default 20 kills fit in well under a minute; each kill cycle takes ~0.3 s plus startup.
    let kill_budget = Duration::from_secs(40).max(Duration::from_millis(kills as u64 * 2_000));
    let stub = Stub::start();
    let dir = tempfile::Builder::new()
        .prefix("aetheris-crash-")
        .tempdir()
        .expect("tempdir");
    let mut node = Node::new(dir.path());
    let subs = Arc::new(Submissions::default());
    let submitter = start_submitter(node.url(), stub.url.clone(), 3, subs.clone());

    let mut violations: Vec<String> = Vec::new();
    let mut startups: Vec<Duration> = Vec::new();
    let mut rng = rand::rng();
    for k in 0..kills {
        if t_start.elapsed() > kill_budget {
            violations.push(format!(
                "only {k} of {kills} kills done within {kill_budget:?} (startups too slow?)"
            ));
            break;
        }
        // Most kills land 30–400 ms after the node is ready, while jobs are mid-flight.
        // Every fourth lands 0–60 ms after the spawn instead: during startup, store
        // recovery, the first claims and the recovery appends of the jobs it inherits.
        if k % 4 == 3 {
            node.spawn();
            thread::sleep(Duration::from_millis(rng.random_range(0..=60)));
        } else {
            match node.start() {
                Ok(d) => startups.push(d),
                Err(e) => {
                    violations.push(format!("kill {k}: {e}"));
                    break;
                }
            }
            thread::sleep(Duration::from_millis(rng.random_range(30..=400)));
        }
        node.kill();
    }

    // Final incarnation: stop submitting, let everything settle.
    subs.stop.store(true, Ordering::SeqCst);
    submitter.join().expect("submitter thread panicked");
    if let Err(e) = node.start() {
        violations.push(format!("final start: {e}"));
        fail(&violations, &node, dir);
    }
    let acked: Vec<Ack> = subs.acked.lock().unwrap().clone();
    let unexpected: Vec<String> = subs.unexpected.lock().unwrap().clone();
    for u in unexpected.iter().take(10) {
        violations.push(format!("submission answered unexpectedly: {u}"));
    }

    // G1 and idempotency: every acknowledged job exists; one key, one job.
    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in &acked {
        if let Some(k) = &a.idempotency_key {
            by_key.entry(k).or_default().insert(&a.job_id);
        }
    }
    for (k, ids) in &by_key {
        if ids.len() > 1 {
            violations.push(format!(
                "idempotency key {k:?} acknowledged with different jobs: {ids:?}"
            ));
        }
    }
    let stored = match list_all_jobs(&node) {
        Ok(ids) => ids,
        Err(e) => {
            violations.push(format!("listing jobs: {e}"));
            fail(&violations, &node, dir);
        }
    };
    let stored_set: BTreeSet<&str> = stored.iter().map(String::as_str).collect();
    let acked_set: BTreeSet<&str> = acked.iter().map(|a| a.job_id.as_str()).collect();
    for id in &acked_set {
        if !stored_set.contains(id) {
            violations.push(format!("G1: acknowledged job {id} is not in the job list"));
        }
    }
    // Jobs stored but never acknowledged (the reply was cut by a kill) are checked too.
    let all: Vec<String> = acked_set
        .union(&stored_set)
        .map(|s| s.to_string())
        .collect();

    // G4: wait (bounded) until every job is succeeded or waiting.
    let settle_budget = Duration::from_secs(30).max(Duration::from_millis(all.len() as u64 * 5));
    let settle_deadline = Instant::now() + settle_budget;
    let base = node.url();
    let mut reports: HashMap<String, JobReport> = HashMap::new();
    let mut pending: Vec<String> = all.clone();
    loop {
        let client = node.client.clone();
        let fetched: Vec<(String, Result<JobReport, String>)> = node.rt.block_on(
            stream::iter(pending.clone())
                .map(|id| {
                    let (client, base) = (client.clone(), base.clone());
                    async move {
                        let r = fetch_report(&client, &base, &id).await;
                        (id, r)
                    }
                })
                .buffer_unordered(16)
                .collect(),
        );
        pending.clear();
        let mut errors = Vec::new();
        for (id, r) in fetched {
            match r {
                Ok(rep) => {
                    if !matches!(rep.status.as_str(), "succeeded" | "waiting" | "failed") {
                        pending.push(id.clone());
                    }
                    reports.insert(id, rep);
                }
                Err(e) => {
                    pending.push(id.clone());
                    errors.push(e);
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > settle_deadline {
            for id in pending.iter().take(20) {
                match reports.get(id) {
                    Some(r) => violations.push(format!(
                        "G4: job {id} still {} after {settle_budget:?}: steps {:?}",
                        r.status, r.steps
                    )),
                    None => violations.push(format!("G1: job {id} cannot be read")),
                }
            }
            for e in errors.iter().take(5) {
                violations.push(e.clone());
            }
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }

    // Final checks.
    let seen = stub.seen.snapshot();
    let mut owner: HashMap<&str, (&str, &str)> = HashMap::new();
    let (mut succeeded, mut waiting, mut unknown_steps) = (0usize, 0usize, 0usize);
    let (mut unknown_sent, mut unknown_not_sent) = (0usize, 0usize);
    for id in &all {
        let Some(rep) = reports.get(id) else {
            continue;
        };
        for (step, _, key) in &rep.steps {
            if let Some(key) = key {
                owner.insert(key.as_str(), (id.as_str(), step.as_str()));
            }
        }
        match rep.status.as_str() {
            "succeeded" => {
                succeeded += 1;
                for (step, status, key) in &rep.steps {
                    let n = key.as_ref().map(|k| seen.get(k).map_or(0, Vec::len));
                    if status != "succeeded" || n != Some(1) {
                        violations.push(format!(
                            "succeeded job {id}: step {step} is {status} and the stub saw its key {n:?} times (want 1)"
                        ));
                    }
                }
            }
            "waiting" => {
                waiting += 1;
                let u = rep
                    .steps
                    .iter()
                    .filter(|(_, s, _)| s == "outcome_unknown")
                    .count();
                unknown_steps += u;
                if u == 0 {
                    violations.push(format!(
                        "job {id} is waiting without an outcome_unknown step: {:?}",
                        rep.steps
                    ));
                }
                // Before the unknown step: effects done exactly once; the unknown one: done
                // at most once (either is allowed); after it: nothing started.
                for (step, status, key) in &rep.steps {
                    let n = key.as_ref().map_or(0, |k| seen.get(k).map_or(0, Vec::len));
                    match status.as_str() {
                        "succeeded" if n == 1 => {}
                        "outcome_unknown" if n == 0 => unknown_not_sent += 1,
                        "outcome_unknown" if n == 1 => unknown_sent += 1,
                        "pending" if n == 0 => {}
                        _ => violations.push(format!(
                            "waiting job {id}: step {step} is {status} and the stub saw its key {n} times"
                        )),
                    }
                }
            }
            other => {
                if !pending.contains(id) {
                    violations.push(format!(
                        "job {id} ended {other} (want succeeded or waiting): {:?}",
                        rep.steps
                    ));
                }
            }
        }
        match (&rep.events, id.parse::<JobId>()) {
            (Ok(events), Ok(job)) => {
                if let Err(e) = aetheris_proof::verify_chain(job, events) {
                    violations.push(format!("G7: chain of job {id} does not verify: {e:?}"));
                }
            }
            (Err(e), _) => violations.push(format!("events of job {id}: {e}")),
            (_, Err(e)) => violations.push(format!("job id {id:?} does not parse: {e}")),
        }
    }
    // G2: no invocation key reached the stub twice; every key belongs to a known step.
    let mut dups: Vec<(&String, &Vec<Option<u64>>)> =
        seen.iter().filter(|(_, v)| v.len() > 1).collect();
    dups.sort();
    // Listed first: they are what this test exists to catch.
    for (i, (key, tokens)) in dups.iter().enumerate() {
        violations.insert(i, format!(
            "G2: invocation key {key} reached the stub {} times (fencing tokens {tokens:?}), job/step {:?}",
            tokens.len(),
            owner.get(key.as_str())
        ));
    }
    for key in seen.keys() {
        if !owner.contains_key(key.as_str()) {
            violations.push(format!(
                "the stub saw key {key}, which belongs to no stored job's step"
            ));
        }
    }
    let keyless = stub.seen.keyless.load(Ordering::SeqCst);
    if keyless > 0 {
        violations.push(format!(
            "{keyless} stub calls came without an Idempotency-Key"
        ));
    }

    let calls = stub.seen.calls.load(Ordering::SeqCst);
    let startup_ms: Vec<u128> = {
        let mut v: Vec<u128> = startups.iter().map(|d| d.as_millis()).collect();
        v.sort_unstable();
        v
    };
    let replays = acked.iter().filter(|a| a.code == 200).count();
    println!(
        "crash test: {} jobs acknowledged ({} submissions, {} refused or cut by a kill, {replays} idempotent repeats, {} stored incl. unacknowledged), \
         {kills} kills ({} incarnations), {succeeded} succeeded, {waiting} waiting \
         ({unknown_steps} outcome_unknown steps: {unknown_sent} reached the stub, {unknown_not_sent} did not), {calls} stub calls over {} keys, \
         {} duplicate keys; startup median {} ms; {:.1} s",
        acked_set.len(),
        subs.attempts.load(Ordering::SeqCst),
        subs.refused.load(Ordering::SeqCst),
        stored.len(),
        node.incarnations,
        seen.len(),
        dups.len(),
        startup_ms.get(startup_ms.len() / 2).copied().unwrap_or(0),
        t_start.elapsed().as_secs_f64(),
    );
    if acked_set.is_empty() {
        violations.push("no job was ever acknowledged: the test exercised nothing".into());
    }
    if !violations.is_empty() {
        fail(&violations, &node, dir);
    }
    node.kill();
}

#[test]
fn repeated_idempotency_key_across_a_kill_returns_the_same_job() {
    let stub = Stub::start();
    let dir = tempfile::Builder::new()
        .prefix("aetheris-crash-idem-")
        .tempdir()
        .expect("tempdir");
    let mut node = Node::new(dir.path());
    let key = format!("crash-idem-{}", uuid::Uuid::now_v7());
    let body = job_body(&stub.url, 3, Some(&key));
    let submit = |node: &Node| -> Result<(u16, Value), String> {
        let url = format!("{}/v1/jobs", node.url());
        let client = &node.client;
        node.rt.block_on(async {
            let resp = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let code = resp.status().as_u16();
            let v = resp.json::<Value>().await.map_err(|e| e.to_string())?;
            Ok((code, v))
        })
    };
    let check = |ok: bool, what: String, node: &Node| {
        if !ok {
            panic!("{what}\n--- node log tail ---\n{}", node.log_tail(40));
        }
    };

    node.start().expect("first start");
    let (code, first) = submit(&node).expect("first submission");
    check(
        code == 201,
        format!("first submission answered {code}: {first}"),
        &node,
    );
    let job_id = first["job_id"].as_str().unwrap_or_default().to_string();
    node.kill();

    node.start().expect("restart after SIGKILL");
    let (code, again) = submit(&node).expect("repeated submission");
    check(
        code == 200,
        format!("repeat after the kill answered {code} (want 200): {again}"),
        &node,
    );
    check(
        again["job_id"] == first["job_id"],
        format!(
            "repeat returned job {} instead of {job_id}",
            again["job_id"]
        ),
        &node,
    );
    let (code, got) = node
        .get_json(&format!("/v1/jobs/{job_id}"))
        .expect("GET job");
    check(
        code == 200,
        format!("GET job answered {code}: {got}"),
        &node,
    );

    // The job still runs to an allowed end (its lease from the killed incarnation expires
    // after the TTL) and no effect happened twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (_, got) = node
            .get_json(&format!("/v1/jobs/{job_id}"))
            .expect("GET job");
        let status = got["status"].as_str().unwrap_or_default().to_string();
        if matches!(status.as_str(), "succeeded" | "waiting" | "failed")
            || Instant::now() > deadline
        {
            break status;
        }
        thread::sleep(Duration::from_millis(50));
    };
    check(
        matches!(status.as_str(), "succeeded" | "waiting"),
        format!("job {job_id} ended {status}"),
        &node,
    );
    let dups: Vec<(String, usize)> = stub
        .seen
        .snapshot()
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| (k, v.len()))
        .collect();
    check(
        dups.is_empty(),
        format!("duplicate effects: {dups:?}"),
        &node,
    );
    node.kill();
}
