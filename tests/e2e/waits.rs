//! Human in the loop and time, on both stores: signals (approvals with who sent them,
//! idempotent by id, 409 after the end), durable timers (sleep, parked jobs hold no actor,
//! fire after an outage), confirmation of unknown outcomes (once; `not_executed` re-runs
//! with the same key), and retries with backoff reusing the key.

use crate::support::{rt, submit, Stub, TestNode};
use aetheris_actors::{Invocation, Tool, ToolError, ToolRegistry, WorkerConfig};
use aetheris_runtime::{EffectClass, JobId};
use aetheris_store::Scope;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// side_effect; panics on the first call of each key (its outcome is then unknown).
struct PanicOnce(Arc<Mutex<HashMap<String, u32>>>);

#[async_trait::async_trait]
impl Tool for PanicOnce {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let n = {
            let mut m = self.0.lock().unwrap();
            let n = m.entry(call.invocation_key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 {
            panic!("lost the connection mid-call");
        }
        Ok(json!({"charged": true, "calls": n}))
    }
}

/// side_effect; hangs on its first call (a crash will cut it off); its reconcile hook
/// knows what happened to every key it was called with.
struct Reconciling(Arc<Mutex<HashMap<String, u32>>>);

#[async_trait::async_trait]
impl Tool for Reconciling {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(call.invocation_key.clone())
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(json!({"late": true}))
    }
    async fn reconcile(&self, call: Invocation) -> Option<aetheris_actors::Reconciled> {
        let seen = self.0.lock().unwrap().get(&call.invocation_key).copied();
        Some(match seen {
            Some(_) => aetheris_actors::Reconciled::Succeeded(json!({"reconciled": true})),
            None => aetheris_actors::Reconciled::NotExecuted,
        })
    }
}

type Register = Box<dyn FnOnce(&mut ToolRegistry) + Send>;
type Start = fn(Register, WorkerConfig) -> TestNode;

fn tools(seen: Arc<Mutex<HashMap<String, u32>>>) -> Register {
    Box::new(move |t: &mut ToolRegistry| t.register("charge", PanicOnce(seen)))
}

