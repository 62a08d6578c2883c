//! Next-step decisions: given a folded state and the current time (from the store's clock,
//! passed in), which steps start now (ready steps in plan order, bounded parallelism per
//! job), whether the job finishes, and when to look again. Also the recovery rule of G2 for
//! steps found `running` when a job is (re)loaded by a new incarnation.

use crate::event::EventBody;
use crate::outcome::Attempt;
use crate::plan::EffectClass;
use crate::state::{JobState, StepStatus};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Steps to start now, in plan order.
    pub start: Vec<String>,
    /// The terminal event to append, if the job is done.
    pub finish: Option<EventBody>,
    /// Waits and sleeps that resolve now: `wait_completed` (a buffered signal matches),
    /// `wait_timed_out`, `sleep_finished`.
    pub resolve: Vec<EventBody>,
    /// The earliest future time something becomes due (a retry, a timeout, a timer).
    pub wake_at_ms: Option<i64>,
}

impl Decision {
    fn wake(&mut self, t: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(t, |w| w.min(t)));
    }
}

pub fn decide(state: &JobState, now_ms: i64, max_parallel: usize) -> Decision {
    let mut d = Decision::default();
    if state.status.is_terminal() {
        return d;
    }
    let running = state.steps.values().filter(|s| s.in_flight()).count();
    if let Some((id, st)) = state
        .steps
        .iter()
        .find(|(_, s)| s.status == StepStatus::Failed)
    {
        if running == 0 {
            d.finish = Some(EventBody::JobFailed {
                error: format!(
                    "step {id:?} failed: {}",
                    st.error.as_deref().unwrap_or("unknown error")
                ),
                step: Some(id.clone()),
            });
        }
        return d;
    }
    if state
        .steps
        .values()
        .all(|s| s.status == StepStatus::Succeeded)
    {
        let mut out = Map::new();
        for sink in state.plan.sinks() {
            if let Some(o) = state.steps.get(sink).and_then(|s| s.output.clone()) {
                out.insert(sink.to_string(), o);
            }
        }
        d.finish = Some(EventBody::JobSucceeded {
            output: Value::Object(out),
        });
        return d;
    }
    let mut room = max_parallel.max(1).saturating_sub(running);
    let mut consumed: Vec<&str> = Vec::new();
    for spec in &state.plan.steps {
        let Some(st) = state.steps.get(&spec.id) else {
            continue;
        };
        // A started agent step decides for itself (`agent::decide_agents`).
        if spec.agent.is_some() && st.status != StepStatus::Pending {
            continue;
        }
        match st.status {
            StepStatus::Waiting => {
                let name = spec.wait.as_ref().map(|w| w.signal.as_str()).unwrap_or("");
                let signal = state
                    .signals
                    .get(name)
                    .and_then(|v| v.iter().find(|b| !consumed.contains(&b.signal_id.as_str())));
                if let Some(b) = signal {
                    consumed.push(&b.signal_id);
                    d.resolve.push(EventBody::WaitCompleted {
                        step: spec.id.clone(),
                        signal_id: b.signal_id.clone(),
                        output: serde_json::json!({"signal": name, "payload": b.payload, "by": b.by}),
                    });
                } else if let Some(t) = st.deadline_ms {
                    if t <= now_ms {
                        d.resolve.push(EventBody::WaitTimedOut {
                            step: spec.id.clone(),
                        });
                    } else {
                        d.wake(t);
                    }
                }
                continue;
            }
            StepStatus::Sleeping => {
                match st.deadline_ms {
                    Some(t) if t > now_ms => d.wake(t),
                    _ => d.resolve.push(EventBody::SleepFinished {
                        step: spec.id.clone(),
                    }),
                }
                continue;
            }
            StepStatus::Pending => {}
            _ => continue,
        }
        let needs_met = spec.needs.iter().all(|n| {
            state
                .steps
                .get(n)
                .map(|s| s.status == StepStatus::Succeeded)
                .unwrap_or(false)
        });
        if !needs_met {
            continue;
        }
        match st.retry_at_ms {
            Some(t) if t > now_ms => d.wake(t),
            // Waits, sleeps and agents cost nothing while pending: they need no parallel
            // slot (an agent's calls are bounded by its turns).
            _ if spec.tool.is_none() => d.start.push(spec.id.clone()),
            _ if room > 0 => {
                d.start.push(spec.id.clone());
                room -= 1;
            }
            _ => {}
        }
    }
    d
}

/// What a new incarnation does with a step it finds `running`: started, no result recorded
/// (G2). The one recovery rule; the worker only carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// pure / idempotent: append the attempt's `step_started` again (same invocation key,
    /// same attempt, the new fencing token), then call the tool again.
    Reinvoke(Attempt),
    /// side_effect: never a silent re-run. Ask the tool's reconcile hook, by key, what
    /// happened; its answer becomes the step's outcome through
    /// [`outcome_event`](crate::outcome::outcome_event), and no answer is
    /// [`ToolOutcome::unrecorded`](crate::outcome::ToolOutcome::unrecorded): the step
    /// becomes `outcome_unknown` and waits for a human.
    Reconcile(Attempt),
}

