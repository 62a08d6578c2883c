//! The `hostile` workload of `aetheris bench` (`--workloads hostile`): what hostile plan
//! submissions cost a node's front door. Against an in-process dev node — the embedded
//! store on a fresh temporary file, the gateway on 127.0.0.1:0 with the default node
//! settings (body limits, plan caps, validation off the HTTP workers) and its worker, no
//! authentication — it measures over HTTP with a real client, in this order:
//! 1. `/healthz` latency of requests made back to back on one kept-alive connection, for
//!    `--hostile-phase-ms` on the idle node;
//! 2. the same while `--hostile-in-flight` hostile ~1 MiB submissions are in flight at
//!    once (each submitter sends its next as soon as the previous is answered, from a
//!    thread of its own so the prober's timings are not the load generator's), and the
//!    ratio of the two;
//! 3. the answer time of a ~1 MiB hostile plan (`hostile_dense_plan(500, 500)`: every step
//!    needs every earlier one, over the plan caps, answered 422), one at a time,
//!    `--hostile-runs` times: p50, p99, max;
//! 4. the same for the largest legal plan (`max_legal_dense_plan()`: 1000 steps, ~1 MiB,
//!    answered 201); the jobs it creates run on the node's worker meanwhile.
//!
//! Only step 4 creates jobs, so the `/healthz` phases see no job work. The workload runs
//! once (not `--runs` times): its figures are percentiles over many requests.

use crate::report::{HostileReport, Latency, SubmissionTiming};
use crate::runner::{ms, pct, progress, progress_done, sorted};
use aetheris_actors::ToolRegistry;
use aetheris_api::{start_node, NodeConfig};
use aetheris_runtime::testkit;
use aetheris_store::{DynStore, RedbStore};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hostile plan's shape: 500 steps, each needing all earlier ones.
const HOSTILE_STEPS: usize = 500;
/// Requests made before any measurement (connection set-up, first-use paths).
const WARM_UP_REQUESTS: usize = 20;
/// How long the node and the load may take to start or stop.
const START_WITHIN: Duration = Duration::from_secs(60);

/// The workload's settings.
#[derive(Clone, Copy, Debug)]
pub struct HostileCfg {
    /// Submissions of each plan timed one at a time.
    pub runs: usize,
    /// Hostile submissions in flight at once during the loaded `/healthz` phase.
    pub in_flight: usize,
    /// Length of each `/healthz` phase.
    pub phase: Duration,
}

/// Starts a node, measures, stops the node.
pub fn run(cfg: HostileCfg) -> Result<HostileReport, String> {
    progress("hostile: starting a dev node…");
    let node = Node::start()?;
    let measured = measure(&node.url, cfg);
    let stopped = node.stop();
    progress_done();
    let report = measured?;
    stopped?;
    Ok(report)
}

/// The request bodies, built once.
struct Bodies {
    hostile: Vec<u8>,
    legal: Vec<u8>,
}

fn measure(url: &str, cfg: HostileCfg) -> Result<HostileReport, String> {
    let bodies = Bodies {
        hostile: testkit::submission(&testkit::hostile_dense_plan(HOSTILE_STEPS, HOSTILE_STEPS)),
        legal: testkit::submission(&testkit::max_legal_dense_plan()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("hostile: client runtime: {e}"))?;
    rt.block_on(measure_on(url, cfg, bodies))
}

async fn measure_on(url: &str, cfg: HostileCfg, bodies: Bodies) -> Result<HostileReport, String> {
    let client = Client::new(url)?;
    for _ in 0..WARM_UP_REQUESTS {
        client.healthz().await?;
    }
    client.submit(&bodies.hostile, 422).await?;
    progress("hostile: /healthz on the idle node…");
    let idle = healthz_phase(&client, cfg.phase).await?;
    progress("hostile: /healthz under hostile submissions…");
    let load = Load::start(url, bodies.hostile.clone(), cfg.in_flight)?;
    load.wait_all_sent().await?;
    let loaded = healthz_phase(&client, cfg.phase).await;
    let answers = load.stop();
    let (loaded, answers) = (loaded?, answers?);
    progress("hostile: timing hostile submissions…");
    let hostile = time_submissions(&client, &bodies.hostile, 422, cfg.runs).await?;
    progress("hostile: timing legal submissions…");
    let legal = time_submissions(&client, &bodies.legal, 201, cfg.runs).await?;
    Ok(HostileReport {
        hostile_plan: timing(
            format!("hostile_dense_plan({HOSTILE_STEPS}, {HOSTILE_STEPS})"),
            &bodies.hostile,
            422,
            hostile,
        ),
        legal_plan: timing("max_legal_dense_plan()".into(), &bodies.legal, 201, legal),
        healthz_p50_ratio: ratio(pct(&loaded, 0.5), pct(&idle, 0.5)),
        healthz_p99_ratio: ratio(pct(&loaded, 0.99), pct(&idle, 0.99)),
        healthz_idle: latency(&idle),
        healthz_under_hostile: latency(&loaded),
        hostile_in_flight: cfg.in_flight,
        hostile_answers: answers,
        phase_ms: cfg.phase.as_millis() as u64,
    })
}

/// `a / b`, with `b` never taken below a microsecond.
fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(0.001)
}

