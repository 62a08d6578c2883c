//! Per-tenant rate limits: admission over the limit gets 429 with Retry-After and stores
//! nothing; tool calls over the limit wait their turn (never fail) and hold the rate.

use crate::support::{rt, submit, TestNode};
use aetheris_actors::ratelimit::{LimitsConfig, RateLimiters};
use aetheris_actors::{Invocation, Tool, ToolError, WorkerConfig};
use aetheris_runtime::EffectClass;
use aetheris_store::{ListFilter, Scope};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn limits(v: Value) -> RateLimiters {
    RateLimiters::new(LimitsConfig::parse(&v.to_string()).expect("limits"))
}

#[test]
fn admission_over_the_limit_is_429_with_retry_after_and_stores_nothing() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(
        admission_over_the_limit_is_429_with_retry_after_and_stores_nothing
    );
    let node = TestNode::start(
        |_| {},
        WorkerConfig {
            rate_limits: limits(
                json!({"defaults": {"admissions_per_s": 0.5, "admission_burst": 2}}),
            ),
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let job = json!({"plan": {"steps": [{"id": "a", "tool": "echo"}]}});
        assert_eq!(submit(&c, &node.url, &job).await.0, 201);
        assert_eq!(submit(&c, &node.url, &job).await.0, 201);
        let r = c
            .post(format!("{}/v1/jobs", node.url))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .expect("Retry-After");
        assert!((1..=2).contains(&retry), "retry after {retry}s");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let all = node
            .store
            .list_jobs(
                Scope::System,
                ListFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "nothing stored for the refused submission");
        let m = c
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains(
                "aetheris_rate_limit_rejections_total{tenant=\"default\",kind=\"admission\"} 1"
            ),
            "{m}"
        );
    });
}

/// Records the time of every call.
struct Clocked(Arc<Mutex<Vec<Instant>>>);

#[async_trait::async_trait]
impl Tool for Clocked {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        self.0.lock().unwrap().push(Instant::now());
        Ok(Value::Null)
    }
}

#[test]
fn tool_calls_wait_their_turn_and_hold_the_rate() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(tool_calls_wait_their_turn_and_hold_the_rate);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let rate = 25.0;
    let node = TestNode::start(
        move |t| t.register("clocked", Clocked(c2)),
        WorkerConfig {
            rate_limits: limits(json!({"defaults": {"tool_calls_per_s": rate}})),
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        // 280 calls: a burst of 25, then 255 at 25/s, a window of about 10 s.
        let steps: Vec<Value> = (0..14)
            .map(|i| json!({"id": format!("s{i}"), "tool": "clocked"}))
            .collect();
        let mut ids = Vec::new();
        for _ in 0..20 {
            let (s, j) = submit(&c, &node.url, &json!({"plan": {"steps": steps}})).await;
            assert_eq!(s, 201);
            ids.push(j["job_id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let j: Value = c
                    .get(format!("{}/v1/jobs/{id}", node.url))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if j["status"] == "succeeded" {
                    break;
                }
                assert!(
                    j["status"] != "failed",
                    "throttled steps wait, they do not fail: {j}"
                );
                assert!(Instant::now() < deadline, "{j}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The waits are counted per tenant and kind.
        let m = c
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let waits: f64 = m
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "aetheris_rate_limit_waits_total{tenant=\"default\",kind=\"tool_call\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tool_call waits metric: {m}"));
        assert!(waits >= 200.0, "about 255 calls waited: {waits}");
    });
    let mut t = calls.lock().unwrap().clone();
    t.sort();
    assert_eq!(t.len(), 280);
    // After the initial burst (one second's worth), calls arrive at the limit: measure
    // the rate over the rest of the window.
    let after_burst = &t[rate as usize..];
    let window = after_burst
        .last()
        .unwrap()
        .duration_since(after_burst[0])
        .as_secs_f64();
    let observed = (after_burst.len() - 1) as f64 / window;
    assert!(window >= 9.5, "the window is about 10 s: {window:.1}s");
    assert!(
        observed <= rate * 1.10,
        "observed {observed:.1}/s over {window:.1}s, limit {rate}/s"
    );
    assert!(
        observed >= rate * 0.80,
        "throttled far below the limit: {observed:.1}/s"
    );
}

#[test]
fn a_bad_limits_file_names_the_problem() {
    for (text, needle) in [
        ("{\"defaults\": {\"admissions_per_s\": -1}}", "positive"),
        (
            "{\"defaults\": {\"admission_per_s\": 1}}",
            "unknown field `admission_per_s`",
        ),
        ("{\"share\": 2}", "share"),
        ("nope", "limits"),
    ] {
        let e = LimitsConfig::parse(text).unwrap_err();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

/// Counts calls in flight at once, and the most ever.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

struct Slow(Arc<InFlight>);

#[async_trait::async_trait]
impl Tool for Slow {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.0.now.fetch_add(1, SeqCst) + 1;
        self.0.most.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.now.fetch_sub(1, SeqCst);
        Ok(Value::Null)
    }
}

/// `max_running_jobs` on the embedded store: the worker never runs more of the tenant's
/// jobs at once than the cap (the multi-worker case is in pg_cluster.rs).
#[test]
fn running_jobs_cap_holds_on_the_embedded_store() {
    let seen = Arc::new(InFlight::default());
    let s2 = seen.clone();
    let node = TestNode::start(
        move |t| t.register("slow", Slow(s2)),
        WorkerConfig {
            rate_limits: limits(json!({"defaults": {"max_running_jobs": 3}})),
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let job = json!({"plan": {"steps": [{"id": "a", "tool": "slow"}, {"id": "b", "tool": "slow", "needs": ["a"]}]}});
        for _ in 0..12 {
            assert_eq!(submit(&c, &node.url, &job).await.0, 201);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = node
                .store
                .list_jobs(
                    Scope::System,
                    ListFilter {
                        status: Some(aetheris_runtime::JobStatus::Succeeded),
                        limit: 100,
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .len();
            if done == 12 {
                break;
            }
            assert!(Instant::now() < deadline, "{done} of 12 done");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let most = seen.most.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        most, 3,
        "at most (and, with 12 queued, exactly) 3 jobs run at once"
    );
}
