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