fn latency(sorted_ms: &[f64]) -> Latency {
    Latency {
        requests: sorted_ms.len(),
        p50_ms: pct(sorted_ms, 0.5),
        p99_ms: pct(sorted_ms, 0.99),
        max_ms: sorted_ms.last().copied().unwrap_or(0.0),
    }
}

fn timing(plan: String, body: &[u8], status: u16, sorted_ms: Vec<f64>) -> SubmissionTiming {
    SubmissionTiming {
        plan,
        body_bytes: body.len(),
        status,
        samples: sorted_ms.len(),
        p50_ms: pct(&sorted_ms, 0.5),
        p99_ms: pct(&sorted_ms, 0.99),
        max_ms: sorted_ms.last().copied().unwrap_or(0.0),
    }
}

/// `/healthz` back to back for `phase`; the round trips (ms), sorted.
async fn healthz_phase(client: &Client, phase: Duration) -> Result<Vec<f64>, String> {
    let end = Instant::now() + phase;
    let mut samples = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        client.healthz().await?;
        samples.push(ms(t.elapsed()));
    }
    Ok(sorted(samples))
}

/// `runs` submissions of `body`, one at a time, each answered `expect`; round trips (ms),
/// sorted.
async fn time_submissions(
    client: &Client,
    body: &[u8],
    expect: u16,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let body = body.to_vec();
        let t = Instant::now();
        client.submit(&body, expect).await?;
        samples.push(ms(t.elapsed()));
    }
    Ok(sorted(samples))
}

/// An HTTP client of the node (kept-alive connections).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    healthz: String,
    jobs: String,
}

impl Client {
    fn new(url: &str) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("hostile: HTTP client: {e}"))?;
        Ok(Client {
            http,
            healthz: format!("{url}/healthz"),
            jobs: format!("{url}/v1/jobs"),
        })
    }

    async fn healthz(&self) -> Result<(), String> {
        let resp = self
            .http
            .get(&self.healthz)
            .send()
            .await
            .map_err(|e| format!("hostile: GET /healthz: {e}"))?;
        let status = resp.status();
        resp.bytes()
            .await
            .map_err(|e| format!("hostile: reading /healthz: {e}"))?;
        if !status.is_success() {
            return Err(format!("hostile: /healthz answered {status}"));
        }
        Ok(())
    }

    /// POSTs `body` as a job submission and returns the status, after reading the answer.
    async fn post(&self, body: Vec<u8>) -> Result<(u16, String), String> {
        let resp = self
            .http
            .post(&self.jobs)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("hostile: POST /v1/jobs: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("hostile: reading the submission answer: {e}"))?;
        Ok((status, text))
    }

    /// Submits `body` and requires the status `expect`.
    async fn submit(&self, body: &[u8], expect: u16) -> Result<(), String> {
        let (status, text) = self.post(body.to_vec()).await?;
        if status != expect {
            let text: String = text.chars().take(300).collect();
            return Err(format!(
                "hostile: a submission was answered {status}, expected {expect}: {text}"
            ));
        }
        Ok(())
    }
}

