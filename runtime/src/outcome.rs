//! The tool-outcome rule: how a finished tool call becomes the event that records it.
//!
//! A worker calls a tool only after the call's `step_started` is durable (G2); whatever the
//! call answers, [`outcome_event`] says what to append. Invariant kept here (G2): a call that
//! may have taken effect is never silently repeated — an unknown outcome on a `side_effect`
//! step becomes `step_outcome_unknown` and the job waits for a human (or a reconcile hook),
//! while a `pure` or `idempotent` one is tried again with the same invocation key. The rule
//! reads no clock and draws no random number: the retry jitter is passed in, and the delay
//! it yields is recorded in the event, so replay never recomputes it (G5).

use crate::event::EventBody;
use crate::plan::{EffectClass, RetryPolicy};
use crate::retry::backoff_ms;
use crate::state::JobState;
use serde_json::Value;

/// One attempt of one tool step, as its `step_started` event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub step: String,
    /// 1-based; a re-invocation after a crash keeps the attempt it re-runs.
    pub attempt: u32,
    /// The same for every attempt of the step, across retries and workers.
    pub invocation_key: String,
    pub tool: String,
    /// The effect class the call runs with (the step's own, or its tool's).
    pub effect: EffectClass,
}

impl Attempt {
    /// The attempt a `step_started` event starts; `None` for any other event.
    pub fn from_started(body: &EventBody) -> Option<Attempt> {
        match body {
            EventBody::StepStarted {
                step,
                attempt,
                invocation_key,
                tool,
                effect,
                ..
            } => Some(Attempt {
                step: step.clone(),
                attempt: *attempt,
                invocation_key: invocation_key.clone(),
                tool: tool.clone(),
                effect: *effect,
            }),
            _ => None,
        }
    }

    /// The `step_started` event of this attempt, written under `fencing_token`.
    pub fn started_event(&self, fencing_token: u64) -> EventBody {
        EventBody::StepStarted {
            step: self.step.clone(),
            attempt: self.attempt,
            invocation_key: self.invocation_key.clone(),
            tool: self.tool.clone(),
            effect: self.effect,
            fencing_token,
        }
    }
}

/// How a tool call ended, as far as the worker can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// The call took effect and answered this output.
    Succeeded(Value),
    /// Nothing was done (e.g. connection refused): try again per the step's retry policy.
    Retryable(String),
    /// A definite failure (or the call could not be made at all): the step fails.
    Permanent(String),
    /// The call may or may not have taken effect (timeout mid-request, panic, a worker
    /// that stopped before recording a result).
    Unknown(String),
    /// The call is known not to have taken effect (a reconcile hook's answer): run it again
    /// now, with the same key, if the retry policy has attempts left.
    NotExecuted,
}

/// Why a call found started without a result, and not reconciled, has an unknown outcome.
pub const UNRECORDED_REASON: &str =
    "started by an earlier incarnation that stopped before recording a result";

/// The error a `not_executed` reconcile answer records.
pub const NOT_EXECUTED_ERROR: &str = "reconciled: the call was not executed";

impl ToolOutcome {
    /// The outcome of a call whose result no incarnation recorded and no tool could tell.
    pub fn unrecorded() -> ToolOutcome {
        ToolOutcome::Unknown(UNRECORDED_REASON.to_string())
    }
}

/// The event recording `outcome` of `call`, a step of the job in `state`.
///
/// - `Succeeded` → `step_succeeded` with the output.
/// - `Permanent` → `step_failed`, not retryable: the step (and so the job) fails.
/// - `Unknown` on a `side_effect` call → `step_outcome_unknown`: never a silent re-run.
/// - `Retryable`, or `Unknown` on a `pure`/`idempotent` call → `step_failed`, retryable,
///   with a backoff delay (`retry::backoff_ms` with `jitter01`, a number in [0,1)) while
///   the step's retry policy has attempts left, none once `call.attempt` is the last.
/// - `NotExecuted` → `step_failed`, retryable, due at once while attempts are left.
pub fn outcome_event(
    state: &JobState,
    call: &Attempt,
    outcome: ToolOutcome,
    jitter01: f64,
) -> EventBody {
    let policy = state
        .plan
        .step(&call.step)
        .map(|spec| spec.retry_policy())
        .unwrap_or_default();
    match classify(&policy, call.effect, call.attempt, outcome, jitter01) {
        Recorded::Succeeded(output) => EventBody::StepSucceeded {
            step: call.step.clone(),
            attempt: call.attempt,
            output,
        },
        Recorded::Failed {
            error,
            retryable,
            retry_after_ms,
        } => EventBody::StepFailed {
            step: call.step.clone(),
            attempt: call.attempt,
            error,
            retryable,
            retry_after_ms,
        },
        Recorded::Unknown(reason) => EventBody::StepOutcomeUnknown {
            step: call.step.clone(),
            attempt: call.attempt,
            reason,
        },
    }
}

