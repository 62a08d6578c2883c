//! Property test of G5: for random valid event sequences, folding snapshot(k) (through the
//! persisted codec) plus events[k..] equals folding all events, for every k.

use aetheris_runtime::codec::{decode_versioned, encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{
    decide, invocation_key, outcome_event, recover, EffectClass, EventBody, JobId, JobState, Plan,
    RecordedEvent, Recovery, ToolOutcome,
};
use proptest::prelude::*;
use serde_json::json;

fn plan(n: usize, deps: &[usize]) -> Plan {
    let steps: Vec<_> = (0..n)
        .map(|i| {
            let needs: Vec<String> = if i > 0 && !deps[i].is_multiple_of(3) {
                vec![format!("s{}", deps[i] % i)]
            } else {
                vec![]
            };
            match deps[i] % 7 {
                // Some steps wait for a signal or sleep: their events fold too.
                5 => json!({"id": format!("s{i}"), "wait": {"signal": "go", "timeout": "5ms"}, "needs": needs}),
                6 => json!({"id": format!("s{i}"), "sleep": "3ms", "needs": needs}),
                _ => json!({"id": format!("s{i}"), "tool": "echo", "args": {"i": i}, "needs": needs,
                   "effect": if deps[i].is_multiple_of(2) { "side_effect" } else { "idempotent" }}),
            }
        })
        .collect();
    serde_json::from_value(json!({ "steps": steps })).unwrap()
}

/// Drives a job with random outcomes using the real decision functions, so every sequence
/// is one a worker could have written (including crashes and recoveries).
fn simulate(n: usize, deps: &[usize], choices: &[u8]) -> Vec<RecordedEvent> {
    let job = JobId(uuid::Uuid::from_u128(42));
    let mut events = Vec::new();
    let push = |events: &mut Vec<RecordedEvent>, body: EventBody| {
        let seq = events.len() as u64 + 1;
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&seq.to_be_bytes());
        events.push(RecordedEvent {
            job_id: job,
            seq,
            recorded_at_ms: 1000 + seq as i64,
            body,
            prev_hash: [0; 32],
            hash,
        });
    };
    push(
        &mut events,
        EventBody::JobSubmitted {
            tenant: "t".into(),
            plan: plan(n, deps),
            input: json!({"a": 1}),
            idempotency_key: None,
        },
    );
    let mut state = JobState::from_events(&events).unwrap().unwrap();
    for (i, c) in choices.iter().enumerate() {
        let now = 1000 + events.len() as i64;
        let before = events.len();
        if c % 11 == 0 {
            // crash: recovery by a new incarnation
            for r in recover(&state) {
                let body = match r {
                    Recovery::Reinvoke(call) => call.started_event(i as u64),
                    // No reconcile hook answers here: the rule a worker applies then.
                    Recovery::Reconcile(call) => {
                        outcome_event(&state, &call, ToolOutcome::unrecorded(), 0.5)
                    }
                };
                push(&mut events, body);
            }
        } else {
            let running: Vec<String> = state
                .steps
                .iter()
                .filter(|(_, s)| s.status == aetheris_runtime::StepStatus::Running)
                .map(|(k, _)| k.clone())
                .collect();
            if !running.is_empty() && c % 2 == 0 {
                let step = running[*c as usize % running.len()].clone();
                let attempt = state.steps[&step].attempt;
                let body = match c % 7 {
                    0 => EventBody::StepFailed {
                        step,
                        attempt,
                        error: "boom".into(),
                        retryable: true,
                        retry_after_ms: if attempt < 3 {
                            Some(*c as u64 % 5)
                        } else {
                            None
                        },
                    },
                    _ => EventBody::StepSucceeded {
                        step,
                        attempt,
                        output: json!({"c": c, "n": [1, "x", null]}),
                    },
                };
                push(&mut events, body);
            } else {
                let d = decide(&state, now + (*c as i64 % 12), 1 + (*c as usize % 3));
                if c % 17 == 1 {
                    push(
                        &mut events,
                        EventBody::SignalReceived {
                            signal: "go".into(),
                            signal_id: format!("sig-{i}"),
                            payload: json!({"i": i}),
                            by: Some("ada".into()),
                            command_id: i as u64,
                        },
                    );
                } else if c % 19 == 1 {
                    push(
                        &mut events,
                        EventBody::JobParked {
                            wake_at_ms: d.wake_at_ms,
                        },
                    );
                } else if c % 23 == 1 {
                    push(
                        &mut events,
                        EventBody::JobCancelled {
                            by: "ops".into(),
                            reason: "test".into(),
                            command_id: i as u64,
                        },
                    );
                } else if let Some(f) = d.finish {
                    push(&mut events, f);
                } else {
                    for r in d.resolve {
                        push(&mut events, r);
                    }
                    for step in d.start {
                        let spec = state.plan.step(&step).unwrap();
                        if spec.wait.is_some() {
                            push(
                                &mut events,
                                EventBody::WaitStarted {
                                    step,
                                    timeout_ms: Some(5),
                                },
                            );
                            continue;
                        }
                        if spec.sleep.is_some() {
                            push(
                                &mut events,
                                EventBody::SleepStarted {
                                    step,
                                    duration_ms: 3,
                                },
                            );
                            continue;
                        }
                        let s = &state.steps[&step];
                        let effect = if state.plan.step(&step).unwrap().effect
                            == Some(EffectClass::SideEffect)
                        {
                            EffectClass::SideEffect
                        } else {
                            EffectClass::Idempotent
                        };
                        push(
                            &mut events,
                            EventBody::StepStarted {
                                invocation_key: invocation_key("t", job, &step, 0),
                                attempt: s.attempt + 1,
                                tool: "echo".into(),
                                effect,
                                fencing_token: 1,
                                step,
                            },
                        );
                    }
                }
            }
        }
        for e in &events[before..] {
            state.apply(e).expect("simulated events must fold");
        }
        if state.status.is_terminal()
            || state.status == aetheris_runtime::JobStatus::Waiting && c % 5 == 0
        {
            break;
        }
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn snapshot_plus_tail_equals_full_fold(n in 1usize..8, deps in prop::collection::vec(0usize..100, 8), choices in prop::collection::vec(any::<u8>(), 0..60)) {
        let events = simulate(n, &deps, &choices);
        let full = JobState::from_events(&events).unwrap().unwrap();
        for k in 1..=events.len() {
            let snap = JobState::from_events(&events[..k]).unwrap().unwrap();
            let blob = encode_versioned(SNAPSHOT_FORMAT, &snap).unwrap();
            let snap: JobState = decode_versioned(SNAPSHOT_FORMAT, &blob).unwrap();
            let replayed = JobState::replay(Some(snap), &events).unwrap().unwrap();
            prop_assert_eq!(&replayed, &full);
        }
    }

    #[test]
    fn a_gap_or_reorder_is_rejected(n in 1usize..5, deps in prop::collection::vec(0usize..100, 8), choices in prop::collection::vec(any::<u8>(), 4..40), cut in 1usize..100) {
        let mut events = simulate(n, &deps, &choices);
        prop_assume!(events.len() > 2);
        let i = 1 + cut % (events.len() - 1);
        events.remove(i);
        prop_assert!(JobState::from_events(&events).is_err() || i == events.len());
    }
}

mod agents {
    //! The same property for agent steps (G5): a job of two agent steps (one with approvals
    //! and a step budget) driven by the real agent decisions with random model answers
    //! (tool calls of known, unknown and approval-gated tools, bad arguments, final
    //! answers), random tool and model outcomes, crashes recovered by `recover_agents`,
    //! approvals, rejections and budget signals. Reloading from any snapshot (through the
    //! persisted codec) yields the same conversation, journal and pending calls.

    use super::*;
    use aetheris_runtime::agent::decide::start_event;
    use aetheris_runtime::agent::{
        decide_agents, model_outcome_event, recover_agents, tool_outcome_event, AgentContext,
        AgentRecovery, AgentTools, BudgetScope, ChildAttempt, Message, ModelAnswer, ModelAttempt,
        ModelOutcome, Role, ToolCallRequest, ToolDecl,
    };

    struct Tools;
    impl AgentTools for Tools {
        fn effect_class(&self, tool: &str) -> Option<EffectClass> {
            match tool {
                "echo" => Some(EffectClass::Pure),
                "pay" => Some(EffectClass::SideEffect),
                _ => None,
            }
        }
        fn declaration(&self, tool: &str) -> Option<ToolDecl> {
            self.effect_class(tool).map(|_| ToolDecl {
                name: tool.into(),
                description: String::new(),
                parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
            })
        }
    }

    fn answer(c: u8, i: usize) -> Message {
        let tools = ["echo", "pay", "nope"];
        let n = c as usize % 4;
        if c.is_multiple_of(9) {
            return Message::text(Role::Assistant, format!("done {}", c % 3));
        }
        Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: (0..n.max(1))
                .map(|k| ToolCallRequest {
                    id: format!("id{i}-{k}"),
                    name: tools[(c as usize + k) % 3].into(),
                    arguments: if (c as usize + k).is_multiple_of(5) {
                        "{\"n\": \"x\"}".into()
                    } else {
                        format!("{{\"n\": {}}}", k % 2)
                    },
                })
                .collect(),
            tool_call_id: None,
            is_error: false,
        }
    }

    fn simulate(choices: &[u8]) -> Vec<RecordedEvent> {
        let job = JobId(uuid::Uuid::from_u128(77));
        let plan = json!({"budget": {"tokens": 5000}, "steps": [
            {"id": "a", "agent": {"provider": "p", "model": "m", "prompt": "go ${input.a}",
             "tools": ["echo", "pay"], "approve": ["pay"], "max_turns": 6,
             "budget": {"tokens": 900}, "max_tokens": 100},
             "retry": {"max_attempts": 2, "initial": "1ms"}},
            {"id": "b", "agent": {"provider": "p", "model": "m", "system": "s",
             "prompt": "again", "tools": ["echo"], "max_turns": 4}}
        ]});
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut state: Option<JobState> = None;
        let mut now = 1_000i64;
        let push = |events: &mut Vec<RecordedEvent>,
                    state: &mut Option<JobState>,
                    body: EventBody,
                    now: i64| {
            let seq = events.len() as u64 + 1;
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&seq.to_be_bytes());
            let e = RecordedEvent {
                job_id: job,
                seq,
                recorded_at_ms: now,
                body,
                prev_hash: [0; 32],
                hash,
            };
            match state.as_mut() {
                None => *state = Some(JobState::genesis(&e).unwrap()),
                Some(s) => s
                    .apply(&e)
                    .unwrap_or_else(|err| panic!("{:?} does not fold: {err}", e.body)),
            }
            events.push(e);
        };
        push(
            &mut events,
            &mut state,
            EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).unwrap(),
                input: json!({"a": 1}),
                idempotency_key: None,
            },
            now,
        );
        let ctx = AgentContext {
            fencing_token: 1,
            tools: &Tools,
        };
        let mut running_models: Vec<ModelAttempt> = Vec::new();
        let mut running_tools: Vec<ChildAttempt> = Vec::new();
        for (i, c) in choices.iter().enumerate() {
            now += 1 + (*c as i64 % 3);
            let st = state.clone().unwrap();
            if st.status.is_terminal() {
                break;
            }
            let mut bodies: Vec<EventBody> = Vec::new();
            match c % 13 {
                0 => {
                    // A crash: the new incarnation recovers.
                    running_models.clear();
                    running_tools.clear();
                    for r in recover_agents(&st) {
                        match r {
                            AgentRecovery::Ask(m) => {
                                bodies.push(m.started_event(i as u64));
                                running_models.push(m);
                            }
                            AgentRecovery::Reinvoke(t) => {
                                bodies.push(t.started_event(i as u64));
                                running_tools.push(t);
                            }
                            AgentRecovery::Reconcile(t) => bodies.push(tool_outcome_event(
                                &st,
                                &t,
                                ToolOutcome::unrecorded(),
                                0.5,
                            )),
                        }
                    }
                }
                1 | 2 if !running_models.is_empty() => {
                    let m = running_models.remove(*c as usize % running_models.len());
                    let outcome = match c % 5 {
                        0 => ModelOutcome::Failed(ToolOutcome::Retryable("503".into())),
                        1 => ModelOutcome::RetryAfter("429".into(), 3),
                        2 if c % 2 == 0 => ModelOutcome::Budget(BudgetScope::Tenant, "day".into()),
                        _ => ModelOutcome::Answered(ModelAnswer {
                            message: answer(*c, i),
                            input_tokens: 40 + *c as u64,
                            output_tokens: 20,
                        }),
                    };
                    bodies.push(model_outcome_event(&st, &m, outcome, 0.5));
                }
                3 | 4 if !running_tools.is_empty() => {
                    let t = running_tools.remove(*c as usize % running_tools.len());
                    let outcome = match c % 4 {
                        0 => ToolOutcome::Retryable("busy".into()),
                        1 => ToolOutcome::Unknown("timed out".into()),
                        _ => ToolOutcome::Succeeded(json!({"c": c})),
                    };
                    bodies.push(tool_outcome_event(&st, &t, outcome, 0.5));
                }
                5 => {
                    // A human: approve (maybe edited) or reject a waiting call, raise or stop
                    // a budget, or confirm an unknown outcome.
                    for (id, s) in &st.steps {
                        let Some(agent) = s.agent.as_deref() else {
                            continue;
                        };
                        for call in agent.current_calls() {
                            if call.awaits_approval() {
                                let payload = match c % 3 {
                                    0 => json!(null),
                                    1 => json!({"args": {"n": 1}}),
                                    _ => json!({"approve": false, "reason": "no"}),
                                };
                                bodies.push(EventBody::SignalReceived {
                                    signal: format!("approve:{}", call.id),
                                    signal_id: format!("s{i}-{}", call.id),
                                    payload,
                                    by: Some("ada".into()),
                                    command_id: i as u64,
                                });
                            } else if call.status
                                == aetheris_runtime::agent::CallStatus::OutcomeUnknown
                            {
                                bodies.push(EventBody::StepConfirmed {
                                    step: call.id.clone(),
                                    outcome: if c % 2 == 0 {
                                        aetheris_runtime::ConfirmOutcome::Succeeded
                                    } else {
                                        aetheris_runtime::ConfirmOutcome::NotExecuted
                                    },
                                    output: Some(json!("confirmed")),
                                    by: "ops".into(),
                                    note: None,
                                    command_id: i as u64,
                                });
                            }
                        }
                        if agent.park.is_some() && !bodies.iter().any(|b| matches!(b, EventBody::SignalReceived { signal, .. } if signal == "budget")) {
                            bodies.push(EventBody::SignalReceived {
                                signal: "budget".into(), signal_id: format!("b{i}-{id}"),
                                payload: if c % 4 == 1 { json!({"stop": true}) } else { json!({"tokens": 400}) },
                                by: Some("ada".into()), command_id: i as u64,
                            });
                        }
                    }
                }
                6 => {
                    // Time passes (retries come due; a tenant's new day).
                    now += 86_400_000;
                }
                _ => {
                    let d = decide(&st, now, 4);
                    if let Some(f) = d.finish {
                        bodies.push(f);
                    } else {
                        for step in d.start {
                            bodies.push(start_event(&st, &step).unwrap());
                        }
                        if bodies.is_empty() {
                            let d = decide_agents(&st, now, &ctx);
                            for e in d.events {
                                if let Some(m) = ModelAttempt::from_started(&e) {
                                    running_models.push(m);
                                }
                                if let Some(t) = ChildAttempt::from_started(&e) {
                                    running_tools.push(t);
                                }
                                bodies.push(e);
                            }
                        }
                    }
                }
            }
            for b in bodies {
                push(&mut events, &mut state, b, now);
            }
        }
        events
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn agent_snapshot_plus_tail_equals_full_fold(choices in prop::collection::vec(any::<u8>(), 0..120)) {
            let events = simulate(&choices);
            let full = JobState::from_events(&events).unwrap().unwrap();
            for k in 1..=events.len() {
                let snap = JobState::from_events(&events[..k]).unwrap().unwrap();
                let blob = encode_versioned(SNAPSHOT_FORMAT, &snap).unwrap();
                let snap: JobState = decode_versioned(SNAPSHOT_FORMAT, &blob).unwrap();
                let replayed = JobState::replay(Some(snap), &events).unwrap().unwrap();
                prop_assert_eq!(&replayed, &full);
            }
        }
    }

    /// The simulation reaches the interesting states (not a vacuous property).
    #[test]
    fn the_simulation_covers_turns_approvals_budgets_and_finishes() {
        let mut kinds = std::collections::BTreeSet::new();
        let mut rng = 0x2545F4914F6CDD1Du64;
        for _ in 0..300 {
            let choices: Vec<u8> = (0..120)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % 256) as u8
                })
                .collect();
            for e in simulate(&choices) {
                kinds.insert(e.body.kind());
            }
        }
        for k in [
            "agent_model_answered",
            "agent_tool_succeeded",
            "agent_tool_refused",
            "agent_tool_approved",
            "agent_budget_reached",
            "agent_budget_decided",
            "agent_tool_outcome_unknown",
            "step_confirmed",
            "agent_model_failed",
        ] {
            assert!(kinds.contains(k), "{k} never happened: {kinds:?}");
        }
    }
}