/// Hostile submissions kept in flight from a thread of its own until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Submitters whose first submission was answered (so their next is in flight).
    sent: Arc<AtomicUsize>,
    in_flight: usize,
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Load {
    fn start(url: &str, body: Vec<u8>, in_flight: usize) -> Result<Load, String> {
        let client = Client::new(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let answers: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
        let (s, n, a) = (stop.clone(), sent.clone(), answers.clone());
        let thread = std::thread::Builder::new()
            .name("hostile-load".into())
            .spawn(move || load_thread(client, body, in_flight, s, n, a))
            .map_err(|e| format!("hostile: load thread: {e}"))?;
        Ok(Load {
            stop,
            sent,
            in_flight,
            answers,
            thread,
        })
    }

    /// Waits until every submitter has had an answer (and sent its next), so the
    /// measurement sees the full load from its first request.
    async fn wait_all_sent(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_WITHIN;
        while self.sent.load(Ordering::Relaxed) < self.in_flight {
            if Instant::now() > deadline || self.thread.is_finished() {
                return Err("hostile: the submitters did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Stops the submitters (each finishes its submission in flight) and returns the
    /// answers they got, by status.
    fn stop(self) -> Result<BTreeMap<u16, usize>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "hostile: the load thread panicked".to_string())??;
        let answers = self.answers.lock().map(|a| a.clone()).unwrap_or_default();
        Ok(answers)
    }
}

fn load_thread(
    client: Client,
    body: Vec<u8>,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("hostile: load runtime: {e}"))?;
    rt.block_on(async move {
        let submitters: Vec<_> = (0..in_flight)
            .map(|_| {
                let (client, body, stop, sent, answers) = (
                    client.clone(),
                    body.clone(),
                    stop.clone(),
                    sent.clone(),
                    answers.clone(),
                );
                tokio::spawn(submitter(client, body, stop, sent, answers))
            })
            .collect();
        for s in submitters {
            s.await.map_err(|e| format!("hostile: submitter: {e}"))??;
        }
        Ok(())
    })
}

/// Submits `body` again and again until `stop`, counting the answers by status.
async fn submitter(
    client: Client,
    body: Vec<u8>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
) -> Result<(), String> {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let (status, _) = client.post(body.clone()).await?;
        if std::mem::take(&mut first) {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut a) = answers.lock() {
            *a.entry(status).or_default() += 1;
        }
    }
    Ok(())
}

/// A dev node on its own actix system thread: embedded store in a temporary directory,
/// gateway on a free loopback port, its worker, no authentication.
struct Node {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Result<Node, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let store: DynStore =
            Arc::new(RedbStore::open(&dir.path().join("hostile.redb")).map_err(|e| e.to_string())?);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hostile-node".into())
            .spawn(move || actix_rt::System::new().block_on(serve(store, addr_tx, stopped)))
            .map_err(|e| format!("hostile: node thread: {e}"))?;
        let url = match addr_rx.recv_timeout(START_WITHIN) {
            Ok(Ok(addr)) => format!("http://{addr}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(match thread.join() {
                    Ok(Err(e)) => e,
                    _ => "hostile: the node did not start".to_string(),
                })
            }
        };
        Ok(Node {
            url,
            stop,
            thread,
            _dir: dir,
        })
    }

    /// Drains the worker, stops the gateway, waits for the node's thread.
    fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| "hostile: the node thread panicked".to_string())?
    }
}

/// The node's life on its system: start, report the address, serve until told to stop.
async fn serve(
    store: DynStore,
    addr: std::sync::mpsc::Sender<Result<std::net::SocketAddr, String>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), String> {
    // Tenant `default`, which every caller of a node without authentication acts for.
    store
        .create_tenant("default", "default", serde_json::json!({}), None)
        .await
        .map_err(|e| format!("hostile: creating tenant default: {e}"))?;
    let cfg = NodeConfig {
        bind: "127.0.0.1:0".into(),
        auth: None,
        ..NodeConfig::default()
    };
    let (node, server) = match start_node(store, ToolRegistry::with_builtins(), cfg).await {
        Ok(n) => n,
        Err(e) => {
            let msg = format!("hostile: the node cannot listen: {e}");
            let _ = addr.send(Err(msg.clone()));
            return Err(msg);
        }
    };
    let _ = addr.send(Ok(node.addr));
    let server = actix_rt::spawn(server);
    let _ = stopped.await;
    node.shutdown(Duration::from_secs(2)).await;
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_sorted_samples() {
        let s = sorted(vec![3.0, 1.0, 2.0, 10.0]);
        let l = latency(&s);
        assert_eq!((l.requests, l.p50_ms, l.max_ms), (4, 3.0, 10.0));
        let t = timing("p".into(), &[0; 7], 422, s);
        assert_eq!((t.body_bytes, t.samples, t.p99_ms), (7, 4, 10.0));
        assert_eq!(ratio(2.0, 0.5), 4.0);
        assert!(ratio(1.0, 0.0).is_finite());
    }
}
