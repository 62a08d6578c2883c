//! The agent loop's pure half, driven turn by turn the way a worker drives it: every event
//! comes from the real decision and outcome functions and is folded as a store would record
//! it. Each test tries to break one rule: answers before tool calls, refusals given back to
//! the model, approvals, budgets that park instead of overspending, recovery (G2), the
//! content-addressed journal, and replay from a snapshot (G5).

use aetheris_runtime::agent::decide::{request, start_event};
use aetheris_runtime::agent::{
    decide_agents, model_outcome_event, recover_agents, tool_outcome_event, AgentContext,
    AgentRecovery, AgentTools, BudgetScope, CallStatus, ChildAttempt, Message, ModelAnswer,
    ModelAttempt, ModelOutcome, Role, ToolCallRequest, ToolDecl,
};
use aetheris_runtime::codec::{decode_versioned, encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{
    decide, EffectClass, EventBody, JobId, JobState, JobStatus, RecordedEvent, StepStatus,
    ToolOutcome,
};
use serde_json::{json, Value};

struct Tools;

impl AgentTools for Tools {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        match tool {
            "lookup" => Some(EffectClass::Pure),
            "refund" => Some(EffectClass::SideEffect),
            "echo" => Some(EffectClass::Pure),
            _ => None,
        }
    }
    fn declaration(&self, tool: &str) -> Option<ToolDecl> {
        let parameters = match tool {
            "lookup" => {
                json!({"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]})
            }
            "refund" => {
                json!({"type": "object", "properties": {"amount": {"type": "number", "maximum": 100}}, "required": ["amount"]})
            }
            "echo" => json!({"type": "object"}),
            _ => return None,
        };
        Some(ToolDecl {
            name: tool.into(),
            description: format!("the {tool} tool"),
            parameters,
        })
    }
}

const CTX: AgentContext<'static> = AgentContext {
    fencing_token: 7,
    tools: &Tools,
};

/// A job being driven: its events and its state.
struct Sim {
    events: Vec<RecordedEvent>,
    state: JobState,
    now: i64,
}

impl Sim {
    fn new(agent: Value) -> Sim {
        Sim::with_plan(json!({"steps": [{"id": "triage", "agent": agent}]}))
    }

    fn with_plan(plan: Value) -> Sim {
        let e = RecordedEvent {
            job_id: JobId(uuid::Uuid::from_u128(11)),
            seq: 1,
            recorded_at_ms: 1_000,
            body: EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).expect("plan"),
                input: json!({"ticket": "refund order A-17"}),
                idempotency_key: None,
            },
            prev_hash: [0; 32],
            hash: [1; 32],
        };
        let state = JobState::genesis(&e).expect("genesis");
        Sim {
            events: vec![e],
            state,
            now: 1_000,
        }
    }

    fn push(&mut self, body: EventBody) {
        self.now += 1;
        let e = RecordedEvent {
            job_id: self.state.job_id,
            seq: self.state.last_seq + 1,
            recorded_at_ms: self.now,
            body,
            prev_hash: [0; 32],
            hash: [(self.state.last_seq % 250) as u8 + 2; 32],
        };
        self.state
            .apply(&e)
            .unwrap_or_else(|err| panic!("{:?} does not fold: {err}", e.body));
        self.events.push(e);
    }

    /// Starts pending agent steps (as the worker does for `decide`'s starts).
    fn start(&mut self) {
        let d = decide(&self.state, self.now, 8);
        for step in d.start {
            let body = start_event(&self.state, &step).expect("agent step");
            self.push(body);
        }
    }

    /// One round of agent decisions, folded; returns them.
    fn round(&mut self) -> Vec<EventBody> {
        let d = decide_agents(&self.state, self.now, &CTX);
        for e in &d.events {
            self.push(e.clone());
        }
        d.events
    }

    fn model_call(&self) -> ModelAttempt {
        self.events
            .iter()
            .rev()
            .find_map(|e| ModelAttempt::from_started(&e.body))
            .expect("a model call started")
    }

    fn answer(&mut self, message: Message, input: u64, output: u64) {
        let call = self.model_call();
        let body = model_outcome_event(
            &self.state,
            &call,
            ModelOutcome::Answered(ModelAnswer {
                message,
                input_tokens: input,
                output_tokens: output,
            }),
            0.5,
        );
        self.push(body);
    }

    /// Every tool call running now, as last started.
    fn running(&self) -> Vec<ChildAttempt> {
        let mut out: Vec<ChildAttempt> = Vec::new();
        for e in &self.events {
            if let Some(c) = ChildAttempt::from_started(&e.body) {
                out.retain(|x| x.call != c.call);
                out.push(c);
            }
        }
        let agent = self.state.agent("triage").expect("agent");
        out.retain(|c| {
            agent
                .call(&c.call)
                .is_some_and(|x| x.status == CallStatus::Running)
        });
        out
    }

    fn tool_calls_started(&self) -> Vec<ChildAttempt> {
        let mut out: Vec<ChildAttempt> = Vec::new();
        for e in self.events.iter().rev() {
            match ChildAttempt::from_started(&e.body) {
                Some(c) => out.push(c),
                None if !out.is_empty() => break,
                None => {}
            }
        }
        out.reverse();
        out
    }

    fn finish_tool(&mut self, call: &ChildAttempt, outcome: ToolOutcome) {
        let body = tool_outcome_event(&self.state, call, outcome, 0.5);
        self.push(body);
    }

    fn signal(&mut self, name: &str, id: &str, payload: Value) {
        self.push(EventBody::SignalReceived {
            signal: name.into(),
            signal_id: id.into(),
            payload,
            by: Some("ada".into()),
            command_id: 1,
        });
    }

    fn step(&self) -> &aetheris_runtime::StepState {
        &self.state.steps["triage"]
    }
}