async fn get(c: &reqwest::Client, url: &str, id: &str) -> Value {
    c.get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn until(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let j = get(c, url, id).await;
        if ok(&j) {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the job is finished: succeeded, failed or cancelled.
async fn settle(c: &reqwest::Client, url: &str, id: &str, _limit: Duration) -> Value {
    until(c, url, id, "job did not finish", |j| {
        matches!(
            j["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
    .await
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn alive_jobs(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("aetheris_actors{kind=\"job\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn signals_and_approvals(start: Start) {
    let node = start(tools(Arc::default()), WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (_, j) = submit(&c, &url, &json!({"input": {"order": "A-17"}, "plan": {"steps": [
            {"id": "order", "tool": "echo", "args": {"total": 42}},
            {"id": "approve", "wait": {"signal": "approval", "timeout": "24h"}, "needs": ["order"]},
            {"id": "second", "wait": {"signal": "approval"}, "needs": ["approve"]},
            {"id": "refund", "tool": "echo", "needs": ["second"],
             "args": {"amount": "${steps.order.output.total}", "approved_by": "${steps.approve.output.by}"}}
        ]}})).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "parked on the approval", |j| j["status"] == "waiting").await;
        assert_eq!(j["steps"][1]["status"], "waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = c.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!(alive_jobs(&m), 0.0, "a parked job holds no actor: {m}");

        // The same signal id twice: applied once (the second wait keeps waiting).
        let sig = json!({"payload": {"ok": true}, "signal_id": "approval-1", "by": "ada@example"});
        let (s1, _) = post(&c, format!("{url}/v1/jobs/{id}/signals/approval"), sig.clone()).await;
        let (s2, _) = post(&c, format!("{url}/v1/jobs/{id}/signals/approval"), sig).await;
        assert_eq!((s1, s2), (202, 202));
        let j = until(&c, &url, &id, "first wait done", |j| j["steps"][1]["status"] == "succeeded" && j["status"] == "waiting").await;
        assert_eq!(j["steps"][2]["status"], "waiting", "a repeated signal id is applied once: {j}");
        let events = node.store.read_events(Scope::System, id.parse::<JobId>().unwrap(), 0, 100).await.unwrap();
        let received: Vec<_> = events.iter().filter(|e| e.body.kind() == "signal_received").collect();
        assert_eq!(received.len(), 1);
        assert_eq!(serde_json::to_value(&received[0].body).unwrap()["by"], "ada@example", "the approver is recorded");

        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/signals/approval"), json!({"signal_id": "approval-2", "by": "bob"})).await;
        assert_eq!(s, 202);
        let j = settle(&c, &url, &id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["output"]["refund"], json!({"amount": 42, "approved_by": "ada@example"}));
        let (s, p) = post(&c, format!("{url}/v1/jobs/{id}/signals/approval"), json!({})).await;
        assert_eq!(s, 409, "a signal to a finished job: {p}");
        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/signals/bad name!"), json!({})).await;
        assert_eq!(s, 400);

        // A wait that times out takes its default.
        let (_, j) = submit(&c, &url, &json!({"plan": {"steps": [
            {"id": "w", "wait": {"signal": "never", "timeout": "300ms", "default": {"decision": "auto"}}}
        ]}})).await;
        let j = settle(&c, &url, j["job_id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["steps"][0]["output"], json!({"decision": "auto"}));
    });
}

fn timers_survive_crashes(start: Start) {
    let node = start(tools(Arc::default()), WorkerConfig::default());
    let c = reqwest::Client::new();
    let (wait_id, sleep_id) = rt().block_on(async {
        let (_, w) = submit(&c, &node.url, &json!({"plan": {"steps": [{"id": "w", "wait": {"signal": "go"}}, {"id": "after", "tool": "echo", "needs": ["w"]}]}})).await;
        let (_, s) = submit(&c, &node.url, &json!({"plan": {"steps": [{"id": "nap", "sleep": "2s"}, {"id": "after", "tool": "echo", "needs": ["nap"]}]}})).await;
        let (w, s) = (w["job_id"].as_str().unwrap().to_string(), s["job_id"].as_str().unwrap().to_string());
        until(&c, &node.url, &w, "wait parked", |j| j["status"] == "waiting").await;
        until(&c, &node.url, &s, "sleep parked", |j| j["status"] == "waiting").await;
        (w, s)
    });
    // Crash while a job waits and a timer is pending; stay down past the timer.
    let node = node.crash_and_restart(
        Duration::from_millis(2500),
        tools(Arc::default()),
        WorkerConfig::default(),
    );
    rt().block_on(async {
        let j = settle(&c, &node.url, &sleep_id, Duration::from_secs(30)).await;
        assert_eq!(
            j["status"], "succeeded",
            "the timer due during the outage fired after recovery: {j}"
        );
        let events = node
            .store
            .read_events(Scope::System, sleep_id.parse::<JobId>().unwrap(), 0, 100)
            .await
            .unwrap();
        let at = |k: &str| {
            events
                .iter()
                .find(|e| e.body.kind() == k)
                .map(|e| e.recorded_at_ms)
                .unwrap()
        };
        assert!(
            at("sleep_finished") - at("sleep_started") >= 2000,
            "never early"
        );
        let j = get(&c, &node.url, &wait_id).await;
        assert_eq!(j["status"], "waiting");
        let (s, _) = post(
            &c,
            format!("{}/v1/jobs/{wait_id}/signals/go", node.url),
            json!({"payload": 1}),
        )
        .await;
        assert_eq!(s, 202);
        let j = settle(&c, &node.url, &wait_id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    });
}

fn confirmations(start: Start) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let node = start(tools(seen.clone()), WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let plan = json!({"plan": {"steps": [
            {"id": "pay", "tool": "charge"},
            {"id": "receipt", "tool": "echo", "needs": ["pay"], "args": {"paid": "${steps.pay.output}"}}
        ]}});
        // not_executed: the step runs again, with the same invocation key.
        let (_, j) = submit(&c, &url, &plan).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "outcome unknown", |j| j["status"] == "waiting").await;
        assert_eq!(j["steps"][0]["status"], "outcome_unknown");
        let key = j["steps"][0]["invocation_key"].as_str().unwrap().to_string();
        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/steps/receipt/confirm"), json!({"outcome": "succeeded"})).await;
        assert_eq!(s, 409, "receipt is not outcome_unknown");
        let (s, p) = post(&c, format!("{url}/v1/jobs/{id}/steps/pay/confirm"), json!({"outcome": "not_executed", "note": "bank shows nothing", "by": "ops"})).await;
        assert_eq!(s, 202, "{p}");
        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/steps/pay/confirm"), json!({"outcome": "not_executed"})).await;
        assert_eq!(s, 409, "confirm twice");
        let j = settle(&c, &url, &id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(seen.lock().unwrap().get(&key), Some(&2), "re-run once, same key");
        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/steps/pay/confirm"), json!({"outcome": "succeeded"})).await;
        assert_eq!(s, 409);

        // succeeded: the given output stands in for the call's; nothing is re-run.
        let (_, j) = submit(&c, &url, &plan).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "outcome unknown", |j| j["status"] == "waiting").await;
        let key = j["steps"][0]["invocation_key"].as_str().unwrap().to_string();
        let (s, _) = post(&c, format!("{url}/v1/jobs/{id}/steps/pay/confirm"), json!({"outcome": "succeeded", "output": {"charge": "ch_1"}, "by": "ops"})).await;
        assert_eq!(s, 202);
        let j = settle(&c, &url, &id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["output"]["receipt"]["paid"], json!({"charge": "ch_1"}));
        assert_eq!(seen.lock().unwrap().get(&key), Some(&1), "confirmed succeeded: never re-run");
        let events = node.store.read_events(Scope::System, id.parse::<JobId>().unwrap(), 0, 100).await.unwrap();
        let conf = events.iter().find(|e| e.body.kind() == "step_confirmed").unwrap();
        assert_eq!(serde_json::to_value(&conf.body).unwrap()["by"], "ops");
    });
}

fn retries_reuse_the_key(start: Start) {
    let stub = Stub::start(2);
    let node = start(tools(Arc::default()), WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let step = |effect: &str| {
            json!({"plan": {"steps": [{"id": "call", "tool": "http", "effect": effect,
            "args": {"method": "POST", "url": format!("{}/x", stub.url), "body": {}},
            "retry": {"max_attempts": 5, "initial": "50ms"}}]}})
        };
        let (_, j) = submit(&c, &url, &step("idempotent")).await;
        let j = settle(
            &c,
            &url,
            j["job_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["steps"][0]["attempt"], 3);
        let key = j["steps"][0]["invocation_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            stub.calls.lock().unwrap().get(&key),
            Some(&3),
            "3 attempts, one key"
        );
        let (_, j) = submit(&c, &url, &step("side_effect")).await;
        let j = settle(
            &c,
            &url,
            j["job_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            j["status"], "failed",
            "a side effect answered 503 is not blindly retried: {j}"
        );
        let key = j["steps"][0]["invocation_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(stub.calls.lock().unwrap().get(&key), Some(&1));
    });
}

fn reconcile_hook_answers_before_a_human(start: Start) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let s1 = seen.clone();
    let node = start(
        Box::new(move |t: &mut ToolRegistry| t.register("transfer", Reconciling(s1))),
        WorkerConfig::default(),
    );
    let c = reqwest::Client::new();
    let id = rt().block_on(async {
        let (_, j) = submit(&c, &node.url, &json!({"plan": {"steps": [
            {"id": "send", "tool": "transfer"}, {"id": "after", "tool": "echo", "needs": ["send"], "args": {"r": "${steps.send.output}"}}
        ]}})).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        until(&c, &node.url, &id, "call in flight", |j| j["steps"][0]["status"] == "running").await;
        id
    });
    // Crash mid-call; the next incarnation asks the tool's reconcile hook (lease TTL 5 s).
    let s2 = seen.clone();
    let node = node.crash_and_restart(
        Duration::from_millis(100),
        Box::new(move |t: &mut ToolRegistry| t.register("transfer", Reconciling(s2))),
        WorkerConfig {
            lease_ttl_ms: 1000,
            heartbeat_ms: 200,
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        let j = settle(&c, &node.url, &id, Duration::from_secs(30)).await;
        assert_eq!(
            j["status"], "succeeded",
            "reconciled, not outcome_unknown: {j}"
        );
        assert_eq!(j["output"]["after"]["r"], json!({"reconciled": true}));
        assert_eq!(seen.lock().unwrap().values().sum::<u32>(), 1, "called once");
    });
}

#[test]
fn reconcile_hook_on_the_embedded_store() {
    reconcile_hook_answers_before_a_human(|r, w| TestNode::start(r, w));
}

#[test]
fn reconcile_hook_on_postgres() {
    reconcile_hook_answers_before_a_human(|r, w| TestNode::start_pg(r, w));
}

#[test]
fn signals_and_approvals_on_the_embedded_store() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(signals_and_approvals_on_the_embedded_store);
    signals_and_approvals(|r, w| TestNode::start(r, w));
}
#[test]
fn timers_survive_crashes_on_the_embedded_store() {
    timers_survive_crashes(|r, w| TestNode::start(r, w));
}
#[test]
fn confirmations_on_the_embedded_store() {
    confirmations(|r, w| TestNode::start(r, w));
}
#[test]
fn retries_reuse_the_key_on_the_embedded_store() {
    retries_reuse_the_key(|r, w| TestNode::start(r, w));
}

#[test]
fn signals_and_approvals_on_postgres() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(signals_and_approvals_on_postgres);
    signals_and_approvals(|r, w| TestNode::start_pg(r, w));
}
#[test]
fn timers_survive_crashes_on_postgres() {
    timers_survive_crashes(|r, w| TestNode::start_pg(r, w));
}
#[test]
fn confirmations_on_postgres() {
    confirmations(|r, w| TestNode::start_pg(r, w));
}
#[test]
fn retries_reuse_the_key_on_postgres() {
    retries_reuse_the_key(|r, w| TestNode::start_pg(r, w));
}
