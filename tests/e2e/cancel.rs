//! Cancel, on both stores: the command is stored before the 202 (G1) and applied by the
//! worker holding the job's lease under its fencing token; an in-flight call is told to
//! stop (its future is dropped); a waiting job is woken to apply it; a finished job
//! answers 409; the event names who cancelled and why.

use crate::support::{rt, settle, submit, TestNode};
use aetheris_actors::{Invocation, Tool, ToolError, ToolRegistry, WorkerConfig};
use aetheris_runtime::{EffectClass, JobId};
use aetheris_store::Scope;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sleeps 30 s; counts calls started and calls that ran to completion.
struct Slow {
    started: Arc<AtomicU32>,
    finished: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl Tool for Slow {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(Value::Null)
    }
}

/// Panics: a side_effect step whose outcome is unknown parks its job in `waiting`.
struct Boom;

#[async_trait::async_trait]
impl Tool for Boom {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
        panic!("boom")
    }
}

type Register = Box<dyn FnOnce(&mut ToolRegistry) + Send>;

fn scenario(start: fn(Register, WorkerConfig) -> TestNode) {
    let started = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let (s2, f2) = (started.clone(), finished.clone());
    let node = start(
        Box::new(move |t: &mut ToolRegistry| {
            t.register(
                "slow",
                Slow {
                    started: s2,
                    finished: f2,
                },
            );
            t.register("boom", Boom);
        }),
        WorkerConfig::default(),
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = &node.url;
        let cancel = |id: String, body: Value| {
            let c = c.clone();
            let url = url.clone();
            async move {
                let r = c.post(format!("{url}/v1/jobs/{id}/cancel")).json(&body).send().await.unwrap();
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap())
            }
        };

        // 1. Cancel during a slow tool.
        let (_, j) = submit(&c, url, &json!({"plan": {"steps": [
            {"id": "a", "tool": "echo"}, {"id": "slow", "tool": "slow", "needs": ["a"]}, {"id": "after", "tool": "echo", "needs": ["slow"]}
        ]}})).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while started.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "slow step never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (s, r) = cancel(id.clone(), json!({"reason": "customer withdrew", "by": "ops@example"})).await;
        assert_eq!(s, 202, "{r}");
        let t0 = tokio::time::Instant::now();
        let j = settle(&c, url, &id, Duration::from_secs(20)).await;
        assert_eq!(j["status"], "cancelled", "{j}");
        assert!(t0.elapsed() < Duration::from_secs(10), "cancel took {:?}", t0.elapsed());
        let job: JobId = id.parse().unwrap();
        let events = node.store.read_events(Scope::System, job, 0, 100).await.unwrap();
        let last = &events.last().unwrap().body;
        let v = serde_json::to_value(last).unwrap();
        assert_eq!(v["type"], "job_cancelled");
        assert_eq!(v["by"], "ops@example");
        assert_eq!(v["reason"], "customer withdrew");
        assert!(!events.iter().any(|e| e.body.kind() == "step_started" && serde_json::to_value(&e.body).unwrap()["step"] == "after"));
        aetheris_proof::verify_chain(job, &events).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0, "the in-flight call was told to stop");

        // 2. Cancel twice / after the end: 409, and nothing is appended.
        let (s, r) = cancel(id.clone(), json!({})).await;
        assert_eq!(s, 409, "{r}");
        assert_eq!(node.store.read_events(Scope::System, job, 0, 100).await.unwrap().len(), events.len());

        // 3. A waiting job (no worker holds it) is woken to apply the cancel.
        let (_, j) = submit(&c, url, &json!({"plan": {"steps": [{"id": "pay", "tool": "boom"}]}})).await;
        let wid = j["job_id"].as_str().unwrap().to_string();
        let j = settle(&c, url, &wid, Duration::from_secs(20)).await;
        assert_eq!(j["status"], "waiting", "{j}");
        let (s, _) = cancel(wid.clone(), json!({"reason": "give up"})).await;
        assert_eq!(s, 202);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let j: Value = c.get(format!("{url}/v1/jobs/{wid}")).send().await.unwrap().json().await.unwrap();
            if j["status"] == "cancelled" {
                assert!(j["error"].as_str().unwrap().contains("anonymous"), "{j}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "waiting job was not cancelled: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // 4. Hostile and unknown.
        let (s, _) = cancel("01a21429-84f8-7561-b23b-0d9fd8dffe88".into(), json!({})).await;
        assert_eq!(s, 404);
        let r = c.post(format!("{url}/v1/jobs/{wid}/cancel")).header("content-type", "application/json").body("{nope").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let r = c.post(format!("{url}/v1/jobs/{wid}/cancel")).body("{nope").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "a body that is not declared JSON");
        let r = c.post(format!("{url}/v1/jobs/{wid}/cancel")).json(&json!({"bogus": 1})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
    });
}

#[test]
fn cancel_on_the_embedded_store() {
    scenario(|r, w| TestNode::start(r, w));
}

#[test]
fn cancel_on_postgres() {
    scenario(|r, w| TestNode::start_pg(r, w));
}
