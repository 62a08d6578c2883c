//! Operations: the supervision view, the Grafana dashboard and the Prometheus alert rules.
//!
//! - `status_shows_every_process_its_actors_and_a_restarted_job_actor`: on one PostgreSQL
//!   database, the real `aetheris server` and `aetheris worker` binaries and an in-process
//!   node (gateway and worker) with a tool that panics once. `aetheris status --json` (the
//!   binary, against the server) lists all four processes with their actors by kind; the
//!   in-process worker's job actor shows the restart with its reason (`tool_panic`) and its
//!   tool actors the panic with what it said. After the in-process node drains it is gone;
//!   after the worker binary is SIGKILLed it shows as not announcing, in the view and as
//!   `aetheris_process_up 0`. In between, jobs run through the binaries under rate limits,
//!   and every metric the dashboard queries is found in a real scrape of the gateway and of
//!   the worker's admin listener.
//! - The files: every metric named in deploy/prometheus/alerts.yml and in
//!   deploy/grafana/aetheris.json is declared in `aetheris_actors::metrics` (so neither can
//!   drift from the code), every alert has a runbook in docs/operations.md and unit tests
//!   in alerts_test.yml on which it fires and on which it does not.

use crate::support::{rt, sample, settle, submit, TestNode};
use aetheris_actors::metrics::{definition, Kind};
use aetheris_actors::{Invocation, Tool, ToolError, WorkerConfig};
use aetheris_runtime::EffectClass;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `aetheris_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("aetheris_") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if boundary {
            out.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    out
}

/// The declared metric a queried name is: itself, or the histogram whose
/// `_bucket`/`_sum`/`_count` series it is.
fn declared(name: &str) -> Option<&'static str> {
    if let Some(d) = definition(name) {
        return Some(d.name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let d = definition(name.strip_suffix(suffix)?)?;
        (d.kind == Kind::Histogram).then_some(d.name)
    })
}

/// Every PromQL expression of the dashboard (panels' targets and the variables' queries).
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/aetheris.json")).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dash, &mut out);
    out
}

fn dashboard_metrics() -> BTreeSet<String> {
    dashboard_queries()
        .iter()
        .flat_map(|q| metric_names(q))
        .collect()
}

/// The alert names of alerts.yml, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_use_only_declared_metrics_and_there_are_enough() {
    let rules = read("deploy/prometheus/alerts.yml");
    let names = metric_names(&rules);
    assert!(names.len() >= 20, "{names:?}");
    let unknown: Vec<&String> = names.iter().filter(|n| declared(n).is_none()).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml names metrics that actors/src/metrics.rs does not declare: {unknown:?}"
    );
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 18, "{} rules", alerts.len());
    let unique: BTreeSet<&String> = alerts.iter().collect();
    assert_eq!(unique.len(), alerts.len(), "an alert name twice");
    // The metrics the retention, LLM and evidence alerts watch exist before their code
    // does its work: declared, with a help text.
    for name in [
        "aetheris_retention_gc_lag_seconds",
        "aetheris_retention_deleted_jobs_total",
        "aetheris_snapshot_failures_total",
        "aetheris_llm_budget_used_ratio",
        "aetheris_evidence_export_failures_total",
    ] {
        assert!(names.contains(name), "no alert on {name}");
        assert!(
            definition(name).is_some_and(|d| d.help.len() > 20),
            "{name}"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_and_tests_on_which_it_fires_and_does_not() {
    let rules = read("deploy/prometheus/alerts.yml");
    let runbooks = read("docs/operations.md");
    let tests = read("deploy/prometheus/alerts_test.yml");
    // alertname → (an eval expecting no alert, an eval expecting one).
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("alertname: ") else {
            continue;
        };
        let next = lines.get(i + 1).copied().unwrap_or("");
        let e = seen.entry(name.to_string()).or_default();
        match next {
            "exp_alerts: []" => e.0 = true,
            "exp_alerts:" => e.1 = true,
            other => panic!("alerts_test.yml: {name} is followed by {other:?}"),
        }
    }
    for name in alert_names(&rules) {
        assert!(
            runbooks.contains(&format!("\n### {name}\n")),
            "docs/operations.md has no runbook section `### {name}`"
        );
        let anchor = format!("docs/operations.md#{}", name.to_lowercase());
        assert!(
            rules.contains(&anchor),
            "{name}: its runbook annotation is not {anchor}"
        );
        let (quiet, fires) = seen.get(&name).copied().unwrap_or_default();
        assert!(
            quiet,
            "alerts_test.yml never checks that {name} stays quiet"
        );
        assert!(fires, "alerts_test.yml never checks that {name} fires");
    }
}

