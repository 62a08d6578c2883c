//! Kill -9 at every boundary of a three-turn agent, on both stores: the real `aetheris
//! dev` binary runs as a child process with a failpoint armed (`AETHERIS_FAILPOINT`,
//! actors/src/failpoint.rs), which stops it dead at exactly one boundary; the test then
//! SIGKILLs it, starts it again (no failpoint) on the same data, and lets the job finish.
//!
//! The agent: turn 1 calls `http` (side_effect) against a counting stub, turn 2 calls
//! `echo` (pure), turn 3 answers. For every boundary — before a model call starts, with a
//! model call in flight, after an answer is stored (its tool calls started but not made),
//! with a tool call in flight, after a tool result is stored — the fake provider must have
//! received each distinct request exactly once, except the call that was in flight when
//! the process was killed (asked once more, with the same `Idempotency-Key`), and the stub
//! must have seen no invocation key twice (a side_effect call cut off becomes
//! `outcome_unknown` and is confirmed by a human, as for plan steps). Every event chain
//! verifies.
//!
//! Also here: `job get`, `job events`, `job watch` and `job replay` of the CLI on an agent.

use crate::fake_llm::{answer, call, tools, FakeLlm, Reply, Seen};
use crate::support::Stub;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_TTL_MS: u64 = 600;

