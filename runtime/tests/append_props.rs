//! Property test of the append planner against the fold: for random logs over a plan's
//! steps (ledger moves legal and illegal, signals, parks, terminal events, stale tokens and
//! stale seqs, in random batches), every append the planner accepts folds (`JobState::apply`
//! never errs on its events), every append it refuses for a reason of the log the fold
//! refuses too, and after every append the planner's ledger, head and timer agree with the
//! fold: the rows the stores keep are the ledger a replay computes.

use aetheris_runtime::chain::{event_hash, GENESIS};
use aetheris_runtime::{
    plan_append, Append, AppendError, EffectClass, EventBody, JobHead, JobId, JobState, JobStatus,
    LedgerRow, LedgerStatus, Plan, RecordedEvent,
};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;

const STEPS: usize = 4;
const TOKEN: u64 = 7;

fn step(i: u8) -> String {
    format!("s{}", i as usize % STEPS)
}

fn plan() -> Plan {
    let steps: Vec<_> = (0..STEPS)
        .map(|i| json!({"id": format!("s{i}"), "tool": "echo"}))
        .collect();
    serde_json::from_value(json!({ "steps": steps })).expect("plan")
}

fn effect(c: u8) -> EffectClass {
    [
        EffectClass::Pure,
        EffectClass::Idempotent,
        EffectClass::SideEffect,
    ][c as usize % 3]
}

/// One event, chosen by `(kind, a, b)`: mostly the legal next ledger move of a step (so logs
/// get long), sometimes any move at all, a signal, a park or a terminal event.
fn event(state: &JobState, n: usize, kind: u8, a: u8, b: u8) -> EventBody {
    let s = step(a);
    let st = &state.steps[&s];
    let attempt = st.attempt;
    let start = |attempt: u32| EventBody::StepStarted {
        step: s.clone(),
        attempt,
        invocation_key: format!("key-{s}"),
        tool: "echo".into(),
        effect: effect(b),
        fencing_token: TOKEN,
    };
    let succeed = EventBody::StepSucceeded {
        step: s.clone(),
        attempt,
        output: json!({"n": n}),
    };
    let fail = EventBody::StepFailed {
        step: s.clone(),
        attempt,
        error: "boom".into(),
        retryable: true,
        retry_after_ms: Some(u64::from(b % 3)),
    };
    let unknown = EventBody::StepOutcomeUnknown {
        step: s.clone(),
        attempt,
        reason: "crash".into(),
    };
    let confirm = EventBody::StepConfirmed {
        step: s.clone(),
        outcome: if b.is_multiple_of(2) {
            aetheris_runtime::ConfirmOutcome::Succeeded
        } else {
            aetheris_runtime::ConfirmOutcome::NotExecuted
        },
        output: Some(json!(b)),
        by: "ada".into(),
        note: None,
        command_id: n as u64,
    };
    match kind % 20 {
        // The legal next move of the step's ledger.
        0..=11 => match st.ledger {
            None | Some(LedgerStatus::Failed) | Some(LedgerStatus::Confirmed) => start(attempt + 1),
            Some(LedgerStatus::Started) => [succeed, fail, unknown][b as usize % 3].clone(),
            Some(LedgerStatus::OutcomeUnknown) => confirm,
            Some(LedgerStatus::Succeeded) => start(attempt + 1),
        },
        // Any move, legal or not.
        12..=15 => [start(attempt + 1), succeed, fail, unknown, confirm][b as usize % 5].clone(),
        16 => EventBody::SignalReceived {
            signal: "go".into(),
            signal_id: format!("sig-{n}"),
            payload: json!({"n": n}),
            by: None,
            command_id: n as u64,
        },
        17 | 18 => EventBody::JobParked {
            wake_at_ms: (!b.is_multiple_of(3)).then_some(5_000 + i64::from(b)),
        },
        _ => match b % 3 {
            0 => EventBody::JobSucceeded { output: json!(n) },
            1 => EventBody::JobFailed {
                error: "x".into(),
                step: None,
            },
            _ => EventBody::JobCancelled {
                by: "ops".into(),
                reason: "test".into(),
                command_id: n as u64,
            },
        },
    }
}

/// Applies `body` to `state` as its next event (seq and hash made up: the fold checks the
/// seq only); whether the fold accepts it.
fn folds_into(state: &mut JobState, body: &EventBody, at: i64) -> bool {
    let e = RecordedEvent {
        job_id: state.job_id,
        seq: state.last_seq + 1,
        recorded_at_ms: at,
        body: body.clone(),
        prev_hash: state.last_hash,
        hash: state.last_hash,
    };
    state.apply(&e).is_ok()
}

/// Whether the fold accepts all of `events` after `state` (the check of an append the
/// planner refused: its events never got seqs or hashes of their own).
fn folds(state: &JobState, events: &[EventBody], at: i64) -> bool {
    let mut s = state.clone();
    events.iter().all(|body| folds_into(&mut s, body, at))
}

