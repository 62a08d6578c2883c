//! The command rule: how a stored command (signal, cancel, confirm) becomes an event.
//!
//! Commands are stored durably before the gateway answers (G1), then taken by the worker
//! holding the job's lease, which appends their events under its fencing token (G3).
//! [`command_effect`] decides, from the job's state alone, whether a command adds an event.
//! Invariants kept here: a signal is applied once per `signal_id`; a confirmation resolves
//! only an `outcome_unknown` step (G2: a human answers only what the worker could not
//! know); nothing follows the end of a job, and a cancel is appended last, after every
//! event taken before it, because it ends the job.

use crate::event::{ConfirmOutcome, EventBody};
use crate::state::{JobState, StepStatus};
use serde_json::Value;

/// A command for a job, as the worker reads it from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// End the job; in-flight calls are abandoned.
    Cancel { by: String, reason: String },
    /// A signal (e.g. an approval) for `wait` steps named `signal`.
    Signal {
        signal: String,
        signal_id: String,
        payload: Value,
        by: Option<String>,
    },
    /// A human's answer for an `outcome_unknown` step.
    Confirm {
        step: String,
        outcome: ConfirmOutcome,
        output: Option<Value>,
        by: String,
        note: Option<String>,
    },
}

/// What one command does to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandEffect {
    /// Append this event (`signal_received`, `step_confirmed`) with the other pending ones.
    Append(EventBody),
    /// Append this `job_cancelled` after every other pending event: it ends the job.
    Cancel(EventBody),
    /// Nothing to append; the command is done all the same.
    Ignore(Ignored),
}

/// Why a command adds no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The job has finished (succeeded, failed or cancelled).
    JobFinished,
    /// A cancel is already taken: one ends the job.
    AlreadyCancelling,
    /// A signal with this `signal_id` was already applied.
    SignalIdSeen,
    /// The confirmation names no step of the plan.
    UnknownStep,
    /// The step is not `outcome_unknown` (any more): there is nothing to confirm.
    NotOutcomeUnknown,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::JobFinished => "job_finished",
            Ignored::AlreadyCancelling => "already_cancelling",
            Ignored::SignalIdSeen => "signal_id_seen",
            Ignored::UnknownStep => "unknown_step",
            Ignored::NotOutcomeUnknown => "not_outcome_unknown",
        }
    }
}

/// What command `command_id` does to the job in `state`.
///
/// `state` is the job as it will be once every event already taken is appended (the
/// worker's pending outcomes and earlier commands' events), except a taken cancel, which
/// `cancelling` reports: so a second signal with the same id, or a second confirmation of
/// the same step, in one batch adds nothing. A signal or confirmation taken after a cancel
/// is still appended, before the cancel.
pub fn command_effect(
    state: &JobState,
    cancelling: bool,
    command_id: u64,
    command: Command,
) -> CommandEffect {
    if state.status.is_terminal() {
        return CommandEffect::Ignore(Ignored::JobFinished);
    }
    match command {
        Command::Cancel { .. } if cancelling => CommandEffect::Ignore(Ignored::AlreadyCancelling),
        Command::Cancel { by, reason } => CommandEffect::Cancel(EventBody::JobCancelled {
            by,
            reason,
            command_id,
        }),
        Command::Signal { signal_id, .. } if state.signal_ids.contains(&signal_id) => {
            CommandEffect::Ignore(Ignored::SignalIdSeen)
        }
        Command::Signal {
            signal,
            signal_id,
            payload,
            by,
        } => CommandEffect::Append(EventBody::SignalReceived {
            signal,
            signal_id,
            payload,
            by,
            command_id,
        }),
        Command::Confirm {
            step,
            outcome,
            output,
            by,
            note,
        } => match state.status_of(&step) {
            None => CommandEffect::Ignore(Ignored::UnknownStep),
            Some(StepStatus::OutcomeUnknown) => CommandEffect::Append(EventBody::StepConfirmed {
                step,
                outcome,
                output,
                by,
                note,
                command_id,
            }),
            Some(_) => CommandEffect::Ignore(Ignored::NotOutcomeUnknown),
        },
    }
}