/// What the outcome of a call records, whatever records it (a plan step's events or an
/// agent's tool-call events): the one rule of [`outcome_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Succeeded(Value),
    /// `retry_after_ms` set: the call runs again that long after the event.
    Failed {
        error: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
    },
    /// A side_effect call whose outcome is unknown: a human confirms it.
    Unknown(String),
}

/// The rule of [`outcome_event`] for attempt `attempt` of a call with `effect` under
/// `policy` (see there).
pub fn classify(
    policy: &RetryPolicy,
    effect: EffectClass,
    attempt: u32,
    outcome: ToolOutcome,
    jitter01: f64,
) -> Recorded {
    let attempts_left = attempt < policy.max_attempts;
    let failed = |error: String, retryable: bool, retry_after_ms: Option<u64>| Recorded::Failed {
        error,
        retryable,
        retry_after_ms,
    };
    match outcome {
        ToolOutcome::Succeeded(output) => Recorded::Succeeded(output),
        ToolOutcome::Permanent(error) => failed(error, false, None),
        ToolOutcome::Unknown(reason) if !effect.reinvocable() => Recorded::Unknown(reason),
        ToolOutcome::Retryable(error) | ToolOutcome::Unknown(error) => {
            let delay = attempts_left.then(|| backoff_ms(policy, attempt, jitter01));
            failed(error, true, delay)
        }
        ToolOutcome::NotExecuted => failed(
            NOT_EXECUTED_ERROR.to_string(),
            true,
            attempts_left.then_some(0),
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Every branch of the rule: each effect class × each outcome × a middle attempt and
    //! the last one. Each expected event is also folded, so the rule never emits an event
    //! the fold refuses.

    use super::*;
    use crate::event::RecordedEvent;
    use crate::ids::JobId;
    use crate::state::StepStatus;
    use serde_json::json;

    const EFFECTS: [EffectClass; 3] = [
        EffectClass::Pure,
        EffectClass::Idempotent,
        EffectClass::SideEffect,
    ];
    /// The plan's retry policy: 3 attempts, exponential from 100 ms.
    const MAX_ATTEMPTS: u32 = 3;

    /// A job whose only step `s` has run `attempt` attempts with `effect`, the last one
    /// still running.
    fn running(effect: EffectClass, attempt: u32) -> (JobState, Attempt) {
        let plan = json!({"steps": [{"id": "s", "tool": "echo", "effect": effect.as_str(),
            "retry": {"max_attempts": MAX_ATTEMPTS, "initial": "100ms"}}]});
        let job = JobId(uuid::Uuid::from_u128(7));
        let mut state = JobState::genesis(&RecordedEvent {
            job_id: job,
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
        let mut call = Attempt {
            step: "s".into(),
            attempt: 1,
            invocation_key: "key-s".into(),
            tool: "echo".into(),
            effect,
        };
        for n in 1..=attempt {
            call.attempt = n;
            let mut bodies = vec![call.started_event(9)];
            if n < attempt {
                bodies.push(failed("earlier", Some(0), n));
            }
            state = state
                .projected(&bodies, 1_000)
                .expect("earlier attempts fold");
        }
        (state, call)
    }

    fn failed(error: &str, retry_after_ms: Option<u64>, attempt: u32) -> EventBody {
        EventBody::StepFailed {
            step: "s".into(),
            attempt,
            error: error.into(),
            retryable: true,
            retry_after_ms,
        }
    }

    /// The event for `outcome`, checked to fold; and the step's status after it.
    fn decide(effect: EffectClass, attempt: u32, outcome: ToolOutcome) -> (EventBody, StepStatus) {
        let (state, call) = running(effect, attempt);
        let event = outcome_event(&state, &call, outcome, 0.5);
        let after = state
            .projected([&event], 2_000)
            .unwrap_or_else(|e| panic!("{event:?} does not fold: {e}"));
        (event, after.steps["s"].status)
    }

    #[test]
    fn success_records_the_output_for_every_effect_and_attempt() {
        for effect in EFFECTS {
            for attempt in [1, MAX_ATTEMPTS] {
                let (event, status) = decide(effect, attempt, ToolOutcome::Succeeded(json!(42)));
                assert_eq!(
                    event,
                    EventBody::StepSucceeded {
                        step: "s".into(),
                        attempt,
                        output: json!(42)
                    }
                );
                assert_eq!(status, StepStatus::Succeeded);
            }
        }
    }

    #[test]
    fn a_permanent_error_fails_the_step_even_with_attempts_left() {
        for effect in EFFECTS {
            for attempt in [1, MAX_ATTEMPTS] {
                let (event, status) = decide(
                    effect,
                    attempt,
                    ToolOutcome::Permanent("no such user".into()),
                );
                assert_eq!(
                    event,
                    EventBody::StepFailed {
                        step: "s".into(),
                        attempt,
                        error: "no such user".into(),
                        retryable: false,
                        retry_after_ms: None
                    }
                );
                assert_eq!(status, StepStatus::Failed);
            }
        }
    }

    #[test]
    fn a_retryable_error_backs_off_while_attempts_are_left_for_every_effect() {
        for effect in EFFECTS {
            // Attempt 1 of 3, exponential from 100 ms: base 100, half fixed + jitter 0.5
            // of the other half = 75. Attempt 2: base 200 → 150.
            for (attempt, delay) in [(1, 75), (2, 150)] {
                let (event, status) =
                    decide(effect, attempt, ToolOutcome::Retryable("refused".into()));
                assert_eq!(event, failed("refused", Some(delay), attempt), "{effect:?}");
                assert_eq!(status, StepStatus::Pending);
            }
        }
    }

    #[test]
    fn a_retryable_error_on_the_last_attempt_fails_the_step_for_every_effect() {
        for effect in EFFECTS {
            let (event, status) = decide(
                effect,
                MAX_ATTEMPTS,
                ToolOutcome::Retryable("refused".into()),
            );
            assert_eq!(event, failed("refused", None, MAX_ATTEMPTS), "{effect:?}");
            assert_eq!(status, StepStatus::Failed);
        }
    }

    #[test]
    fn an_unknown_outcome_of_a_side_effect_waits_for_a_human_on_any_attempt() {
        for attempt in [1, MAX_ATTEMPTS] {
            let (event, status) = decide(
                EffectClass::SideEffect,
                attempt,
                ToolOutcome::Unknown("timed out".into()),
            );
            assert_eq!(
                event,
                EventBody::StepOutcomeUnknown {
                    step: "s".into(),
                    attempt,
                    reason: "timed out".into()
                }
            );
            assert_eq!(status, StepStatus::OutcomeUnknown);
        }
    }

    #[test]
    fn an_unknown_outcome_of_a_reinvocable_call_is_retried_with_the_same_key() {
        for effect in [EffectClass::Pure, EffectClass::Idempotent] {
            let (event, status) = decide(effect, 1, ToolOutcome::Unknown("timed out".into()));
            assert_eq!(event, failed("timed out", Some(75), 1), "{effect:?}");
            assert_eq!(status, StepStatus::Pending);
            // The retry is started under the step's one invocation key.
            let (state, call) = running(effect, 2);
            assert_eq!(state.steps["s"].invocation_key.as_deref(), Some("key-s"));
            assert_eq!(call.invocation_key, "key-s");
        }
    }

    #[test]
    fn an_unknown_outcome_of_a_reinvocable_call_on_the_last_attempt_fails_the_step() {
        for effect in [EffectClass::Pure, EffectClass::Idempotent] {
            let (event, status) = decide(
                effect,
                MAX_ATTEMPTS,
                ToolOutcome::Unknown("timed out".into()),
            );
            assert_eq!(event, failed("timed out", None, MAX_ATTEMPTS), "{effect:?}");
            assert_eq!(status, StepStatus::Failed);
        }
    }

    #[test]
    fn not_executed_runs_again_at_once_while_attempts_are_left() {
        for effect in EFFECTS {
            let (event, status) = decide(effect, 1, ToolOutcome::NotExecuted);
            assert_eq!(event, failed(NOT_EXECUTED_ERROR, Some(0), 1), "{effect:?}");
            assert_eq!(status, StepStatus::Pending);
            let (event, status) = decide(effect, MAX_ATTEMPTS, ToolOutcome::NotExecuted);
            assert_eq!(event, failed(NOT_EXECUTED_ERROR, None, MAX_ATTEMPTS));
            assert_eq!(status, StepStatus::Failed);
        }
    }

    #[test]
    fn without_a_retry_policy_the_first_attempt_is_the_last() {
        let (mut state, call) = running(EffectClass::Idempotent, 1);
        // The plan's step loses its policy: the default allows one attempt.
        std::sync::Arc::make_mut(&mut state.plan).steps[0].retry = None;
        let event = outcome_event(&state, &call, ToolOutcome::Retryable("x".into()), 0.5);
        assert_eq!(event, failed("x", None, 1));
    }

    #[test]
    fn the_jitter_passed_in_sets_the_delay() {
        let (state, call) = running(EffectClass::Pure, 1);
        let delay =
            |jitter| match outcome_event(&state, &call, ToolOutcome::Retryable("x".into()), jitter)
            {
                EventBody::StepFailed { retry_after_ms, .. } => retry_after_ms,
                other => panic!("{other:?}"),
            };
        assert_eq!(delay(0.0), Some(50));
        assert_eq!(delay(1.0), Some(100));
    }

    #[test]
    fn an_attempt_round_trips_through_its_started_event() {
        let (_, call) = running(EffectClass::SideEffect, 2);
        let started = call.started_event(17);
        assert!(matches!(
            started,
            EventBody::StepStarted {
                fencing_token: 17,
                ..
            }
        ));
        assert_eq!(Attempt::from_started(&started), Some(call));
        assert_eq!(
            Attempt::from_started(&EventBody::SleepFinished { step: "s".into() }),
            None
        );
    }

    #[test]
    fn an_unrecorded_call_has_an_unknown_outcome() {
        assert_eq!(
            ToolOutcome::unrecorded(),
            ToolOutcome::Unknown(UNRECORDED_REASON.into())
        );
    }
}
