//! Agent steps end to end, on both stores, against the fake LLM server (`fake_llm`) over
//! real HTTP in both protocols: a three-turn loop with tools, approvals across a restart,
//! budgets that park instead of overspending (step, job, tenant per day), provider faults,
//! a 50-turn conversation whose stored bytes per turn stay flat, replay-diff against
//! another model with no tool called, tenant providers over the API, and the `llm` tool.

use crate::fake_llm::{answer, call, tools, FakeLlm, Protocol, Reply, Seen};
use crate::support::{rt, submit, TestNode};
use aetheris_actors::llm::LlmSettings;
use aetheris_actors::{Invocation, Tool, ToolError, ToolRegistry, WorkerConfig};
use aetheris_runtime::EffectClass;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Calls per tool, with the arguments of each.
#[derive(Default, Clone)]
struct Calls(Arc<Mutex<Vec<(String, String, Value)>>>);

impl Calls {
    fn of(&self, tool: &str) -> Vec<(String, Value)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == tool)
            .map(|(_, k, a)| (k.clone(), a.clone()))
            .collect()
    }
}

/// `lookup` (pure): an order's total.
struct Lookup(Calls);

#[async_trait::async_trait]
impl Tool for Lookup {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    fn description(&self) -> String {
        "Looks an order up.".into()
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]})
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        self.0
             .0
            .lock()
            .unwrap()
            .push(("lookup".into(), call.invocation_key, call.args.clone()));
        Ok(json!({"order": call.args["order"], "total": 42}))
    }
}

/// `refund` (side_effect): counts every call by key.
struct Refund(Calls);

#[async_trait::async_trait]
impl Tool for Refund {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    fn description(&self) -> String {
        "Refunds an amount.".into()
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"amount": {"type": "number", "maximum": 100}}, "required": ["amount"]})
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        self.0
             .0
            .lock()
            .unwrap()
            .push(("refund".into(), call.invocation_key, call.args.clone()));
        Ok(json!({"refunded": call.args["amount"]}))
    }
}

const API_KEY: &str = "sk-test-never-in-the-log-7f3a";

/// A worker whose provider `fake` is the fake server in `protocol`, its key in a file.
fn worker(fake: &FakeLlm, protocol: Protocol, dir: &std::path::Path) -> WorkerConfig {
    let key = dir.join("fake.key");
    std::fs::write(&key, format!("{API_KEY}\n")).unwrap();
    let llm = LlmSettings::default()
        .with_flags(
            &[format!("fake={}:{}", protocol.kind(), fake.url)],
            &[format!("fake={}", key.display())],
        )
        .unwrap();
    WorkerConfig {
        llm,
        ..WorkerConfig::default()
    }
}

fn register(calls: Calls) -> impl FnOnce(&mut ToolRegistry) + Send + 'static {
    move |t: &mut ToolRegistry| {
        t.register("lookup", Lookup(calls.clone()));
        t.register("refund", Refund(calls));
    }
}

fn agent_job(extra: Value) -> Value {
    let mut agent = json!({"provider": "fake", "model": "m1", "system": "You refund orders.",
        "prompt": "Ticket: ${input.ticket}", "tools": ["lookup", "refund"], "max_turns": 6});
    if let (Some(a), Some(e)) = (agent.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            a.insert(k.clone(), v.clone());
        }
    }
    json!({"input": {"ticket": "order A-17 broke"}, "plan": {"steps": [{"id": "triage", "agent": agent}]}})
}