#[cfg(test)]
mod tests {
    //! One test per command kind and per edge case. Every event the rule emits is folded,
    //! so it never emits one the fold refuses.

    use super::*;
    use crate::event::RecordedEvent;
    use crate::ids::JobId;
    use serde_json::json;

    /// A job with a side_effect tool step `pay` and a wait step `approve`, after `bodies`.
    fn job(bodies: &[EventBody]) -> JobState {
        let plan = json!({"steps": [
            {"id": "pay", "tool": "http", "effect": "side_effect"},
            {"id": "approve", "wait": {"signal": "approval"}}
        ]});
        let genesis = JobState::genesis(&RecordedEvent {
            job_id: JobId(uuid::Uuid::from_u128(9)),
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
        genesis.projected(bodies, 1_000).expect("bodies fold")
    }

    fn started() -> EventBody {
        EventBody::StepStarted {
            step: "pay".into(),
            attempt: 1,
            invocation_key: "k".into(),
            tool: "http".into(),
            effect: crate::EffectClass::SideEffect,
            fencing_token: 1,
        }
    }

    fn unknown() -> EventBody {
        EventBody::StepOutcomeUnknown {
            step: "pay".into(),
            attempt: 1,
            reason: "timed out".into(),
        }
    }

    fn signal(id: &str) -> Command {
        Command::Signal {
            signal: "approval".into(),
            signal_id: id.into(),
            payload: json!({"ok": true}),
            by: Some("ada".into()),
        }
    }

    fn cancel() -> Command {
        Command::Cancel {
            by: "ops".into(),
            reason: "wrong input".into(),
        }
    }

    fn confirm(step: &str) -> Command {
        Command::Confirm {
            step: step.into(),
            outcome: ConfirmOutcome::Succeeded,
            output: Some(json!({"paid": true})),
            by: "ada".into(),
            note: Some("checked the bank".into()),
        }
    }

    /// The state after the event of `effect` is appended (it must fold).
    fn after(state: &JobState, effect: &CommandEffect) -> JobState {
        match effect {
            CommandEffect::Append(e) | CommandEffect::Cancel(e) => state
                .projected([e], 2_000)
                .unwrap_or_else(|err| panic!("{e:?} does not fold: {err}")),
            CommandEffect::Ignore(why) => panic!("ignored: {why:?}"),
        }
    }

    #[test]
    fn a_signal_is_recorded_with_its_command_id() {
        let state = job(&[]);
        let effect = command_effect(&state, false, 5, signal("s1"));
        assert_eq!(
            effect,
            CommandEffect::Append(EventBody::SignalReceived {
                signal: "approval".into(),
                signal_id: "s1".into(),
                payload: json!({"ok": true}),
                by: Some("ada".into()),
                command_id: 5,
            })
        );
        assert!(after(&state, &effect).signal_ids.contains("s1"));
    }

    #[test]
    fn a_repeated_signal_id_is_applied_once() {
        let state = job(&[]);
        let first = command_effect(&state, false, 5, signal("s1"));
        let state = after(&state, &first);
        // Another command (a retry of the same request) with the same signal id.
        assert_eq!(
            command_effect(&state, false, 6, signal("s1")),
            CommandEffect::Ignore(Ignored::SignalIdSeen)
        );
        assert!(matches!(
            command_effect(&state, false, 7, signal("s2")),
            CommandEffect::Append(_)
        ));
    }

    #[test]
    fn a_signal_no_wait_step_names_is_still_buffered() {
        let state = job(&[]);
        let other = Command::Signal {
            signal: "nobody-waits".into(),
            signal_id: "x".into(),
            payload: Value::Null,
            by: None,
        };
        let effect = command_effect(&state, false, 1, other);
        assert!(after(&state, &effect).signals.contains_key("nobody-waits"));
    }

    #[test]
    fn a_cancel_ends_the_job() {
        let state = job(&[started()]);
        let effect = command_effect(&state, false, 3, cancel());
        assert_eq!(
            effect,
            CommandEffect::Cancel(EventBody::JobCancelled {
                by: "ops".into(),
                reason: "wrong input".into(),
                command_id: 3,
            })
        );
        assert!(after(&state, &effect).status.is_terminal());
    }

    #[test]
    fn a_second_cancel_while_cancelling_adds_nothing() {
        assert_eq!(
            command_effect(&job(&[]), true, 4, cancel()),
            CommandEffect::Ignore(Ignored::AlreadyCancelling)
        );
    }

    #[test]
    fn commands_after_the_job_finished_add_nothing() {
        let ended = [
            EventBody::JobCancelled {
                by: "ops".into(),
                reason: "r".into(),
                command_id: 1,
            },
            EventBody::JobFailed {
                error: "e".into(),
                step: None,
            },
            EventBody::JobSucceeded { output: json!({}) },
        ];
        for end in ended {
            let state = job(&[started(), unknown(), end]);
            for (cancelling, command) in [
                (false, cancel()),
                (true, cancel()),
                (false, signal("s9")),
                (false, confirm("pay")),
            ] {
                assert_eq!(
                    command_effect(&state, cancelling, 8, command),
                    CommandEffect::Ignore(Ignored::JobFinished)
                );
            }
        }
    }

    #[test]
    fn signals_and_confirmations_taken_after_a_cancel_still_go_in_before_it() {
        let state = job(&[started(), unknown()]);
        assert!(matches!(
            command_effect(&state, true, 2, signal("s1")),
            CommandEffect::Append(EventBody::SignalReceived { .. })
        ));
        assert!(matches!(
            command_effect(&state, true, 3, confirm("pay")),
            CommandEffect::Append(EventBody::StepConfirmed { .. })
        ));
    }

    #[test]
    fn a_confirmation_resolves_an_outcome_unknown_step_with_who_gave_it() {
        let state = job(&[started(), unknown()]);
        let effect = command_effect(&state, false, 11, confirm("pay"));
        assert_eq!(
            effect,
            CommandEffect::Append(EventBody::StepConfirmed {
                step: "pay".into(),
                outcome: ConfirmOutcome::Succeeded,
                output: Some(json!({"paid": true})),
                by: "ada".into(),
                note: Some("checked the bank".into()),
                command_id: 11,
            })
        );
        let state = after(&state, &effect);
        assert_eq!(state.steps["pay"].status, StepStatus::Succeeded);
        // A second confirmation of the same step (in the same batch or later) has
        // nothing left to confirm.
        assert_eq!(
            command_effect(&state, false, 12, confirm("pay")),
            CommandEffect::Ignore(Ignored::NotOutcomeUnknown)
        );
    }

    #[test]
    fn not_executed_sends_the_step_back_to_run() {
        let state = job(&[started(), unknown()]);
        let not_executed = Command::Confirm {
            step: "pay".into(),
            outcome: ConfirmOutcome::NotExecuted,
            output: None,
            by: "ada".into(),
            note: None,
        };
        let effect = command_effect(&state, false, 1, not_executed);
        assert_eq!(
            after(&state, &effect).steps["pay"].status,
            StepStatus::Pending
        );
    }

    #[test]
    fn a_confirmation_of_a_step_that_is_not_outcome_unknown_adds_nothing() {
        // Pending, running, and a wait step: none has an unknown outcome to confirm.
        for bodies in [vec![], vec![started()]] {
            let state = job(&bodies);
            for step in ["pay", "approve"] {
                assert_eq!(
                    command_effect(&state, false, 1, confirm(step)),
                    CommandEffect::Ignore(Ignored::NotOutcomeUnknown),
                    "{step} after {bodies:?}"
                );
            }
        }
    }

    #[test]
    fn a_confirmation_of_an_unknown_step_adds_nothing() {
        let state = job(&[started(), unknown()]);
        assert_eq!(
            command_effect(&state, false, 1, confirm("no-such-step")),
            CommandEffect::Ignore(Ignored::UnknownStep)
        );
    }

    #[test]
    fn every_ignore_reason_has_a_distinct_label() {
        let all = [
            Ignored::JobFinished,
            Ignored::AlreadyCancelling,
            Ignored::SignalIdSeen,
            Ignored::UnknownStep,
            Ignored::NotOutcomeUnknown,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|i| i.as_str()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