fn assert_agree(state: &JobState, head: &JobHead, ledger: &BTreeMap<String, LedgerRow>) {
    assert_eq!(head.status, state.status, "status");
    assert_eq!(head.last_seq, state.last_seq, "last_seq");
    assert_eq!(head.last_hash, state.last_hash, "last_hash");
    for (id, st) in &state.steps {
        match (st.ledger, ledger.get(id)) {
            (None, None) => {}
            (Some(status), Some(row)) => {
                assert_eq!(row.status, status, "step {id}: ledger status");
                assert_eq!(Some(row.effect), st.effect, "step {id}: effect class");
                assert_eq!(row.attempt, st.attempt, "step {id}: attempt");
                assert_eq!(
                    Some(&row.invocation_key),
                    st.invocation_key.as_ref(),
                    "step {id}: invocation key"
                );
            }
            (fold, store) => panic!("step {id}: fold has {fold:?}, planner has {store:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn accepted_appends_fold_and_the_ledgers_agree(
        choices in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), 1u8..4), 1..60)
    ) {
        let job = JobId::from_bytes([3; 16]);
        let submitted = EventBody::JobSubmitted {
            tenant: "t".into(),
            plan: plan(),
            input: json!({}),
            idempotency_key: None,
        };
        let payload = submitted.payload();
        let hash = event_hash(&GENESIS, job, 1, 1_000, submitted.kind(), &payload);
        let first = RecordedEvent {
            job_id: job,
            seq: 1,
            recorded_at_ms: 1_000,
            body: submitted,
            prev_hash: GENESIS,
            hash,
        };
        let mut state = JobState::genesis(&first).expect("genesis");
        let mut head = JobHead {
            status: JobStatus::Queued,
            last_seq: 1,
            last_hash: hash,
            token: TOKEN,
            updated_at_ms: 1_000,
        };
        let mut ledger: BTreeMap<String, LedgerRow> = BTreeMap::new();
        let mut timer: Option<i64> = None;
        let mut accepted = 0usize;
        for (n, (kind, a, b, size)) in choices.into_iter().enumerate() {
            // The store's clock may lag the job's last write: time still never goes back.
            let now = 1_000 + (n as i64) * 10 - i64::from(b % 25);
            // Events of one append are chosen as a worker chooses them: against the state
            // with the append's earlier events applied (often moving one step twice).
            let mut tentative = state.clone();
            let mut events: Vec<EventBody> = Vec::new();
            for k in 0..size {
                let which = if b.is_multiple_of(2) { a } else { a.wrapping_add(k) };
                let body = event(&tentative, n * 4 + usize::from(k), kind.wrapping_add(k), which, b.wrapping_add(k));
                let _ = folds_into(&mut tentative, &body, now);
                events.push(body);
            }
            let stale_token = kind % 29 == 28;
            let stale_seq = a % 31 == 30;
            let req = Append {
                job_id: job,
                token: if stale_token { TOKEN - 1 } else { TOKEN },
                expected_last_seq: if stale_seq { head.last_seq + 1 } else { head.last_seq },
                events: events.clone(),
            };
            let lookup = |step: &str| -> Result<Option<LedgerRow>, Infallible> {
                Ok(ledger.get(step).cloned())
            };
            match plan_append(&head, req, now, lookup) {
                Ok(p) => {
                    prop_assert!(!stale_token && !stale_seq, "a stale append was accepted");
                    let mut prev = head.last_hash;
                    for e in &p.events {
                        prop_assert_eq!(e.prev_hash, prev);
                        prop_assert_eq!(
                            e.hash,
                            event_hash(&prev, job, e.seq, e.recorded_at_ms, e.body.kind(), &e.body.payload())
                        );
                        prop_assert!(e.recorded_at_ms >= state.updated_at_ms, "time went back");
                        prev = e.hash;
                        if let Err(err) = state.apply(e) {
                            panic!("the planner accepted an event the fold refuses: {err}");
                        }
                    }
                    for (s, row) in p.ledger {
                        ledger.insert(s, row);
                    }
                    head = p.head;
                    timer = p.timer.apply(timer);
                    accepted += 1;
                }
                Err(AppendError::Fenced { .. }) => prop_assert!(stale_token),
                Err(AppendError::SeqConflict { .. }) => prop_assert!(stale_seq && !stale_token),
                Err(e) => {
                    prop_assert!(!stale_token && !stale_seq);
                    prop_assert!(
                        !folds(&state, &events, now),
                        "the planner refused ({}) what the fold accepts: {:?}", e, events
                    );
                }
            }
            assert_agree(&state, &head, &ledger);
            if state.status != JobStatus::Waiting {
                prop_assert_eq!(timer, None, "a job that is not waiting has no timer");
            }
            if state.status.is_terminal() {
                break;
            }
        }
        prop_assert!(accepted > 0 || state.last_seq == 1);
    }
}