/// The recovery of every running step, in step-id order. A running step always has the
/// invocation key and effect class its `step_started` recorded; one without (which the
/// fold never produces) is left alone rather than guessed at.
pub fn recover(state: &JobState) -> Vec<Recovery> {
    state
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Running)
        .filter_map(|(id, s)| {
            let call = Attempt {
                step: id.clone(),
                attempt: s.attempt,
                invocation_key: s.invocation_key.clone()?,
                tool: state.plan.step(id)?.tool.clone()?,
                effect: s.effect.unwrap_or(EffectClass::UNKNOWN_DEFAULT),
            };
            Some(if call.effect.reinvocable() {
                Recovery::Reinvoke(call)
            } else {
                Recovery::Reconcile(call)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The recovery rule, per effect class: what a new incarnation does with each step it
    //! finds running.

    use super::*;
    use crate::event::RecordedEvent;
    use crate::ids::JobId;
    use crate::outcome::{outcome_event, ToolOutcome};
    use serde_json::json;

    /// A job with one tool step per effect class (`a_pure`, `b_idem`, `c_side`) and one
    /// with no declared effect (`d_none`), every one started once; `b_idem` on attempt 2.
    fn all_running() -> JobState {
        let plan = json!({"steps": [
            {"id": "a_pure", "tool": "echo", "effect": "pure"},
            {"id": "b_idem", "tool": "echo", "effect": "idempotent", "retry": {"max_attempts": 3}},
            {"id": "c_side", "tool": "http", "effect": "side_effect"},
            {"id": "d_none", "tool": "http"},
            {"id": "e_later", "tool": "echo", "needs": ["a_pure"]}
        ]});
        let state = JobState::genesis(&RecordedEvent {
            job_id: JobId(uuid::Uuid::from_u128(3)),
            seq: 1,
            recorded_at_ms: 1_000,
            body: EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).expect("plan"),
                input: json!({}),
                idempotency_key: None,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        })
        .expect("genesis");
        let call = |step: &str, attempt, effect| Attempt {
            step: step.into(),
            attempt,
            invocation_key: format!("key-{step}"),
            tool: if step.starts_with('c') || step.starts_with('d') {
                "http".into()
            } else {
                "echo".into()
            },
            effect,
        };
        let bodies = [
            call("a_pure", 1, EffectClass::Pure).started_event(1),
            call("b_idem", 1, EffectClass::Idempotent).started_event(1),
            EventBody::StepFailed {
                step: "b_idem".into(),
                attempt: 1,
                error: "refused".into(),
                retryable: true,
                retry_after_ms: Some(0),
            },
            call("b_idem", 2, EffectClass::Idempotent).started_event(1),
            call("c_side", 1, EffectClass::SideEffect).started_event(1),
            call("d_none", 1, EffectClass::UNKNOWN_DEFAULT).started_event(1),
        ];
        state.projected(&bodies, 1_000).expect("fold")
    }

    #[test]
    fn reinvocable_steps_start_again_with_the_same_key_and_attempt() {
        let state = all_running();
        let recovered = recover(&state);
        let reinvoked: Vec<_> = recovered
            .iter()
            .filter_map(|r| match r {
                Recovery::Reinvoke(call) => Some(call.clone()),
                Recovery::Reconcile(_) => None,
            })
            .collect();
        assert_eq!(
            reinvoked,
            vec![
                Attempt {
                    step: "a_pure".into(),
                    attempt: 1,
                    invocation_key: "key-a_pure".into(),
                    tool: "echo".into(),
                    effect: EffectClass::Pure,
                },
                Attempt {
                    step: "b_idem".into(),
                    attempt: 2,
                    invocation_key: "key-b_idem".into(),
                    tool: "echo".into(),
                    effect: EffectClass::Idempotent,
                },
            ]
        );
        // Appending their `step_started` again folds (the ledger allows it for them).
        let again: Vec<_> = reinvoked.iter().map(|c| c.started_event(2)).collect();
        let after = state.projected(&again, 2_000).expect("re-start folds");
        assert_eq!(after.steps["b_idem"].attempt, 2);
    }

    #[test]
    fn side_effect_steps_and_steps_of_unknown_effect_are_reconciled_never_reinvoked() {
        let state = all_running();
        let reconciled: Vec<_> = recover(&state)
            .into_iter()
            .filter_map(|r| match r {
                Recovery::Reconcile(call) => Some((call.step, call.effect)),
                Recovery::Reinvoke(_) => None,
            })
            .collect();
        assert_eq!(
            reconciled,
            vec![
                ("c_side".to_string(), EffectClass::SideEffect),
                ("d_none".to_string(), EffectClass::SideEffect),
            ]
        );
        // Re-starting one would break the ledger: the fold refuses it.
        let call = Attempt {
            step: "c_side".into(),
            attempt: 1,
            invocation_key: "key-c_side".into(),
            tool: "http".into(),
            effect: EffectClass::SideEffect,
        };
        assert!(state.projected([&call.started_event(2)], 2_000).is_err());
    }

    #[test]
    fn an_unanswered_reconcile_leaves_the_step_for_a_human() {
        let state = all_running();
        for r in recover(&state) {
            if let Recovery::Reconcile(call) = r {
                let event = outcome_event(&state, &call, ToolOutcome::unrecorded(), 0.5);
                assert!(
                    matches!(&event, EventBody::StepOutcomeUnknown { step, .. } if *step == call.step)
                );
            }
        }
    }

    #[test]
    fn steps_that_are_not_running_need_no_recovery() {
        let state = all_running();
        let steps: Vec<String> = recover(&state)
            .into_iter()
            .map(|r| match r {
                Recovery::Reinvoke(c) | Recovery::Reconcile(c) => c.step,
            })
            .collect();
        assert!(!steps.contains(&"e_later".to_string()));
        let done = state
            .projected(
                [&EventBody::StepSucceeded {
                    step: "a_pure".into(),
                    attempt: 1,
                    output: json!(1),
                }],
                2_000,
            )
            .expect("fold");
        assert_eq!(recover(&done).len(), 3);
        assert!(recover(&JobState {
            steps: Default::default(),
            ..done
        })
        .is_empty());
    }
}