/// The `aetheris dev` child: one store (a data dir, or a PostgreSQL database), one port.
struct Node {
    dir: PathBuf,
    database_url: Option<String>,
    port: u16,
    provider: String,
    child: Option<Child>,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Node {
    fn new(dir: &Path, database_url: Option<String>, fake_url: &str) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Node {
            dir: dir.to_path_buf(),
            database_url,
            port,
            provider: format!("fake=openai:{fake_url}"),
            child: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the child (with `failpoint` armed, if any) and waits until it serves.
    fn start(&mut self, failpoint: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
        cmd.arg("dev")
            .arg("--insecure-no-auth")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--lease-ttl-ms")
            .arg(LEASE_TTL_MS.to_string())
            .arg("--llm-provider")
            .arg(&self.provider)
            .env("AETHERIS_LLM_API_KEY_FAKE", "sk-crash")
            .env_remove("AETHERIS_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        if let Some(fp) = failpoint {
            cmd.env("AETHERIS_FAILPOINT", fp)
                .env("AETHERIS_FAILPOINT_FILE", self.dir.join("failpoint"));
        }
        let _ = std::fs::remove_file(self.dir.join("failpoint"));
        self.child = Some(cmd.spawn().expect("spawn aetheris"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = self
                .client
                .get(format!("{}/healthz", self.url()))
                .timeout(Duration::from_millis(300));
            let ok = self
                .rt
                .block_on(async { req.send().await })
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Value {
        let req = self.client.get(format!("{}{path}", self.url()));
        self.rt.block_on(async {
            match req.send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            }
        })
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.try_post(path, body).expect("post")
    }

    /// `post`, or the transport error (no answer within the client's timeout, a reset).
    fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
        let req = self
            .client
            .post(format!("{}{path}", self.url()))
            .json(&body);
        self.rt.block_on(async {
            let r = req.send().await?;
            let s = r.status().as_u16();
            Ok((s, r.json().await.unwrap_or(Value::Null)))
        })
    }

    /// Polls the job until `ok` holds of it (60 s at most).
    fn until(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.get(&format!("/v1/jobs/{id}"));
            if ok(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "{what}: {j}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn events(&self, id: &str) -> Vec<aetheris_runtime::RecordedEvent> {
        let page = self.get(&format!("/v1/jobs/{id}/events?limit=1000"));
        serde_json::from_value(page["events"].clone()).expect("events parse")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn script(stub: String) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s| match s.turn {
        0 => tools(vec![call(
            "http",
            json!({"method": "POST", "url": stub, "body": {"refund": 42}}),
        )]),
        1 => tools(vec![call("echo", json!({"note": "refunded"}))]),
        _ => answer("Refunded 42."),
    }
}

/// The job of run `n`, under an idempotency key so that a submission whose answer was cut
/// off can be repeated after the restart (see `kill_at_every_boundary`).
fn job(n: usize) -> Value {
    json!({"idempotency_key": format!("agent-crash-{n}"),
        "input": {"ticket": format!("ticket {n}")}, "plan": {"steps": [{"id": "triage",
        "timeout": "10s",
        "agent": {"provider": "fake", "model": "m1", "prompt": "Refund ${input.ticket}",
                  "tools": ["http", "echo"], "max_turns": 5}}]}})
}

/// Every boundary of the three-turn agent: (failpoint, whether a model call was in flight).
const BOUNDARIES: &[(&str, bool)] = &[
    ("agent.model.before_start@1", false),
    ("agent.model.in_flight@1", true),
    ("agent.model.answered@1", false),
    ("agent.tool.in_flight@1", false),
    ("agent.tool.recorded@1", false),
    ("agent.model.before_start@2", false),
    ("agent.model.in_flight@2", true),
    ("agent.model.answered@2", false),
    ("agent.tool.in_flight@2", false),
    ("agent.tool.recorded@2", false),
    ("agent.model.before_start@3", false),
    ("agent.model.in_flight@3", true),
    ("agent.model.answered@3", false),
];

fn kill_at_every_boundary(pg: bool) {
    let root = tempfile::Builder::new()
        .prefix("aetheris-agent-crash-")
        .tempdir()
        .expect("tempdir");
    let mut failures: Vec<String> = Vec::new();
    for (n, (failpoint, in_flight)) in BOUNDARIES.iter().enumerate() {
        let stub = Stub::start(0);
        let fake = FakeLlm::start(script(format!("{}/refunds", stub.url)));
        let dir = root.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let database_url = pg.then(|| {
            crate::support::rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url())
        });
        let mut node = Node::new(&dir, database_url, &fake.url);
        node.start(Some(failpoint));
        // The failpoint stops the worker's thread, which on PostgreSQL also runs the
        // pool's connections: when the job reaches it before the gateway had its
        // submission's answer (a loaded machine), the answer never comes. Like any client,
        // the test then repeats the submission under its idempotency key after the
        // restart (below); the submission itself was durable (G1).
        let first = node.try_post("/v1/jobs", job(n));
        if let Ok((s, j)) = &first {
            assert_eq!(*s, 201, "{j}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("failpoint").exists() {
            assert!(
                Instant::now() < deadline,
                "{failpoint} never reached:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        node.kill();
        node.start(None);
        let (s, j) = match first {
            Ok(answer) => answer,
            Err(_) => node.post("/v1/jobs", job(n)),
        };
        assert!(s == 201 || s == 200, "{s} {j}");
        let id = j["job_id"].as_str().expect("id").to_string();
        // A side_effect call cut off is outcome_unknown: a human says what happened.
        let j = node.until(&id, "settles after the kill", |j| {
            matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "waiting")
            )
        });
        let mut confirmed = 0;
        if j["status"] == "waiting" {
            for t in j["steps"][0]["agent"]["turns"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for c in t["tool_calls"].as_array().into_iter().flatten() {
                    if c["status"] == "outcome_unknown" {
                        let happened = stub.calls.lock().unwrap().values().any(|n| *n > 0);
                        let body = if happened {
                            json!({"outcome": "succeeded", "output": {"status": 200}, "by": "ops"})
                        } else {
                            json!({"outcome": "not_executed", "by": "ops"})
                        };
                        let call_id = c["id"].as_str().unwrap();
                        let (s, r) =
                            node.post(&format!("/v1/jobs/{id}/steps/{call_id}/confirm"), body);
                        assert_eq!(s, 202, "{r}");
                        confirmed += 1;
                    }
                }
            }
        }
        let j = node.until(&id, "finishes", |j| {
            matches!(j["status"].as_str(), Some("succeeded" | "failed"))
        });
        let why = |what: String| format!("{failpoint}: {what}");
        if j["status"] != "succeeded" {
            failures.push(why(format!("job ended {}: {j}", j["status"])));
        }
        if j["output"]["triage"]["answer"] != "Refunded 42." {
            failures.push(why(format!("answer {}", j["output"])));
        }
        // Each distinct request exactly once; only an in-flight call twice, same key.
        let seen = fake.seen();
        let mut by_digest: HashMap<&str, Vec<&Seen>> = HashMap::new();
        for s in &seen {
            by_digest.entry(&s.digest).or_default().push(s);
        }
        let twice: Vec<_> = by_digest.values().filter(|v| v.len() > 1).collect();
        match (twice.as_slice(), in_flight) {
            ([], false) => {}
            ([pair], true) if pair.len() == 2 => {
                if pair[0].idempotency_key != pair[1].idempotency_key
                    || pair[0].idempotency_key.is_none()
                {
                    failures.push(why("the re-asked call came with another key".into()));
                }
            }
            (other, _) => failures.push(why(format!(
                "requests asked more than once: {:?} (turns {:?})",
                other.iter().map(|v| v.len()).collect::<Vec<_>>(),
                seen.iter().map(|s| s.turn).collect::<Vec<_>>()
            ))),
        }
        if by_digest.len() != 3 {
            failures.push(why(format!(
                "{} distinct requests, want 3",
                by_digest.len()
            )));
        }
        if !fake.violations().is_empty() {
            failures.push(why(format!("protocol violations {:?}", fake.violations())));
        }
        // The side effect: never twice per key; exactly once in the end.
        let calls = stub.calls.lock().unwrap().clone();
        if calls.values().any(|n| *n > 1) || calls.values().sum::<u32>() != 1 {
            failures.push(why(format!("stub calls by key {calls:?}")));
        }
        let events = node.events(&id);
        if let Ok(job_id) = id.parse() {
            if let Err(e) = aetheris_proof::verify_chain(job_id, &events) {
                failures.push(why(format!("chain does not verify: {e:?}")));
            }
        }
        println!(
            "{failpoint}: {} requests, {confirmed} confirmation(s), {} events",
            seen.len(),
            events.len()
        );
        node.kill();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn kill_9_at_every_boundary_of_a_three_turn_agent_on_redb() {
    kill_at_every_boundary(false);
}

#[test]
fn kill_9_at_every_boundary_of_a_three_turn_agent_on_postgres() {
    kill_at_every_boundary(true);
}

fn cli(node: &Node, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .arg("job")
        .arg("--server")
        .arg(node.url())
        .args(args)
        .output()
        .expect("run the CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_cli_shows_turns_and_replays_with_another_model() {
    let stub = Stub::start(0);
    let url = format!("{}/refunds", stub.url);
    let base = script(url.clone());
    let fake = FakeLlm::start(move |s| match (s.model.as_str(), s.turn) {
        ("m2", 2) => answer("Refund refused."),
        _ => base(s),
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut node = Node::new(dir.path(), None, &fake.url);
    node.start(None);
    let (_, j) = node.post("/v1/jobs", job(0));
    let id = j["job_id"].as_str().expect("id").to_string();
    node.until(&id, "finishes", |j| j["status"] == "succeeded");
    let (ok, get) = cli(&node, &["get", &id]);
    assert!(ok, "{get}");
    assert!(
        get.contains("turn   1  m1  tokens 100/20  triage.1.0 http("),
        "{get}"
    );
    assert!(get.contains("succeeded"), "{get}");
    assert!(get.contains("answer: Refunded 42."), "{get}");
    assert!(get.contains("tokens 300 in / 60 out"), "{get}");
    let (ok, events) = cli(&node, &["events", &id]);
    assert!(ok, "{events}");
    assert!(
        events.contains("agent_model_answered   triage.1: calls http; tokens 100/20"),
        "{events}"
    );
    assert!(
        events.contains("agent_tool_started     triage.1.0 http (side_effect)"),
        "{events}"
    );
    let (ok, watch) = cli(&node, &["watch", &id]);
    assert!(ok, "{watch}");
    assert!(
        watch.contains("agent_model_started    triage.3 asks fake/m1"),
        "{watch}"
    );
    let before = stub.calls.lock().unwrap().values().sum::<u32>();
    let (ok, replay) = cli(&node, &["replay", &id, "--model", "m2"]);
    assert!(ok, "{replay}");
    assert!(replay.contains("triage.1       same"), "{replay}");
    assert!(replay.contains("triage.3       DIVERGES (answer): answer \"Refunded 42.\" → answer \"Refund refused.\""), "{replay}");
    assert!(
        replay.contains("1 of 3 turns diverge with model m2; first at triage.3"),
        "{replay}"
    );
    let (ok, json) = cli(&node, &["replay", &id, "--model", "m2", "--json"]);
    assert!(ok, "{json}");
    let report: Value = serde_json::from_str(json.trim()).expect("json report");
    assert_eq!(report["diverged"], 1);
    assert_eq!(
        stub.calls.lock().unwrap().values().sum::<u32>(),
        before,
        "a replay calls no tool"
    );
    let (ok, err) = cli(&node, &["replay", &id]);
    assert!(!ok && err.contains("--model"), "{err}");
    // The job's evidence package verifies offline, ledger rows of its calls included (it is
    // built from the events and ledger, which hold no API key: agents.rs checks them).
    let zip = dir.path().join("agent.evidence.zip");
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args(["evidence", "export", &id, "--server", &node.url(), "-o"])
        .arg(&zip)
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args(["evidence", "verify"])
        .arg(&zip)
        .arg("--public-key")
        .arg(dir.path().join("data").join("evidence.pub"))
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