async fn get(c: &reqwest::Client, url: &str, path: &str) -> Value {
    c.get(format!("{url}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(c: &reqwest::Client, url: &str, path: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Creates the tenant `default` (a fresh embedded store has none; PostgreSQL's migrations
/// make it).
async fn default_tenant(c: &reqwest::Client, url: &str) {
    let (s, b) = post(c, url, "/v1/tenants", json!({"id": "default"})).await;
    assert!(s == 201 || s == 409, "{s} {b}");
}

/// Polls until `ok` holds of the job (30 s at most).
async fn until(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let j = get(c, url, &format!("/v1/jobs/{id}")).await;
        if ok(&j) {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finished(j: &Value) -> bool {
    matches!(
        j["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

async fn events(c: &reqwest::Client, url: &str, id: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        let page = get(c, url, &format!("/v1/jobs/{id}/events?after={after}")).await;
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["body"]["type"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The three-turn script: look up, refund, answer.
fn three_turns(seen: &Seen) -> Reply {
    match seen.turn {
        0 => tools(vec![call("lookup", json!({"order": "A-17"}))]),
        1 => tools(vec![call("refund", json!({"amount": 42}))]),
        _ => answer("Refunded 42 for A-17."),
    }
}

fn three_turn_agent(pg: bool, protocol: Protocol) {
    let fake = FakeLlm::start(three_turns);
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let node = TestNode::start_configured(
        pg,
        register(calls.clone()),
        worker(&fake, protocol, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (s, j) = submit(&c, &url, &agent_job(json!({}))).await;
        assert_eq!(s, 201, "{j}");
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "the agent finishes", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["output"]["triage"]["answer"], "Refunded 42 for A-17.");
        assert_eq!(
            j["output"]["triage"]["usage"],
            json!({"input_tokens": 300, "output_tokens": 60})
        );
        // The job view shows each turn: model, tokens, tool calls and their status.
        let agent = &j["steps"][0]["agent"];
        let turns = agent["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 3, "{agent}");
        assert_eq!(turns[0]["tool_calls"][0]["tool"], "lookup");
        assert_eq!(turns[0]["tool_calls"][0]["status"], "succeeded");
        assert_eq!(turns[1]["tool_calls"][0]["id"], "triage.2.0");
        assert_eq!(turns[1]["input_tokens"], 100);
        assert_eq!(turns[2]["content"], "Refunded 42 for A-17.");

        // The provider saw three requests, each once, each in its protocol's exact shape.
        let seen = fake.seen();
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        assert_eq!(
            seen.iter().map(|s| s.turn).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(seen.iter().all(|s| s.repeat == 0 && s.protocol == protocol));
        assert!(seen.iter().all(|s| s.api_key.as_deref() == Some(API_KEY)));
        let keys: std::collections::BTreeSet<_> = seen
            .iter()
            .map(|s| s.idempotency_key.clone().unwrap())
            .collect();
        assert_eq!(keys.len(), 3, "one invocation key per model call");
        assert_eq!(seen[0].tool_names(), vec!["lookup", "refund"]);
        assert!(
            seen[1].tool_results()[0].contains("\"total\":42"),
            "{:?}",
            seen[1].body
        );
        assert!(
            seen[2].tool_results()[1].contains("\"refunded\":42"),
            "{:?}",
            seen[2].body
        );
        // The side effect happened once, with the model's arguments.
        let refunds = calls.of("refund");
        assert_eq!(refunds.len(), 1);
        assert_eq!(refunds[0].1, json!({"amount": 42}));

        // Answers are events before any of their tool calls start.
        let evs = events(&c, &url, &id).await;
        let k = kinds(&evs);
        let answered = k.iter().position(|x| x == "agent_model_answered").unwrap();
        let started = k.iter().position(|x| x == "agent_tool_started").unwrap();
        assert!(answered < started, "{k:?}");
        // The key never reaches events (nor the ledger).
        let all = serde_json::to_string(&evs).unwrap();
        assert!(!all.contains(API_KEY));
        let ledger = get(&c, &url, &format!("/v1/jobs/{id}/ledger")).await;
        let rows: Vec<(String, String, String)> = ledger["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["step"].as_str().unwrap().to_string(),
                    r["effect"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [
            ("triage.1", "idempotent", "succeeded"),
            ("triage.1.0", "pure", "succeeded"),
            ("triage.2.0", "side_effect", "succeeded"),
            ("triage.3", "idempotent", "succeeded"),
        ] {
            assert!(
                rows.contains(&(want.0.into(), want.1.into(), want.2.into())),
                "{want:?} not in {rows:?}"
            );
        }
        assert!(!ledger.to_string().contains(API_KEY));
    });
}

#[test]
fn three_turns_over_openai_on_redb() {
    three_turn_agent(false, Protocol::OpenAi);
}

#[test]
fn three_turns_over_anthropic_on_redb() {
    three_turn_agent(false, Protocol::Anthropic);
}

#[test]
fn three_turns_over_openai_on_postgres() {
    three_turn_agent(true, Protocol::OpenAi);
}

#[test]
fn three_turns_over_anthropic_on_postgres() {
    three_turn_agent(true, Protocol::Anthropic);
}

fn approvals(pg: bool) {
    let fake = FakeLlm::start(|s| match s.turn {
        0 => tools(vec![
            call("refund", json!({"amount": 40})),
            call("refund", json!({"amount": 60})),
        ]),
        _ => answer("One refund done, one rejected."),
    });
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let node = TestNode::start_configured(
        pg,
        register(calls.clone()),
        worker(&fake, Protocol::OpenAi, dir.path()),
        None,
        |_| {},
    );
    let id = rt().block_on(async {
        let c = reqwest::Client::new();
        let (_, j) = submit(&c, &node.url, &agent_job(json!({"approve": ["refund"]}))).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &node.url, &id, "waits for approvals", |j| {
            j["status"] == "waiting"
        })
        .await;
        let agent = &j["steps"][0]["agent"];
        assert_eq!(j["steps"][0]["status"], "waiting", "{j}");
        assert_eq!(
            agent["awaiting"],
            json!(["approve:triage.1.0", "approve:triage.1.1"])
        );
        // The proposed arguments are visible.
        assert_eq!(
            agent["turns"][0]["tool_calls"][1]["arguments"],
            json!({"amount": 60})
        );
        assert_eq!(agent["turns"][0]["tool_calls"][1]["awaits_approval"], true);
        id
    });
    assert!(
        calls.of("refund").is_empty(),
        "nothing runs before its approval"
    );
    // The approvals outlive the process.
    let node = node.crash_and_restart(
        Duration::from_millis(200),
        register(calls.clone()),
        worker(&fake, Protocol::OpenAi, dir.path()),
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (s, _) = post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/signals/approve:triage.1.0"),
            json!({"payload": {"args": {"amount": 35}}, "by": "ada"}),
        )
        .await;
        assert_eq!(s, 202);
        let (s, _) = post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/signals/approve:triage.1.1"),
            json!({"payload": {"approve": false, "reason": "too much"}, "by": "bob"}),
        )
        .await;
        assert_eq!(s, 202);
        let j = until(&c, &url, &id, "finishes after the approvals", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        let turn = &j["steps"][0]["agent"]["turns"][0]["tool_calls"];
        assert_eq!(turn[0]["approved_by"], "ada");
        assert_eq!(turn[0]["arguments"], json!({"amount": 35}));
        assert_eq!(turn[1]["status"], "refused");
        let refunds = calls.of("refund");
        assert_eq!(refunds.len(), 1, "the rejected call never ran: {refunds:?}");
        assert_eq!(
            refunds[0].1,
            json!({"amount": 35}),
            "the edited arguments were used"
        );
        // The model is told about the rejection, and who decided is in the log.
        let last = fake.seen().into_iter().last().unwrap();
        assert_eq!(last.turn, 1);
        assert!(
            last.tool_results()
                .iter()
                .any(|r| r == "rejected by bob: too much"),
            "{:?}",
            last.tool_results()
        );
        let evs = events(&c, &url, &id).await;
        let approved = evs
            .iter()
            .find(|e| e["body"]["type"] == "agent_tool_approved")
            .unwrap();
        assert_eq!(approved["body"]["by"], "ada");
        let refused = evs
            .iter()
            .find(|e| e["body"]["type"] == "agent_tool_refused")
            .unwrap();
        assert_eq!(refused["body"]["by"], "bob");
    });
}

#[test]
fn approvals_approve_edit_and_reject_across_a_restart_on_redb() {
    approvals(false);
}

#[test]
fn approvals_approve_edit_and_reject_across_a_restart_on_postgres() {
    approvals(true);
}

fn step_budget(pg: bool) {
    // Every call uses 150 tokens; the step may spend 500.
    let fake = FakeLlm::start(|_| Reply::Answer {
        text: String::new(),
        calls: vec![call("lookup", json!({"order": "A"}))],
        input_tokens: 130,
        output_tokens: 20,
    });
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_configured(
        pg,
        register(Calls::default()),
        worker(&fake, Protocol::OpenAi, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (_, j) = submit(
            &c,
            &url,
            &agent_job(json!({"budget": {"tokens": 500}, "max_tokens": 50, "max_turns": 40})),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "parks at its budget", |j| {
            j["status"] == "waiting"
        })
        .await;
        let agent = &j["steps"][0]["agent"];
        assert_eq!(agent["budget_wait"]["scope"], "step", "{j}");
        assert_eq!(agent["awaiting"], json!(["budget"]));
        let used =
            agent["input_tokens"].as_u64().unwrap() + agent["output_tokens"].as_u64().unwrap();
        // Never past the budget by more than one call's overshoot of its reservation.
        assert!(used <= 500 + 150, "{used}");
        let asked = fake.seen().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.seen().len(), asked, "a parked step asks nothing");
        // Raise: it goes on, and parks again at the new limit.
        let (s, _) = post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/signals/budget"),
            json!({"payload": {"tokens": 400}, "by": "ada"}),
        )
        .await;
        assert_eq!(s, 202);
        let j = until(&c, &url, &id, "parks again", |j| {
            j["status"] == "waiting" && j["steps"][0]["agent"]["budget_wait"]["limit"] == 900
        })
        .await;
        let used2 = j["steps"][0]["agent"]["input_tokens"].as_u64().unwrap()
            + j["steps"][0]["agent"]["output_tokens"].as_u64().unwrap();
        assert!(used2 > used && used2 <= 900 + 150, "{used} then {used2}");
        // Stop: the step fails, naming who stopped it.
        post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/signals/budget"),
            json!({"payload": {"stop": true}, "by": "ada"}),
        )
        .await;
        let j = until(&c, &url, &id, "stops", finished).await;
        assert_eq!(j["status"], "failed");
        assert_eq!(
            j["steps"][0]["error"],
            "stopped at its step token budget by ada"
        );
    });
}

#[test]
fn a_step_budget_parks_and_a_signal_raises_or_stops_it_on_redb() {
    step_budget(false);
}

#[test]
fn a_step_budget_parks_and_a_signal_raises_or_stops_it_on_postgres() {
    step_budget(true);
}

fn tenant_daily_budget(pg: bool) {
    let fake = FakeLlm::start(|s| match s.turn {
        0..=3 => Reply::Answer {
            text: String::new(),
            calls: vec![call("lookup", json!({"order": "A"}))],
            input_tokens: 600,
            output_tokens: 100,
        },
        _ => answer("done"),
    });
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_configured(
        pg,
        register(Calls::default()),
        worker(&fake, Protocol::Anthropic, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        default_tenant(&c, &url).await;
        let r = c.put(format!("{url}/v1/tenants/default/limits")).json(&json!({"llm_tokens_per_day": 2000})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (_, j) = submit(&c, &url, &agent_job(json!({"max_tokens": 100}))).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "parks at the tenant's daily budget", |j| j["status"] == "waiting").await;
        assert_eq!(j["steps"][0]["agent"]["budget_wait"]["scope"], "tenant", "{j}");
        let asked = fake.seen().len();
        assert!((2..=3).contains(&asked), "{asked} calls within 2000 tokens at 700 each");
        // The operator raises the tenant's budget, then tells the step to go on.
        let r = c.put(format!("{url}/v1/tenants/default/limits")).json(&json!({"llm_tokens_per_day": 100000})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        post(&c, &url, &format!("/v1/jobs/{id}/signals/budget"), json!({"by": "ops"})).await;
        let j = until(&c, &url, &id, "finishes", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        // Token usage per tenant and model in the metrics.
        let m = c.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        let input = crate::support::sample(&m, "aetheris_gen_ai_client_token_usage_total{tenant=\"default\",gen_ai_provider_name=\"fake\",gen_ai_request_model=\"m1\",gen_ai_token_type=\"input\"}");
        assert!(input.is_some_and(|v| v >= 2400.0), "{input:?}\n{m}");
    });
}

#[test]
fn the_tenants_daily_budget_parks_until_raised_and_tokens_are_metered_on_redb() {
    crate::support::own_process!(
        the_tenants_daily_budget_parks_until_raised_and_tokens_are_metered_on_redb
    );
    tenant_daily_budget(false);
}

#[test]
fn the_tenants_daily_budget_parks_until_raised_and_tokens_are_metered_on_postgres() {
    crate::support::own_process!(
        the_tenants_daily_budget_parks_until_raised_and_tokens_are_metered_on_postgres
    );
    tenant_daily_budget(true);
}

fn faults(pg: bool) {
    // The first job: 429, 500, malformed JSON, then tool calls naming an unknown tool and
    // with bad arguments; then no choices, then the answer.
    let fake = FakeLlm::start(|s| match (s.model.as_str(), s.turn, s.repeat) {
        ("m1", 0, 0) => Reply::Status(429, Some("0")),
        ("m1", 0, 1) => Reply::Status(500, None),
        ("m1", 0, 2) => Reply::Malformed,
        ("m1", 0, _) => tools(vec![
            call("rm_rf", json!({})),
            call("lookup", json!({"order": 17})),
            call("lookup", json!({"order": "A-1"})),
        ]),
        ("m1", _, 0) => Reply::Empty,
        ("m1", _, _) => answer("handled"),
        ("slow", _, 0) => Reply::Hang(Duration::from_secs(3)),
        ("slow", _, _) => answer("late but fine"),
        ("denied", _, _) => Reply::Status(401, None),
        _ => Reply::Status(503, None),
    });
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let node = TestNode::start_configured(
        pg,
        register(calls.clone()),
        worker(&fake, Protocol::OpenAi, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let job = |model: &str, retry: Value, timeout: &str| {
            let mut j = agent_job(json!({"model": model}));
            j["plan"]["steps"][0]["retry"] = retry;
            j["plan"]["steps"][0]["timeout"] = json!(timeout);
            j
        };
        let (_, j) = submit(
            &c,
            &url,
            &job("m1", json!({"max_attempts": 5, "initial": "10ms"}), "10s"),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "survives the faults", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        let evs = events(&c, &url, &id).await;
        let failed: Vec<String> = evs
            .iter()
            .filter(|e| e["body"]["type"] == "agent_model_failed")
            .map(|e| e["body"]["error"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(failed.len(), 4, "{failed:?}");
        assert!(
            failed[0].contains("429") && failed[1].contains("500"),
            "{failed:?}"
        );
        assert!(
            failed[2].contains("malformed JSON") && failed[3].contains("no choices"),
            "{failed:?}"
        );
        let refused: Vec<String> = evs
            .iter()
            .filter(|e| e["body"]["type"] == "agent_tool_refused")
            .map(|e| e["body"]["reason"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        let told = fake
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.model == "m1" && s.turn == 1)
            .unwrap()
            .tool_results();
        assert!(told[0].starts_with("unknown tool \"rm_rf\""), "{told:?}");
        assert!(told[1].contains("$.order: expected string"), "{told:?}");
        assert_eq!(calls.of("lookup").len(), 1, "only the valid call ran");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());

        // A timed-out call is asked again, with the same Idempotency-Key.
        let (_, j) = submit(
            &c,
            &url,
            &job(
                "slow",
                json!({"max_attempts": 3, "initial": "10ms"}),
                "500ms",
            ),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "retries the timeout", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        let slow: Vec<Seen> = fake
            .seen()
            .into_iter()
            .filter(|s| s.model == "slow")
            .collect();
        assert_eq!(slow.len(), 2);
        assert_eq!(slow[0].digest, slow[1].digest);
        assert_eq!(slow[0].idempotency_key, slow[1].idempotency_key);

        // A 401 fails the step at once, with a clear reason.
        let (_, j) = submit(
            &c,
            &url,
            &job(
                "denied",
                json!({"max_attempts": 5, "initial": "10ms"}),
                "10s",
            ),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "fails", finished).await;
        assert_eq!(j["status"], "failed");
        assert!(
            j["steps"][0]["error"]
                .as_str()
                .unwrap()
                .contains("provider answered 401"),
            "{j}"
        );
        assert_eq!(
            fake.seen().iter().filter(|s| s.model == "denied").count(),
            1
        );
        // 5xx until the attempts run out: fails, naming the last error.
        let (_, j) = submit(
            &c,
            &url,
            &job("down", json!({"max_attempts": 2, "initial": "10ms"}), "10s"),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "gives up", finished).await;
        assert_eq!(j["status"], "failed");
        assert!(
            j["steps"][0]["error"]
                .as_str()
                .unwrap()
                .starts_with("model call failed: provider answered 503"),
            "{j}"
        );
        assert_eq!(fake.seen().iter().filter(|s| s.model == "down").count(), 2);
    });
}

#[test]
fn provider_faults_get_their_documented_behaviour_on_redb() {
    faults(false);
}

#[test]
fn provider_faults_get_their_documented_behaviour_on_postgres() {
    faults(true);
}

fn fifty_turns(pg: bool) {
    let fake = FakeLlm::start(|s| match s.turn {
        0..=49 => tools(vec![call(
            "lookup",
            json!({"order": format!("A-{}", s.turn % 3)}),
        )]),
        _ => answer("all fifty looked up"),
    });
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_configured(
        pg,
        register(Calls::default()),
        worker(&fake, Protocol::OpenAi, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (_, j) = submit(
            &c,
            &url,
            &agent_job(json!({"max_turns": 60, "max_tokens": 64})),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "fifty turns", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(
            j["steps"][0]["agent"]["turns"].as_array().unwrap().len(),
            51
        );
        // Bytes of each turn's events: from its model call's start to the next one's.
        let evs = events(&c, &url, &id).await;
        let mut per_turn: Vec<usize> = Vec::new();
        for e in &evs {
            let bytes = serde_json::to_vec(&e["body"]).unwrap().len();
            if e["body"]["type"] == "agent_model_started" {
                per_turn.push(0);
            }
            if let Some(last) = per_turn.last_mut() {
                *last += bytes;
            }
        }
        assert_eq!(per_turn.len(), 51);
        // Flat: turn 50 stores no more than turn 4 (a few more digits), whatever the
        // conversation's length (the request is named by one prefix digest).
        assert!(per_turn[49] <= per_turn[3] + 16, "{per_turn:?}");
        // Every message body is stored once: no event repeats one an earlier event holds.
        let mut bodies = std::collections::BTreeSet::new();
        for e in &evs {
            for m in e["body"]["messages"].as_array().into_iter().flatten() {
                if m["message"].is_object() {
                    assert!(
                        bodies.insert(m["digest"].as_str().unwrap().to_string()),
                        "{m} stored twice"
                    );
                }
            }
        }
        // Each request grows; each is distinct and asked once.
        let seen = fake.seen();
        assert_eq!(seen.len(), 51);
        assert!(seen.iter().all(|s| s.repeat == 0));
        assert_eq!(seen[50].tool_results().len(), 50);
    });
}

#[test]
fn fifty_turns_store_flat_bytes_per_turn_on_redb() {
    fifty_turns(false);
}

#[test]
fn fifty_turns_store_flat_bytes_per_turn_on_postgres() {
    fifty_turns(true);
}

fn replay(pg: bool) {
    let fake = FakeLlm::start(|s| match (s.model.as_str(), s.turn) {
        (_, 0) => tools(vec![call("lookup", json!({"order": "A-17"}))]),
        ("m1", 1) => tools(vec![call("refund", json!({"amount": 42}))]),
        ("m2", 1) => tools(vec![call("refund", json!({"amount": 40}))]),
        ("m1", _) => answer("Refunded 42."),
        _ => answer("Refunded 40."),
    });
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let node = TestNode::start_configured(
        pg,
        register(calls.clone()),
        worker(&fake, Protocol::Anthropic, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (_, j) = submit(&c, &url, &agent_job(json!({}))).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        until(&c, &url, &id, "runs with m1", finished).await;
        let before = (calls.of("lookup").len(), calls.of("refund").len());
        assert_eq!(before, (1, 1));
        let recorded: Vec<Seen> = fake.seen();
        let (s, report) = post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/replay"),
            json!({"model": "m2"}),
        )
        .await;
        assert_eq!(s, 200, "{report}");
        let div: Vec<Value> = report["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["divergences"].clone())
            .collect();
        assert_eq!(
            div,
            vec![json!([]), json!(["args"]), json!(["answer"])],
            "{report}"
        );
        assert_eq!(report["first_divergence"], "triage.2");
        assert_eq!(report["diverged"], 2);
        assert_eq!(
            report["turns"][1]["recorded"]["tool_calls"][0]["args"],
            json!({"amount": 42})
        );
        assert_eq!(
            report["turns"][1]["replayed"]["tool_calls"][0]["args"],
            json!({"amount": 40})
        );
        // No tool was called: the recorded tool results were served instead.
        assert_eq!((calls.of("lookup").len(), calls.of("refund").len()), before);
        let replayed: Vec<Seen> = fake
            .seen()
            .into_iter()
            .filter(|s| s.model == "m2")
            .collect();
        assert_eq!(replayed.len(), 3);
        for (r, o) in replayed.iter().zip(&recorded) {
            assert_eq!(
                r.body["messages"], o.body["messages"],
                "turn {} asked the recorded conversation",
                o.turn
            );
        }
        // Another provider, and a job with no agent turns.
        let (s, report) = post(
            &c,
            &url,
            &format!("/v1/jobs/{id}/replay"),
            json!({"model": "m2", "provider": "nope"}),
        )
        .await;
        assert_eq!(s, 200);
        assert!(
            report["turns"][0]["error"]
                .as_str()
                .unwrap()
                .contains("no LLM provider \"nope\""),
            "{report}"
        );
        let (_, plain) = submit(
            &c,
            &url,
            &json!({"plan": {"steps": [{"id": "a", "tool": "echo"}]}}),
        )
        .await;
        let plain_id = plain["job_id"].as_str().unwrap();
        let (s, _) = post(
            &c,
            &url,
            &format!("/v1/jobs/{plain_id}/replay"),
            json!({"model": "m2"}),
        )
        .await;
        assert_eq!(s, 409);
    });
}

#[test]
fn replay_diff_asks_another_model_and_calls_no_tool_on_redb() {
    replay(false);
}

#[test]
fn replay_diff_asks_another_model_and_calls_no_tool_on_postgres() {
    replay(true);
}

fn tenant_providers(pg: bool) {
    let fake = FakeLlm::start(three_turns);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tenant.key");
    std::fs::write(&key, "sk-tenant").unwrap();
    let node = TestNode::start_configured(
        pg,
        register(Calls::default()),
        WorkerConfig::default(),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        default_tenant(&c, &url).await;
        let put = |name: &str, body: Value| c.put(format!("{url}/v1/tenants/default/providers/{name}")).json(&body).send();
        let r = put("mine", json!({"kind": "anthropic", "base_url": fake.url, "models": ["m1"], "api_key_file": key})).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        for (body, want) in [
            (json!({"kind": "openai", "base_url": "ftp://x"}), 400),
            (json!({"kind": "openai", "base_url": "http://x", "api_key": "sk-live"}), 400),
            (json!({"kind": "gpt", "base_url": "http://x"}), 400),
        ] {
            assert_eq!(put("bad", body).await.unwrap().status().as_u16(), want);
        }
        let r = c.put(format!("{url}/v1/tenants/ghost/providers/x")).json(&json!({"kind": "openai", "base_url": "http://x"})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let list = get(&c, &url, "/v1/tenants/default/providers").await;
        assert_eq!(list["providers"].as_array().unwrap().len(), 1, "{list}");
        let mut job = agent_job(json!({"provider": "mine"}));
        let (_, j) = submit(&c, &url, &job).await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = until(&c, &url, &id, "runs on the tenant's provider", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert!(fake.seen().iter().all(|s| s.api_key.as_deref() == Some("sk-tenant")));
        // A model outside the allow-list fails the step with the reason.
        job["plan"]["steps"][0]["agent"]["model"] = json!("m9");
        let (_, j) = submit(&c, &url, &job).await;
        let j = until(&c, &url, j["job_id"].as_str().unwrap(), "refused", finished).await;
        assert!(j["steps"][0]["error"].as_str().unwrap().contains("model \"m9\" is not allowed"), "{j}");
        let r = c.delete(format!("{url}/v1/tenants/default/providers/mine")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = c.delete(format!("{url}/v1/tenants/default/providers/mine")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // The gateway forgets at once; a worker within seconds.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (_, j) = submit(&c, &url, &agent_job(json!({"provider": "mine"}))).await;
        let j = until(&c, &url, j["job_id"].as_str().unwrap(), "no provider", finished).await;
        assert_eq!(j["status"], "failed");
        assert!(j["steps"][0]["error"].as_str().unwrap().contains("no LLM provider \"mine\""), "{j}");
    });
}

#[test]
fn tenant_providers_over_the_api_on_redb() {
    tenant_providers(false);
}

#[test]
fn tenant_providers_over_the_api_on_postgres() {
    tenant_providers(true);
}

#[test]
fn the_llm_tool_is_one_model_call() {
    let fake = FakeLlm::start(|s| answer(&format!("echo of {}", s.body["messages"][0]["content"])));
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_configured(
        false,
        |_| {},
        worker(&fake, Protocol::OpenAi, dir.path()),
        None,
        |_| {},
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = node.url.clone();
        let (s, j) = submit(&c, &url, &json!({"plan": {"steps": [{"id": "ask", "tool": "llm", "args":
            {"provider": "fake", "model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}}]}})).await;
        assert_eq!(s, 201, "{j}");
        let j = until(&c, &url, j["job_id"].as_str().unwrap(), "asks", finished).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["output"]["ask"]["content"], "echo of \"hi\"");
        assert_eq!(j["output"]["ask"]["usage"]["input_tokens"], 100);
        assert_eq!(j["steps"][0]["effect"], "idempotent");
        let (_, j) = submit(&c, &url, &json!({"plan": {"steps": [{"id": "ask", "tool": "llm", "args": {"model": "m1"}}]}})).await;
        let j = until(&c, &url, j["job_id"].as_str().unwrap(), "refuses", finished).await;
        assert!(j["steps"][0]["error"].as_str().unwrap().contains("missing required property"), "{j}");
    });
}

#[test]
fn plans_with_bad_agent_steps_are_refused_by_path() {
    let node = TestNode::start(|_| {}, WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let (s, j) = submit(&c, &node.url, &json!({"plan": {"steps": [{"id": "a", "agent":
            {"provider": "p", "model": "m", "prompt": "x", "tools": ["nope"], "approve": ["echo"]}}]}})).await;
        assert_eq!(s, 422, "{j}");
        let text = j.to_string();
        assert!(text.contains("plan.steps[0].agent.tools[0]: unknown tool"), "{text}");
        assert!(text.contains("plan.steps[0].agent.approve[0]"), "{text}");
    });
}