fn calls(list: &[(&str, Value)]) -> Message {
    Message {
        role: Role::Assistant,
        content: String::new(),
        tool_calls: list
            .iter()
            .enumerate()
            .map(|(i, (name, args))| ToolCallRequest {
                id: format!("call_{i}"),
                name: name.to_string(),
                arguments: args.to_string(),
            })
            .collect(),
        tool_call_id: None,
        is_error: false,
    }
}

fn final_answer(text: &str) -> Message {
    Message::text(Role::Assistant, text)
}

fn agent_spec() -> Value {
    json!({"provider": "p", "model": "m", "system": "You triage tickets.",
           "prompt": "Ticket: ${input.ticket}", "tools": ["lookup", "refund"], "max_turns": 5})
}

fn kinds(events: &[EventBody]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind()).collect()
}

#[test]
fn a_three_turn_agent_runs_answers_before_tools_and_finishes_with_the_answer() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    assert_eq!(sim.step().status, StepStatus::Running);
    let req = request(&sim.state, "triage", &Tools).expect("request");
    assert_eq!(
        req.messages[0],
        Message::text(Role::System, "You triage tickets.")
    );
    assert_eq!(req.messages[1].content, "Ticket: refund order A-17");
    assert_eq!(req.tools.len(), 2);

    // Turn 1: the model asks for a lookup.
    assert_eq!(kinds(&sim.round()), vec!["agent_model_started"]);
    assert!(
        sim.round().is_empty(),
        "nothing while the model call is in flight"
    );
    sim.answer(calls(&[("lookup", json!({"order": "A-17"}))]), 100, 10);
    // The answer is recorded; only now may its tool call start.
    let started = sim.round();
    assert_eq!(kinds(&started), vec!["agent_tool_started"]);
    let call = &sim.tool_calls_started()[0];
    assert_eq!(call.call, "triage.1.0");
    assert_eq!(call.effect, EffectClass::Pure);
    sim.finish_tool(call, ToolOutcome::Succeeded(json!({"total": 42})));

    // Turn 2: the tool result is in the conversation; the model asks for a refund.
    assert_eq!(kinds(&sim.round()), vec!["agent_model_started"]);
    let req = request(&sim.state, "triage", &Tools).expect("request");
    let result = req.messages.last().expect("a message");
    assert_eq!(result.role, Role::Tool);
    assert_eq!(result.tool_call_id.as_deref(), Some("call_0"));
    assert_eq!(result.content, r#"{"total":42}"#);
    sim.answer(calls(&[("refund", json!({"amount": 42}))]), 150, 12);
    sim.round();
    let refund = sim.tool_calls_started()[0].clone();
    assert_eq!(refund.effect, EffectClass::SideEffect);
    assert_ne!(refund.invocation_key, call.invocation_key);
    sim.finish_tool(&refund, ToolOutcome::Succeeded(json!({"refunded": 42})));

    // Turn 3: the final answer is the step's output.
    sim.round();
    sim.answer(final_answer("Refunded 42 for A-17."), 200, 8);
    assert_eq!(sim.step().status, StepStatus::Succeeded);
    assert_eq!(
        sim.step().output,
        Some(json!({"answer": "Refunded 42 for A-17.", "turns": 3,
                    "usage": {"input_tokens": 450, "output_tokens": 30}}))
    );
    let d = decide(&sim.state, sim.now, 8);
    assert!(
        matches!(d.finish, Some(EventBody::JobSucceeded { .. })),
        "{d:?}"
    );
    // Ledger rows: one per model call (idempotent) and tool call.
    let agent = sim.state.agent("triage").expect("agent");
    assert_eq!(agent.turns.len(), 3);
    assert_eq!(agent.conversation.len(), 2 + 5);
}

