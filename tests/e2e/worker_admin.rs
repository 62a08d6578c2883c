//! `aetheris worker`'s admin listener, as an operator meets it: a real worker process and a
//! real server process on a throwaway PostgreSQL database. Jobs submitted through the
//! server run on the worker — echo steps that succeed, and an http call to a listener that
//! never answers, which times out as `outcome_unknown` — and the worker's own `/metrics`
//! (on `--admin-bind`) then shows what it did: the step latency histogram, ledger outcomes
//! incl. `outcome_unknown`, lease grants, and the supervision series (actors alive, restarts
//! at zero). `/healthz` and `/readyz` answer 200, and SIGTERM drains the worker to a clean
//! exit. (A taken admin port is one of the start-up failures of startup.rs.)

use crate::readme::free_port;
use crate::support::{rt, sample};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A child `aetheris` process logging to a file; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
        cmd.args(args)
            .env("NO_COLOR", "1")
            .env("AETHERIS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, _) in std::env::vars() {
            if k.starts_with("AETHERIS_") && k != "AETHERIS_LOG" {
                cmd.env_remove(k);
            }
        }
        Proc {
            child: cmd.spawn().expect("spawn the aetheris binary"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for a log line with `prefix` and returns the rest of it.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(rest) = self
                .log_text()
                .lines()
                .find_map(|l| l.find(prefix).map(|i| l[i + prefix.len()..].to_string()))
            {
                return rest;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before {prefix:?}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts connections and never answers (an effect whose outcome the
/// caller cannot learn); stopped when dropped.
struct Silent {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                held.extend(conn.ok());
            }
        });
        Silent {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// Polls a job until its status is one of `done` (bounded).
async fn until(c: &reqwest::Client, base: &str, id: &str, done: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(c, &format!("{base}/v1/jobs/{id}")).await;
        let job: Value = serde_json::from_str(&text).expect("job json");
        if done.iter().any(|s| job["status"] == *s) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} stuck: {job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn a_worker_process_serves_health_readiness_and_its_own_metrics() {
    let db = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let base = format!("http://{bind}");
    let server = Proc::spawn(
        dir.path(),
        "server",
        &[
            "server",
            "--insecure-no-auth",
            "--database-url",
            &db,
            "--bind",
            &bind,
        ],
    );
    let mut worker = Proc::spawn(
        dir.path(),
        "worker",
        &[
            "worker",
            "--database-url",
            &db,
            "--admin-bind",
            "127.0.0.1:0",
        ],
    );
    let admin_addr = worker.wait_line(": admin on http://");
    let admin = format!(
        "http://{}",
        admin_addr.split_whitespace().next().expect("admin address")
    );
    worker.wait_line(": running");
    let silent = Silent::start();
    rt().block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(c.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().is_success())
        {
            assert!(Instant::now() < deadline, "server not ready:\n{}", server.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let submit = |body: Value| {
            let (c, url) = (c.clone(), format!("{base}/v1/jobs"));
            async move {
                let r = c.post(url).json(&body).send().await.expect("submit");
                assert_eq!(r.status().as_u16(), 201);
                let j: Value = r.json().await.expect("json");
                j["job_id"].as_str().expect("job id").to_string()
            }
        };
        let mut echo_jobs = Vec::new();
        for i in 0..3 {
            echo_jobs.push(
                submit(json!({"input": {"i": i}, "plan": {"steps": [
                    {"id": "a", "tool": "echo", "args": {"i": "${input.i}"}},
                    {"id": "b", "tool": "echo", "needs": ["a"], "args": {"again": "${steps.a.output.i}"}}
                ]}}))
                .await,
            );
        }
        let unknown = submit(json!({"plan": {"steps": [
            {"id": "pay", "tool": "http", "timeout": "300ms",
             "args": {"method": "POST", "url": format!("http://{}/pay", silent.addr)}}
        ]}}))
        .await;
        for id in &echo_jobs {
            let j = until(&c, &base, id, &["succeeded", "failed"]).await;
            assert_eq!(j["status"], "succeeded", "{j}");
        }
        let j = until(&c, &base, &unknown, &["waiting", "failed", "succeeded"]).await;
        assert_eq!(j["steps"][0]["status"], "outcome_unknown", "{j}");

        assert_eq!(get(&c, &format!("{admin}/healthz")).await.0, 200);
        let (status, ready) = get(&c, &format!("{admin}/readyz")).await;
        assert_eq!((status, ready.as_str()), (200, r#"{"status":"ready"}"#));
        let (status, m) = get(&c, &format!("{admin}/metrics")).await;
        assert_eq!(status, 200, "no authentication on the admin port");
        let has = |series: &str| sample(&m, series).unwrap_or(-1.0);
        assert!(
            m.contains("aetheris_step_duration_seconds_bucket{tool=\"echo\",le=\"0.001\"}"),
            "step latency histogram: {m}"
        );
        assert!(has("aetheris_ledger_outcomes_total{outcome=\"succeeded\"}") >= 6.0, "{m}");
        assert!(has("aetheris_ledger_outcomes_total{outcome=\"outcome_unknown\"}") >= 1.0, "{m}");
        assert!(
            has("aetheris_tool_calls_total{tool=\"http\",outcome=\"outcome_unknown\"}") >= 1.0,
            "{m}"
        );
        assert!(has("aetheris_lease_grants_total") >= 4.0, "{m}");
        assert_eq!(has("aetheris_actors{kind=\"lease_manager\"}"), 1.0, "{m}");
        assert_eq!(has("aetheris_actors{kind=\"registry\"}"), 1.0, "{m}");
        assert_eq!(
            has("aetheris_actor_restarts_total{kind=\"job\",reason=\"panic\"}"),
            0.0,
            "the supervision series are there from the start: {m}"
        );
        for name in m.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()) {
            assert!(m.contains(&format!("# HELP {name} ")), "{name} has no help: {m}");
        }
        assert!(
            !m.contains("aetheris_jobs{"),
            "jobs by state are the gateways' to report: {m}"
        );
    });
    assert!(worker.terminate().success(), "{}", worker.log_text());
    assert!(
        worker.log_text().contains("aetheris worker: draining"),
        "{}",
        worker.log_text()
    );
}