#[test]
fn the_dashboard_queries_only_declared_metrics_and_covers_each_topic() {
    let names = dashboard_metrics();
    let unknown: Vec<&String> = names.iter().filter(|n| declared(n).is_none()).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries undeclared metrics: {unknown:?}"
    );
    let text = read("deploy/grafana/aetheris.json");
    for topic in [
        "Jobs submitted",
        "Step latency by tool",
        "Queue wait by tenant",
        "Ledger outcomes",
        "Lease grants and losses",
        "Actors alive by kind",
        "Mailbox depth",
        "Restarts and panics",
        "Rejections",
        "Append latency",
    ] {
        assert!(
            text.contains(&format!("\"title\": \"{topic}\"")),
            "no panel {topic:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The supervision view end to end

/// Panics on the first call of each invocation key, then echoes its args.
struct PanicsOnce(Arc<Mutex<HashMap<String, u32>>>);

#[async_trait::async_trait]
impl Tool for PanicsOnce {
    fn effect(&self) -> EffectClass {
        EffectClass::Idempotent
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let n = {
            let mut seen = self.0.lock().unwrap();
            let n = seen.entry(call.invocation_key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 {
            panic!("deliberate panic in the supervision test");
        }
        Ok(json!({"calls": n}))
    }
}

/// A child `aetheris` process logging to a file; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_aetheris"))
            .args(args)
            .env("NO_COLOR", "1")
            .env("AETHERIS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn aetheris");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `aetheris status [--json]` against `server`: (exit ok, stdout, stderr).
fn status_cli(server: &str, json: bool) -> (bool, String, String) {
    let mut args = vec!["status", "--server", server];
    if json {
        args.push("--json");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args(&args)
        .env("NO_COLOR", "1")
        .env_remove("AETHERIS_TOKEN")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run aetheris status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `aetheris status --json`, parsed.
fn status_json(server: &str) -> Value {
    let (ok, stdout, stderr) = status_cli(server, true);
    assert!(ok, "aetheris status --json failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn process<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["processes"].as_array()?.iter().find(|p| p["id"] == id)
}

fn actor<'a>(p: &'a Value, kind: &str) -> &'a Value {
    p["actors"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} actors in {p}"))
}

/// Polls `aetheris status --json` until `ready` holds (bounded), returning the view.
fn status_until(server: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = status_json(server);
        if ready(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s:\n{view:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn get_text(c: &reqwest::Client, url: &str) -> String {
    c.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Submits `body`, waiting out the admission limit (429 + Retry-After) as a client would.
async fn submit_admitted(c: &reqwest::Client, url: &str, body: &Value) -> String {
    for _ in 0..100 {
        let (s, j) = submit(c, url, body).await;
        match s {
            201 => return j["job_id"].as_str().expect("job id").to_string(),
            429 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("submit answered {other}: {j}"),
        }
    }
    panic!("never admitted");
}

/// Whether a sample of `name` is in `text` (a `# HELP` line does not count).
fn has_sample(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn status_shows_every_process_its_actors_and_a_restarted_job_actor() {
    // It reads this process's supervision figures: alone in its process.
    crate::support::own_process!(status_shows_every_process_its_actors_and_a_restarted_job_actor);
    let db = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = dir.path().join("limits.json");
    std::fs::write(
        &limits,
        json!({"defaults": {"admissions_per_s": 2.0, "admission_burst": 4.0, "tool_calls_per_s": 10.0}})
            .to_string(),
    )
    .unwrap();
    let limits = limits.to_string_lossy().into_owned();
    let (port, admin_port) = (free_port(), free_port());
    let server_url = format!("http://127.0.0.1:{port}");
    let server = Proc::spawn(
        &[
            "server",
            "--insecure-no-auth",
            "--database-url",
            &db,
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--pool-size",
            "4",
            "--limits",
            &limits,
        ]
        .map(String::from),
        dir.path().join("server.log"),
    );
    let c = reqwest::Client::new();
    let runtime = rt();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(c.get(format!("{server_url}/readyz")).send().await, Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "server not ready: {}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // An in-process node whose worker runs a tool that panics once: its job actor is
    // restarted from storage and the job succeeds.
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s2 = seen.clone();
    let node = TestNode::start_pg_at(
        &db,
        move |tools| tools.register("panics_once", PanicsOnce(s2)),
        WorkerConfig {
            worker_id: "in-process-worker".into(),
            ..WorkerConfig::default()
        },
    );
    runtime.block_on(async {
        let (s, j) = submit(
            &c,
            &node.url,
            &json!({"plan": {"steps": [
                {"id": "a", "tool": "panics_once", "retry": {"max_attempts": 3, "initial": "10ms"}}
            ]}}),
        )
        .await;
        assert_eq!(s, 201, "{j}");
        let j = settle(
            &c,
            &node.url,
            j["job_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(j["status"], "succeeded", "{j}");
    });

    // The worker binary joins.
    let mut worker = Proc::spawn(
        &[
            "worker",
            "--database-url",
            &db,
            "--admin-bind",
            &format!("127.0.0.1:{admin_port}"),
            "--heartbeat-ms",
            "100",
            "--lease-ttl-ms",
            "2000",
            "--pool-size",
            "4",
            "--limits",
            &limits,
        ]
        .map(String::from),
        dir.path().join("worker.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker_id = loop {
        let found = worker.log().lines().find_map(|l| {
            l.strip_prefix("aetheris worker ")?
                .strip_suffix(": running")
                .map(str::to_owned)
        });
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "worker not running: {}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // `aetheris status --json`: four processes, each with its actors by kind.
    let view = status_until(
        &server_url,
        "four live processes, the restart reported",
        |v| {
            let live = |kind: &str| {
                v["processes"].as_array().map_or(0, |a| {
                    a.iter()
                        .filter(|p| p["kind"] == kind && p["live"] == true)
                        .count()
                })
            };
            let restarted = process(v, "in-process-worker")
                .and_then(|p| {
                    p["actors"]
                        .as_array()?
                        .iter()
                        .find(|a| a["kind"] == "job")
                        .cloned()
                })
                .is_some_and(|job| job["restarts"].as_u64() >= Some(1));
            live("worker") == 2 && live("gateway") == 2 && restarted
        },
    );
    let me = std::process::id();
    let in_process = process(&view, "in-process-worker").unwrap();
    assert_eq!(in_process["pid"], me, "{in_process}");
    assert_eq!(in_process["version"], env!("CARGO_PKG_VERSION"));
    assert!(in_process["uptime_ms"].as_u64() > Some(0), "{in_process}");
    assert!(
        in_process["heartbeat_age_ms"].as_u64() < Some(5_000),
        "{in_process}"
    );
    assert_eq!(in_process["ttl_ms"], 5_000, "{in_process}");
    let kinds: Vec<&str> = in_process["actors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["registry", "lease_manager", "job", "rate_limiter", "tool"]
    );
    let job = actor(in_process, "job");
    assert!(
        job["restarts_by_reason"]["tool_panic"].as_u64() >= Some(1),
        "{job}"
    );
    assert_eq!(job["last_restart"]["reason"], "tool_panic", "{job}");
    assert!(job["last_restart"]["at_ms"].as_i64() > Some(0), "{job}");
    let tool = actor(in_process, "tool");
    assert!(tool["panics"].as_u64() >= Some(1), "{tool}");
    assert!(
        tool["alive"].as_u64() >= Some(3),
        "echo, http and panics_once: {tool}"
    );
    assert!(
        tool["last_panic"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("deliberate panic in the supervision test")),
        "{tool}"
    );
    assert_eq!(actor(in_process, "registry")["alive"], 1);
    assert_eq!(actor(in_process, "lease_manager")["alive"], 1);
    // The in-process gateway is the same OS process.
    let gateways: Vec<&Value> = view["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "gateway")
        .collect();
    assert!(
        gateways
            .iter()
            .any(|g| g["instance"] == in_process["instance"]),
        "{view:#}"
    );
    let binary_gateway = gateways
        .iter()
        .find(|g| g["pid"] != me)
        .expect("the server binary's gateway");
    assert!(
        binary_gateway["leases_held"].is_null(),
        "a gateway holds no leases"
    );
    assert_eq!(binary_gateway["version"], env!("CARGO_PKG_VERSION"));
    let bin_worker = process(&view, &worker_id).expect("the worker binary");
    assert_ne!(bin_worker["pid"], me);
    assert_eq!(bin_worker["live"], true);
    assert_eq!(bin_worker["ttl_ms"], 2_000);
    assert_eq!(bin_worker["lease_ttl_ms"], 2_000);
    assert!(bin_worker["leases_held"].is_u64(), "{bin_worker}");
    assert_eq!(actor(bin_worker, "registry")["alive"], 1);
    // Nothing was injected into the worker binary: no panic and no restart for a panic, a
    // fold or a load failure. (On a loaded machine a store timeout of its 2 s lease can
    // restart a job actor: that is supervision working, not a failure of this view.)
    let bin_jobs = actor(bin_worker, "job");
    assert_eq!(bin_jobs["panics"], 0, "{bin_worker}");
    let injected = ["panic", "tool_panic", "fold", "load", "unknown_tool"];
    if let Some(reasons) = bin_jobs["restarts_by_reason"].as_object() {
        assert!(
            reasons.keys().all(|r| !injected.contains(&r.as_str())),
            "{bin_worker}"
        );
    }

    // The human form says the same.
    let (ok, text, err) = status_cli(&server_url, false);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("2 live gateway(s), 2 live worker(s)"),
        "{text}"
    );
    assert!(text.contains("worker in-process-worker  live"), "{text}");
    assert!(
        text.contains(&format!("worker {worker_id}  live")),
        "{text}"
    );
    assert!(text.contains("restart tool_panic"), "{text}");
    assert!(
        text.contains("deliberate panic in the supervision test"),
        "{text}"
    );
    assert!(text.contains("same OS process as"), "{text}");

    // The in-process node drains: its announcements are withdrawn at once.
    drop(node);
    status_until(&server_url, "the drained node is gone", |v| {
        process(v, "in-process-worker").is_none()
            && v["processes"].as_array().is_some_and(|a| a.len() == 2)
    });

    // Jobs through the binaries, under the rate limits (admissions 2/s, tool calls 10/s).
    runtime.block_on(async {
        let mut ids = Vec::new();
        let steps: Vec<Value> = (0..6)
            .map(|i| json!({"id": format!("s{i}"), "tool": "echo", "args": {"i": i}}))
            .collect();
        for _ in 0..3 {
            ids.push(submit_admitted(&c, &server_url, &json!({"plan": {"steps": steps}})).await);
        }
        // A short sleep keeps its lease (and heartbeats) for most of a second.
        ids.push(
            submit_admitted(
                &c,
                &server_url,
                &json!({"plan": {"steps": [{"id": "nap", "sleep": "800ms"}]}}),
            )
            .await,
        );
        // A burst over the admission limit: some are refused.
        let mut refused = 0;
        for _ in 0..10 {
            let (s, j) = submit(&c, &server_url, &json!({"plan": {"steps": [{"id": "e", "tool": "echo"}]}})).await;
            match s {
                201 => ids.push(j["job_id"].as_str().unwrap().to_string()),
                429 => refused += 1,
                other => panic!("{other}: {j}"),
            }
        }
        assert!(refused > 0, "the burst passed the admission limit");
        for id in &ids {
            let j = settle(&c, &server_url, id, Duration::from_secs(60)).await;
            assert_eq!(j["status"], "succeeded", "{j}");
        }

        // Every metric the dashboard queries is in a real scrape of the gateway or the
        // worker's admin listener.
        let gateway = get_text(&c, &format!("{server_url}/metrics")).await;
        let admin = get_text(&c, &format!("http://127.0.0.1:{admin_port}/metrics")).await;
        let missing: Vec<String> = dashboard_metrics()
            .into_iter()
            .filter(|n| !has_sample(&gateway, n) && !has_sample(&admin, n))
            .collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries metrics no scrape has: {missing:?}\n--- gateway\n{gateway}\n--- worker\n{admin}"
        );
        // A few figures, where they belong.
        assert_eq!(sample(&gateway, "aetheris_processes{kind=\"worker\"}"), Some(1.0), "{gateway}");
        assert_eq!(
            sample(&gateway, &format!("aetheris_process_up{{kind=\"worker\",id=\"{worker_id}\"}}")),
            Some(1.0),
            "{gateway}"
        );
        let migrations = aetheris_store::migrate::MIGRATIONS.len() as f64;
        assert_eq!(sample(&gateway, "aetheris_migrations_applied"), Some(migrations));
        assert_eq!(sample(&gateway, "aetheris_migrations_expected"), Some(migrations));
        assert_eq!(sample(&gateway, "aetheris_runnable_jobs{tenant=\"default\"}"), Some(0.0));
        assert_eq!(sample(&admin, "aetheris_actors{kind=\"registry\"}"), Some(1.0), "{admin}");
        assert_eq!(sample(&admin, "aetheris_actors{kind=\"job\"}"), Some(0.0), "{admin}");
        assert_eq!(sample(&admin, "aetheris_leases_held"), Some(0.0), "{admin}");
        assert_eq!(sample(&admin, "aetheris_mailbox_depth{kind=\"registry\"}"), Some(0.0));
        assert_eq!(sample(&admin, "aetheris_lease_ttl_seconds"), Some(2.0));
        assert_eq!(sample(&admin, "aetheris_store_up"), Some(1.0));
        assert!(sample(&admin, "aetheris_queue_wait_seconds_count{tenant=\"default\"}") >= Some(4.0), "{admin}");
        assert!(!has_sample(&admin, "aetheris_processes"), "presence is the gateways' to report");
        assert!(!gateway.contains("job_id"), "never labelled by job id");
        assert!(!admin.contains("job_id"), "never labelled by job id");
    });

    // SIGKILL: the worker stops announcing without withdrawing; after its TTL it shows as
    // down, in the view and in the gateway's metrics.
    worker.kill();
    let view = status_until(&server_url, "the killed worker is not live", |v| {
        process(v, &worker_id).is_some_and(|p| p["live"] == false)
    });
    assert!(process(&view, &worker_id).unwrap()["heartbeat_age_ms"].as_u64() >= Some(2_000));
    let (ok, text, _) = status_cli(&server_url, false);
    assert!(ok);
    assert!(
        text.contains(&format!("worker {worker_id}  NOT ANNOUNCING")),
        "{text}"
    );
    assert!(
        text.starts_with("1 live gateway(s), 0 live worker(s), 1 not announcing"),
        "{text}"
    );
    runtime.block_on(async {
        let gateway = get_text(&c, &format!("{server_url}/metrics")).await;
        assert_eq!(
            sample(
                &gateway,
                &format!("aetheris_process_up{{kind=\"worker\",id=\"{worker_id}\"}}")
            ),
            Some(0.0),
            "{gateway}"
        );
        assert_eq!(
            sample(&gateway, "aetheris_processes{kind=\"worker\"}"),
            Some(0.0)
        );
    });
    drop(server);
}