#[test]
fn unknown_tools_and_bad_arguments_are_told_to_the_model_not_run() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    sim.answer(
        calls(&[
            ("rm_rf", json!({})),
            ("lookup", json!({"order": 17})),
            ("refund", json!({"amount": 5})),
        ]),
        10,
        10,
    );
    let refusals = sim.round();
    assert_eq!(
        kinds(&refusals),
        vec!["agent_tool_refused", "agent_tool_refused"]
    );
    // The valid call starts in the next round; the refused ones never do.
    assert_eq!(kinds(&sim.round()), vec!["agent_tool_started"]);
    let started = sim.tool_calls_started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].call, "triage.1.2");
    sim.finish_tool(
        &started[0],
        ToolOutcome::Permanent("refund service said no".into()),
    );
    sim.round();
    let req = request(&sim.state, "triage", &Tools).expect("request");
    let results: Vec<&Message> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .collect();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|m| m.is_error));
    assert!(
        results[0].content.starts_with("unknown tool \"rm_rf\""),
        "{}",
        results[0].content
    );
    assert!(
        results[1].content.contains("$.order: expected string"),
        "{}",
        results[1].content
    );
    assert_eq!(results[2].content, "refund service said no");
}

#[test]
fn approvals_approve_edit_and_reject_and_record_who_decided() {
    let mut spec = agent_spec();
    spec["approve"] = json!(["refund"]);
    let mut sim = Sim::new(spec);
    sim.start();
    sim.round();
    sim.answer(
        calls(&[
            ("refund", json!({"amount": 40})),
            ("refund", json!({"amount": 50})),
            ("refund", json!({"amount": 60})),
            ("lookup", json!({"order": "A"})),
        ]),
        10,
        10,
    );
    // The lookup runs; the refunds wait for their approvals.
    assert_eq!(kinds(&sim.round()), vec!["agent_tool_started"]);
    assert_eq!(sim.step().status, StepStatus::Running);
    let lookup = sim.tool_calls_started()[0].clone();
    sim.finish_tool(&lookup, ToolOutcome::Succeeded(json!(1)));
    assert!(sim.round().is_empty());
    assert_eq!(sim.step().status, StepStatus::Waiting);
    let awaited = sim.state.agent("triage").unwrap().awaited_signals();
    assert_eq!(
        awaited,
        vec![
            "approve:triage.1.0",
            "approve:triage.1.1",
            "approve:triage.1.2"
        ]
    );

    sim.signal("approve:triage.1.0", "s1", Value::Null);
    sim.signal("approve:triage.1.1", "s2", json!({"args": {"amount": 45}}));
    sim.signal(
        "approve:triage.1.2",
        "s3",
        json!({"approve": false, "reason": "too much"}),
    );
    assert_eq!(
        kinds(&sim.round()),
        vec![
            "agent_tool_approved",
            "agent_tool_approved",
            "agent_tool_refused"
        ]
    );
    assert!(
        sim.state.signals.is_empty(),
        "every approval signal is consumed once"
    );
    let agent = sim.state.agent("triage").unwrap();
    assert_eq!(
        agent.call("triage.1.0").unwrap().approved_by.as_deref(),
        Some("ada")
    );
    assert_eq!(
        agent.call("triage.1.1").unwrap().arguments,
        r#"{"amount":45}"#
    );
    assert_eq!(
        agent.call("triage.1.2").unwrap().status,
        CallStatus::Refused
    );
    assert_eq!(
        kinds(&sim.round()),
        vec!["agent_tool_started", "agent_tool_started"]
    );
    let started = sim.tool_calls_started();
    let args: Vec<Value> = started.iter().map(|c| c.arguments(&sim.state)).collect();
    assert_eq!(args, vec![json!({"amount": 40}), json!({"amount": 45})]);
    for c in &started {
        sim.finish_tool(c, ToolOutcome::Succeeded(json!("ok")));
    }
    sim.round();
    let req = request(&sim.state, "triage", &Tools).unwrap();
    let rejected = req
        .messages
        .iter()
        .find(|m| m.tool_call_id.as_deref() == Some("call_2"))
        .unwrap();
    assert_eq!(rejected.content, "rejected by ada: too much");
    assert!(rejected.is_error);
}

