//! Supervision and replay: a tool that panics gets its job actor restarted from storage
//! (counted in /metrics) while the process stays up; a job reloaded with and without
//! snapshots has identical state (G5).

use crate::support::{rt, settle, submit, TestNode};
use aetheris_actors::{Invocation, Tool, ToolError, WorkerConfig};
use aetheris_runtime::{EffectClass, EventBody, JobId, JobState};
use aetheris_store::{load_job_state, LoadedJob, Scope};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Panics on the first `panics` calls of each invocation key, then echoes its args.
struct PanickyTool {
    effect: EffectClass,
    panics: u32,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

#[async_trait::async_trait]
impl Tool for PanickyTool {
    fn effect(&self) -> EffectClass {
        self.effect
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(call.invocation_key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if n <= self.panics {
            panic!("deliberate panic #{n}");
        }
        Ok(json!({"calls": n, "args": call.args}))
    }
}

fn node_with_panicky() -> (TestNode, Arc<Mutex<HashMap<String, u32>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s = seen.clone();
    let node = TestNode::start(
        move |tools| {
            tools.register(
                "flaky",
                PanickyTool {
                    effect: EffectClass::Idempotent,
                    panics: 1,
                    seen: s.clone(),
                },
            );
            tools.register(
                "doomed",
                PanickyTool {
                    effect: EffectClass::Idempotent,
                    panics: u32::MAX,
                    seen: s.clone(),
                },
            );
            tools.register(
                "doomed_effect",
                PanickyTool {
                    effect: EffectClass::SideEffect,
                    panics: u32::MAX,
                    seen: s,
                },
            );
        },
        WorkerConfig::default(),
    );
    (node, seen)
}

fn restarts(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("aetheris_actor_restarts_total{kind=\"job\",reason=\"tool_panic\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_panicking_tool_restarts_the_job_actor_from_storage_and_the_job_ends_cleanly() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(
        a_panicking_tool_restarts_the_job_actor_from_storage_and_the_job_ends_cleanly
    );
    let (node, seen) = node_with_panicky();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let get_metrics = || async { c.get(format!("{}/metrics", node.url)).send().await.unwrap().text().await.unwrap() };

        // Panics once, retried per policy with the same key: succeeds.
        let (s, j) = submit(&c, &node.url, &json!({"plan": {"steps": [
            {"id": "a", "tool": "echo", "args": {"x": 1}},
            {"id": "b", "tool": "flaky", "needs": ["a"], "args": {"y": "${steps.a.output.x}"}, "retry": {"max_attempts": 3, "initial": "10ms"}}
        ]}})).await;
        assert_eq!(s, 201);
        let j = settle(&c, &node.url, j["job_id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["steps"][1]["attempt"], 2);
        assert_eq!(j["steps"][1]["output"]["calls"], 2, "second call, same invocation key");
        assert_eq!(seen.lock().unwrap().len(), 1, "one invocation key for both attempts");
        assert!(restarts(&get_metrics().await) >= 1.0);

        // Always panics: fails after max_attempts, cleanly.
        let (_, j) = submit(&c, &node.url, &json!({"plan": {"steps": [
            {"id": "x", "tool": "doomed", "retry": {"max_attempts": 2, "initial": "10ms"}}
        ]}})).await;
        let j = settle(&c, &node.url, j["job_id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(j["status"], "failed", "{j}");
        assert!(j["error"].as_str().unwrap().contains("panicked"), "{j}");

        // A side_effect tool that panics may have acted: outcome_unknown, never re-run.
        let (_, j) = submit(&c, &node.url, &json!({"plan": {"steps": [
            {"id": "pay", "tool": "doomed_effect", "retry": {"max_attempts": 5}}
        ]}})).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = settle(&c, &node.url, &id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "waiting", "{j}");
        assert_eq!(j["steps"][0]["status"], "outcome_unknown");
        let key = j["steps"][0]["invocation_key"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.lock().unwrap().get(&key), Some(&1), "side effect called exactly once");

        let m = get_metrics().await;
        assert!(restarts(&m) >= 3.0, "{m}");
        assert!(m.contains("aetheris_actor_panics_total{kind=\"tool\",reason=\"panic\"}"), "{m}");
        let h = c.get(format!("{}/healthz", node.url)).send().await.unwrap();
        assert_eq!(h.status().as_u16(), 200, "process stays up");
    });
}

#[test]
fn reload_with_and_without_snapshots_gives_identical_state() {
    let node = TestNode::start(
        |_| {},
        WorkerConfig {
            snapshot_every: 7,
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let steps: Vec<Value> = (0..40)
            .map(|i| {
                if i == 0 {
                    json!({"id": "s0", "tool": "echo", "args": {"n": 0}})
                } else {
                    json!({"id": format!("s{i}"), "tool": "echo", "needs": [format!("s{}", i - 1)], "args": {"n": i, "prev": format!("${{steps.s{}.output.n}}", i - 1)}})
                }
            })
            .collect();
        let (_, j) = submit(&c, &node.url, &json!({"plan": {"steps": steps}, "input": {"k": [1, 2, {"deep": null}]}})).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = settle(&c, &node.url, &id, Duration::from_secs(60)).await;
        assert_eq!(j["status"], "succeeded");
        let job: JobId = id.parse().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // snapshot writes are asynchronous
        let events = node.store.read_events(Scope::System, job, 0, 10_000).await.unwrap();
        let snap = node.store.latest_snapshot(job, u64::MAX).await.unwrap();
        assert!(snap.is_some_and(|(seq, _)| seq >= 70), "snapshots are written every 7 events");
        let full = JobState::from_events(&events).unwrap().unwrap();
        let LoadedJob { state: with_snapshot, snapshot_seq: snap_seq, events_replayed: replayed, .. } =
            load_job_state(&node.store, job).await.unwrap().unwrap();
        assert!(snap_seq > 0 && replayed < events.len(), "the reload used a snapshot");
        assert_eq!(with_snapshot, full);
        // An unreadable newest snapshot is passed over: the log is replayed from seq 1.
        let token = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::StepStarted { fencing_token, .. } => Some(*fencing_token),
                _ => None,
            })
            .max()
            .unwrap();
        let last = events.last().unwrap().seq;
        node.store.put_snapshot(job, token, last, b"not a snapshot".to_vec()).await.unwrap();
        let LoadedJob { state: from_log, snapshot_seq: snap_seq, events_replayed: replayed, .. } =
            load_job_state(&node.store, job).await.unwrap().unwrap();
        assert_eq!((snap_seq, replayed), (0, events.len()), "the whole log was replayed");
        assert_eq!(from_log, full);
        // And from every snapshot-able point.
        for k in [1, 2, 10, 40, events.len() - 1] {
            let base = JobState::from_events(&events[..k]).unwrap();
            assert_eq!(JobState::replay(base, &events).unwrap().unwrap(), full, "k={k}");
        }
    });
}