#[test]
fn edited_arguments_that_fail_the_schema_are_refused() {
    let mut spec = agent_spec();
    spec["approve"] = json!(["refund"]);
    let mut sim = Sim::new(spec);
    sim.start();
    sim.round();
    sim.answer(calls(&[("refund", json!({"amount": 40}))]), 10, 10);
    sim.signal(
        "approve:triage.1.0",
        "s1",
        json!({"args": {"amount": 1000}}),
    );
    let e = sim.round();
    match &e[..] {
        [EventBody::AgentToolRefused { reason, by, .. }] => {
            assert!(reason.contains("must be at most 100"), "{reason}");
            assert_eq!(by.as_deref(), Some("ada"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_step_budget_parks_instead_of_overspending_and_a_signal_raises_or_stops_it() {
    let mut spec = agent_spec();
    spec["budget"] = json!({"tokens": 1000});
    spec["max_tokens"] = json!(200);
    spec["max_turns"] = json!(50);
    let mut sim = Sim::new(spec);
    sim.start();
    let mut turns = 0;
    loop {
        let e = sim.round();
        match e.first() {
            Some(EventBody::AgentModelStarted {
                reserved_tokens, ..
            }) => {
                let agent = sim.state.agent("triage").unwrap();
                assert!(agent.used_tokens() + reserved_tokens <= 1000);
                turns += 1;
                // Each call uses 250 tokens: more than max_tokens (the input is not bounded).
                sim.answer(calls(&[("lookup", json!({"order": "A"}))]), 200, 50);
                sim.round();
                let c = sim.tool_calls_started()[0].clone();
                sim.finish_tool(&c, ToolOutcome::Succeeded(json!(1)));
            }
            Some(EventBody::AgentBudgetReached {
                scope,
                limit,
                used,
                needed,
                ..
            }) => {
                assert_eq!((*scope, *limit), (BudgetScope::Step, 1000));
                assert!(used + needed > 1000);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let used = sim.state.agent("triage").unwrap().used_tokens();
    assert_eq!(turns, 3);
    // Never more than one call's overshoot of its reservation past the budget.
    assert!(used <= 1000 + 250, "{used}");
    assert_eq!(sim.step().status, StepStatus::Waiting);
    assert!(sim.round().is_empty(), "parked: no call");
    // A raise resumes it, until the raised budget is reached too.
    sim.signal("budget", "b1", json!({"tokens": 500}));
    assert_eq!(kinds(&sim.round()), vec!["agent_budget_decided"]);
    let mut more = 0;
    while let [EventBody::AgentModelStarted { .. }] = &sim.round()[..] {
        more += 1;
        sim.answer(calls(&[("lookup", json!({"order": "A"}))]), 200, 50);
        sim.round();
        let c = sim.tool_calls_started()[0].clone();
        sim.finish_tool(&c, ToolOutcome::Succeeded(json!(1)));
    }
    assert!(more >= 1);
    let agent = sim.state.agent("triage").unwrap();
    assert!(agent.park.is_some());
    assert!(agent.used_tokens() <= 1500 + 250, "{}", agent.used_tokens());
    // A stop fails the step with who stopped it.
    sim.signal("budget", "b2", json!({"stop": true}));
    sim.round();
    assert_eq!(sim.step().status, StepStatus::Failed);
    assert_eq!(
        sim.step().error.as_deref(),
        Some("stopped at its step token budget by ada")
    );
}

#[test]
fn the_job_budget_counts_every_agent_step() {
    let mut a = agent_spec();
    a["max_tokens"] = json!(100);
    let mut sim = Sim::with_plan(json!({"budget": {"tokens": 300}, "steps": [
        {"id": "triage", "agent": a.clone()}, {"id": "second", "agent": a}
    ]}));
    sim.start();
    // Both ask at once: together they fit (2 × (100 + input estimate)).
    let e = sim.round();
    assert_eq!(
        kinds(&e),
        vec!["agent_model_started", "agent_model_started"]
    );
    let calls: Vec<ModelAttempt> = e.iter().filter_map(ModelAttempt::from_started).collect();
    for c in &calls {
        let body = model_outcome_event(
            &sim.state,
            c,
            ModelOutcome::Answered(ModelAnswer {
                message: calls_msg(),
                input_tokens: 90,
                output_tokens: 10,
            }),
            0.5,
        );
        sim.push(body);
    }
    sim.round();
    for c in sim.tool_calls_started() {
        sim.finish_tool(&c, ToolOutcome::Succeeded(json!(1)));
    }
    let e = sim.round();
    assert_eq!(
        kinds(&e),
        vec!["agent_budget_reached", "agent_budget_reached"]
    );
    assert!(matches!(
        e[0],
        EventBody::AgentBudgetReached {
            scope: BudgetScope::Job,
            ..
        }
    ));
}

fn calls_msg() -> Message {
    calls(&[("lookup", json!({"order": "A"}))])
}

#[test]
fn the_tenants_daily_budget_parks_until_a_signal_or_the_next_day() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    let call = sim.model_call();
    let body = model_outcome_event(
        &sim.state,
        &call,
        ModelOutcome::Budget(BudgetScope::Tenant, "tenant t used its daily tokens".into()),
        0.5,
    );
    sim.push(body);
    assert_eq!(sim.step().status, StepStatus::Waiting);
    let d = decide_agents(&sim.state, sim.now, &CTX);
    assert!(d.events.is_empty());
    let next_day = 86_400_000;
    assert_eq!(d.wake_at_ms, Some(next_day));
    sim.now = next_day;
    assert_eq!(kinds(&sim.round()), vec!["agent_budget_decided"]);
    let e = sim.round();
    match &e[..] {
        // Asked again with the same key, as attempt 1: a refusal is not an attempt.
        [EventBody::AgentModelStarted {
            attempt,
            invocation_key,
            ..
        }] => {
            assert_eq!(*attempt, 1);
            assert_eq!(*invocation_key, call.invocation_key);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_turns_fails_the_step_when_the_model_still_calls_tools() {
    let mut spec = agent_spec();
    spec["max_turns"] = json!(2);
    let mut sim = Sim::new(spec);
    sim.start();
    for _ in 0..2 {
        sim.round();
        sim.answer(calls_msg(), 1, 1);
        sim.round();
        if sim.step().status == StepStatus::Failed {
            break;
        }
        let c = sim.tool_calls_started()[0].clone();
        sim.finish_tool(&c, ToolOutcome::Succeeded(json!(1)));
    }
    assert_eq!(sim.step().status, StepStatus::Failed);
    assert_eq!(
        sim.step().error.as_deref(),
        Some("max_turns (2) reached and the model still asks for tools")
    );
    assert!(matches!(
        decide(&sim.state, sim.now, 8).finish,
        Some(EventBody::JobFailed { .. })
    ));
}

#[test]
fn model_failures_retry_per_policy_honour_retry_after_then_fail_clearly() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    let first = sim.model_call();
    let body = model_outcome_event(
        &sim.state,
        &first,
        ModelOutcome::RetryAfter("429 rate limited".into(), 30_000),
        0.5,
    );
    assert!(matches!(
        body,
        EventBody::AgentModelFailed {
            retry_after_ms: Some(30_000),
            ..
        }
    ));
    sim.push(body);
    let d = decide_agents(&sim.state, sim.now, &CTX);
    assert!(d.events.is_empty() && d.wake_at_ms == Some(sim.now + 30_000));
    sim.now += 30_000;
    sim.round();
    let second = sim.model_call();
    assert_eq!(
        (second.attempt, &second.invocation_key),
        (2, &first.invocation_key)
    );
    sim.push(model_outcome_event(
        &sim.state,
        &second,
        ModelOutcome::Failed(ToolOutcome::Unknown("timed out after 5000ms".into())),
        0.5,
    ));
    sim.now += 60_000;
    sim.round();
    let third = sim.model_call();
    assert_eq!(third.attempt, 3);
    sim.push(model_outcome_event(
        &sim.state,
        &third,
        ModelOutcome::Failed(ToolOutcome::Retryable(
            "malformed JSON from the provider".into(),
        )),
        0.5,
    ));
    assert_eq!(sim.step().status, StepStatus::Failed);
    assert_eq!(
        sim.step().error.as_deref(),
        Some("model call failed: malformed JSON from the provider")
    );
    // A permanent error fails at once.
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    let c = sim.model_call();
    sim.push(model_outcome_event(
        &sim.state,
        &c,
        ModelOutcome::Failed(ToolOutcome::Permanent("401 invalid api key".into())),
        0.5,
    ));
    assert_eq!(sim.step().status, StepStatus::Failed);
}

#[test]
fn recovery_asks_the_model_again_with_the_same_key_and_never_reruns_a_side_effect() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    let asked = sim.model_call();
    // A crash with the model call in flight.
    let rec = recover_agents(&sim.state);
    assert_eq!(rec, vec![AgentRecovery::Ask(asked.clone())]);
    sim.push(asked.started_event(8)); // the new incarnation's restart folds
    sim.answer(
        calls(&[
            ("lookup", json!({"order": "A"})),
            ("refund", json!({"amount": 1})),
        ]),
        1,
        1,
    );
    sim.round();
    let started = sim.tool_calls_started();
    assert_eq!(started.len(), 2);
    // A crash with both tool calls in flight.
    let rec = recover_agents(&sim.state);
    assert_eq!(
        rec,
        vec![
            AgentRecovery::Reinvoke(started[0].clone()),
            AgentRecovery::Reconcile(started[1].clone())
        ]
    );
    // Re-starting the side_effect call is refused by the ledger.
    let mut again = sim.state.clone();
    assert!(again
        .projected([&started[1].started_event(8)], sim.now)
        .is_err());
    again = again
        .projected([&started[0].started_event(8)], sim.now)
        .unwrap();
    assert_eq!(
        again
            .agent("triage")
            .unwrap()
            .call("triage.1.0")
            .unwrap()
            .status,
        CallStatus::Running
    );
    // Unanswered reconcile: outcome unknown, the step waits for a confirmation.
    sim.finish_tool(&started[0], ToolOutcome::Succeeded(json!(1)));
    sim.finish_tool(&started[1], ToolOutcome::unrecorded());
    assert_eq!(sim.step().status, StepStatus::Waiting);
    assert!(sim.round().is_empty());
    // A human confirms it happened: the turn settles and the model is asked again.
    let confirm = aetheris_runtime::command_effect(
        &sim.state,
        false,
        3,
        aetheris_runtime::Command::Confirm {
            step: "triage.1.1".into(),
            outcome: aetheris_runtime::ConfirmOutcome::Succeeded,
            output: Some(json!({"refunded": 1})),
            by: "ops".into(),
            note: None,
        },
    );
    match confirm {
        aetheris_runtime::CommandEffect::Append(e) => sim.push(e),
        other => panic!("{other:?}"),
    }
    assert_eq!(kinds(&sim.round()), vec!["agent_model_started"]);
}

#[test]
fn messages_are_journaled_once_and_turn_events_do_not_grow_with_the_conversation() {
    let mut spec = agent_spec();
    spec["max_turns"] = json!(60);
    let mut sim = Sim::new(spec);
    sim.start();
    let mut sizes: Vec<usize> = Vec::new();
    for turn in 1..=50u32 {
        let before = sim.events.len();
        sim.round();
        sim.answer(
            calls(&[("lookup", json!({"order": format!("A-{:03}", turn % 7)}))]),
            10,
            10,
        );
        sim.round();
        let c = sim.tool_calls_started()[0].clone();
        sim.finish_tool(&c, ToolOutcome::Succeeded(json!({"status": "shipped"})));
        let bytes: usize = sim.events[before..]
            .iter()
            .map(|e| e.body.payload().len())
            .sum();
        sizes.push(bytes);
    }
    // The same lookup answer repeats: the journal holds it once, later events its digest.
    let answers: Vec<&EventBody> = sim
        .events
        .iter()
        .map(|e| &e.body)
        .filter(|b| matches!(b, EventBody::AgentModelAnswered { .. }))
        .collect();
    let bodies = |b: &EventBody| match b {
        EventBody::AgentModelAnswered { messages, .. } => {
            messages.iter().filter(|m| m.message.is_some()).count()
        }
        _ => 0,
    };
    assert_eq!(bodies(answers[0]), 1);
    assert_eq!(bodies(answers[7]), 0, "turn 8 repeats turn 1's answer");
    // Flat: the bytes of a turn's events at turn 50 are within a few bytes (longer turn
    // numbers) of turn 1's, whatever the conversation's length.
    let (first, last) = (sizes[1], sizes[49]);
    assert!(
        last <= first + 16,
        "turn 2: {first} bytes, turn 50: {last} bytes: {sizes:?}"
    );
    let agent = sim.state.agent("triage").unwrap();
    assert_eq!(agent.conversation.len(), 2 + 100);
    assert!(sim.state.messages.len() < agent.conversation.len());
}

#[test]
fn a_snapshot_at_any_point_replays_to_the_same_agent() {
    let mut spec = agent_spec();
    spec["approve"] = json!(["refund"]);
    let mut sim = Sim::new(spec);
    sim.start();
    sim.round();
    sim.answer(
        calls(&[
            ("refund", json!({"amount": 3})),
            ("lookup", json!({"order": "B"})),
        ]),
        5,
        5,
    );
    sim.round();
    sim.signal("approve:triage.1.0", "s1", json!({"args": {"amount": 2}}));
    sim.round();
    sim.round();
    for c in sim.running() {
        sim.finish_tool(&c, ToolOutcome::Succeeded(json!({"ok": c.call})));
    }
    sim.round();
    sim.answer(final_answer("done"), 5, 5);
    assert_eq!(sim.state.status, JobStatus::Running);
    let full = JobState::from_events(&sim.events).unwrap().unwrap();
    assert_eq!(full, sim.state);
    for k in 1..=sim.events.len() {
        let snap = JobState::from_events(&sim.events[..k]).unwrap().unwrap();
        let blob = encode_versioned(SNAPSHOT_FORMAT, &snap).unwrap();
        let snap: JobState = decode_versioned(SNAPSHOT_FORMAT, &blob).unwrap();
        let replayed = JobState::replay(Some(snap), &sim.events).unwrap().unwrap();
        assert_eq!(replayed, full, "from the snapshot at seq {k}");
    }
}

#[test]
fn the_fold_refuses_events_a_correct_writer_never_writes() {
    let mut sim = Sim::new(agent_spec());
    sim.start();
    sim.round();
    let call = sim.model_call();
    // An answer that does not end with an assistant message.
    let bad = EventBody::AgentModelAnswered {
        step: "triage".into(),
        call: call.call.clone(),
        turn: 1,
        attempt: 1,
        messages: vec![aetheris_runtime::agent::JournaledMessage {
            digest: Message::text(Role::User, "x").digest(),
            message: Some(Message::text(Role::User, "x")),
        }],
        input_tokens: 0,
        output_tokens: 0,
    };
    assert!(sim.state.projected([&bad], 2).is_err());
    // A digest whose body is neither given nor known.
    let bad = EventBody::AgentModelAnswered {
        step: "triage".into(),
        call: call.call.clone(),
        turn: 1,
        attempt: 1,
        messages: vec![aetheris_runtime::agent::JournaledMessage {
            digest: "ab".repeat(32),
            message: None,
        }],
        input_tokens: 0,
        output_tokens: 0,
    };
    assert!(sim.state.projected([&bad], 2).is_err());
    // A body that does not match its digest.
    let bad = EventBody::AgentModelAnswered {
        step: "triage".into(),
        call: call.call.clone(),
        turn: 1,
        attempt: 1,
        messages: vec![aetheris_runtime::agent::JournaledMessage {
            digest: "ab".repeat(32),
            message: Some(final_answer("x")),
        }],
        input_tokens: 0,
        output_tokens: 0,
    };
    assert!(sim.state.projected([&bad], 2).is_err());
    // A second model call while one runs, or an approval nobody sent.
    let mut next = call.clone();
    next.turn = 2;
    next.call = "triage.2".into();
    assert!(sim.state.projected([&next.started_event(7)], 2).is_err());
    let approve = EventBody::AgentToolApproved {
        step: "triage".into(),
        call: "triage.1.0".into(),
        signal_id: "nope".into(),
        args: None,
        by: None,
    };
    assert!(sim.state.projected([&approve], 2).is_err());
}

#[test]
fn a_prompt_whose_reference_resolves_to_nothing_fails_the_step() {
    let mut spec = agent_spec();
    spec["prompt"] = json!("${input.missing}");
    let mut sim = Sim::new(spec);
    sim.start();
    assert_eq!(sim.step().status, StepStatus::Failed);
    assert!(sim
        .step()
        .error
        .as_deref()
        .unwrap()
        .starts_with("prompt: reference"));
}
