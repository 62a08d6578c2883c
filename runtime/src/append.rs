//! The append planner: the one function that decides what a fenced append writes, which
//! both stores (PostgreSQL and the embedded redb) apply to their tables.
//!
//! Given the job's head (its projection row as locked or read in the store's transaction),
//! the append and the store's clock, [`plan_append`] checks, in this order and before
//! anything is written:
//! - G3: the caller's fencing token is the job's current one (`Fenced` otherwise);
//! - the caller's view of the log is current (`expected_last_seq`, `SeqConflict`);
//! - per event: the job is not finished, `job_submitted` only ever starts a log, the
//!   ledger move is legal (G2, [`LedgerRow::advance`], the same rule the fold uses) and
//!   the payload can be encoded;
//!
//! and computes what the store writes: the recorded events with their chain hashes (G7,
//! `crate::chain`) and exact payload text, the ledger rows after the append, the new head
//! (seq, hash, status by [`JobStatus::after`]) and the change to the job's wake-up timer.
//! Event times never run backwards within a job: an append is stamped
//! `max(now, head.updated_at_ms)`. The planner reads ledger rows through a fallible lookup
//! (a store may read them lazily, inside its transaction), at most once per step.

use crate::chain::event_hash;
use crate::event::{EventBody, RecordedEvent};
use crate::ids::JobId;
use crate::ledger::LedgerRow;
use crate::state::JobStatus;
use std::collections::BTreeMap;

/// A fenced append: `events` get seqs `expected_last_seq + 1 ..`, if `token` is the job's
/// current fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    pub job_id: JobId,
    pub token: u64,
    pub expected_last_seq: u64,
    pub events: Vec<EventBody>,
}

/// A job's head as its store keeps it: what an append is checked against and moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHead {
    pub status: JobStatus,
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    /// The current fencing token (G3).
    pub token: u64,
    pub updated_at_ms: i64,
}

/// What an append does to the job's wake-up timer (the time a parked job becomes
/// claimable again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerChange {
    /// The timer stays as it is (the job is still waiting, and did not park again).
    Keep,
    /// The job parked with this wake-up time.
    Set(i64),
    /// No timer: the job parked without one, or it is not waiting any more.
    Clear,
}

impl TimerChange {
    /// The change of `self` followed by `later` (appends of one job in one transaction).
    pub fn then(self, later: TimerChange) -> TimerChange {
        match later {
            TimerChange::Keep => self,
            other => other,
        }
    }

    /// The timer after this change, given the timer before.
    pub fn apply(self, timer: Option<i64>) -> Option<i64> {
        match self {
            TimerChange::Keep => timer,
            TimerChange::Set(at) => Some(at),
            TimerChange::Clear => None,
        }
    }

    /// The rule: a job that is not waiting after the append has no timer; a waiting one
    /// gets the wake-up time of the append's last `job_parked` (none if it has none), or
    /// keeps its timer if it did not park again.
    fn of(events: &[RecordedEvent], status: JobStatus) -> TimerChange {
        if status != JobStatus::Waiting {
            return TimerChange::Clear;
        }
        let parked = events.iter().rev().find_map(|e| match &e.body {
            EventBody::JobParked { wake_at_ms } => Some(*wake_at_ms),
            _ => None,
        });
        match parked {
            Some(Some(at)) => TimerChange::Set(at),
            Some(None) => TimerChange::Clear,
            None => TimerChange::Keep,
        }
    }
}

/// What a valid append writes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAppend {
    /// The events as recorded: seqs, the store time and chain hashes assigned.
    pub events: Vec<RecordedEvent>,
    /// The payload of each event (`payloads[i]` belongs to `events[i]`): the exact JSON
    /// text that was hashed, which the store must keep byte for byte (G7).
    pub payloads: Vec<String>,
    /// The ledger rows the append moved, by step, as they are after it.
    pub ledger: BTreeMap<String, LedgerRow>,
    /// The job's head after the append (same token).
    pub head: JobHead,
    pub timer: TimerChange,
}

/// Why an append is refused; `E` is the error of the store's ledger lookup.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError<E> {
    /// Another worker holds the job (G3).
    #[error("fenced: the job is held under token {current}, not {presented}")]
    Fenced { presented: u64, current: u64 },
    /// The caller's view of the log is stale.
    #[error("conflict: the job is at seq {actual}, not {expected}")]
    SeqConflict { expected: u64, actual: u64 },
    #[error("the job already finished")]
    Finished,
    #[error("job_submitted cannot be appended")]
    SubmittedAgain,
    #[error("step {step:?}: illegal ledger transition {detail}")]
    IllegalLedgerMove { step: String, detail: String },
    #[error("{kind} event cannot be serialized")]
    Unencodable { kind: &'static str },
    /// The store could not read a ledger row.
    #[error("ledger lookup: {0}")]
    Lookup(E),
}

/// Plans `append` against the job's `head` at store time `now_ms` (see the module docs).
/// `ledger(step)` returns the step's current ledger row; it is called at most once per
/// step, and only for steps the events move.
pub fn plan_append<E>(
    head: &JobHead,
    append: Append,
    now_ms: i64,
    mut ledger: impl FnMut(&str) -> Result<Option<LedgerRow>, E>,
) -> Result<PlannedAppend, AppendError<E>> {
    if head.token != append.token {
        return Err(AppendError::Fenced {
            presented: append.token,
            current: head.token,
        });
    }
    if head.last_seq != append.expected_last_seq {
        return Err(AppendError::SeqConflict {
            expected: append.expected_last_seq,
            actual: head.last_seq,
        });
    }
    let now = now_ms.max(head.updated_at_ms);
    let mut status = head.status;
    // Every step's row as this append sees it: read once, then as moved by earlier events.
    let mut rows: BTreeMap<String, Option<LedgerRow>> = BTreeMap::new();
    let mut moved: BTreeMap<String, LedgerRow> = BTreeMap::new();
    let mut payloads = Vec::with_capacity(append.events.len());
    for body in &append.events {
        if status.is_terminal() {
            return Err(AppendError::Finished);
        }
        if let EventBody::JobSubmitted { .. } = body {
            return Err(AppendError::SubmittedAgain);
        }
        if let Some(mv) = body.ledger_move() {
            let current = match rows.get(mv.step) {
                Some(row) => row.clone(),
                None => ledger(mv.step).map_err(AppendError::Lookup)?,
            };
            let next = LedgerRow::advance(current.as_ref(), &mv, now).map_err(|detail| {
                AppendError::IllegalLedgerMove {
                    step: mv.step.to_string(),
                    detail,
                }
            })?;
            rows.insert(mv.step.to_string(), Some(next.clone()));
            moved.insert(mv.step.to_string(), next);
        }
        status = status.after(body);
        payloads.push(payload_text(body)?);
    }

    let mut next = *head;
    let mut events = Vec::with_capacity(append.events.len());
    for (body, payload) in append.events.into_iter().zip(&payloads) {
        let seq = next.last_seq + 1;
        let hash = event_hash(
            &next.last_hash,
            append.job_id,
            seq,
            now,
            body.kind(),
            payload.as_bytes(),
        );
        events.push(RecordedEvent {
            job_id: append.job_id,
            seq,
            recorded_at_ms: now,
            body,
            prev_hash: next.last_hash,
            hash,
        });
        next.last_seq = seq;
        next.last_hash = hash;
    }
    next.status = status;
    next.updated_at_ms = now;
    Ok(PlannedAppend {
        timer: TimerChange::of(&events, status),
        events,
        payloads,
        ledger: moved,
        head: next,
    })
}

/// The payload as stored and hashed: `EventBody::payload`, which is UTF-8 JSON (empty
/// only if the body could not be serialized).
fn payload_text<E>(body: &EventBody) -> Result<String, AppendError<E>> {
    let unencodable = || AppendError::Unencodable { kind: body.kind() };
    let bytes = body.payload();
    if bytes.is_empty() {
        return Err(unencodable());
    }
    String::from_utf8(bytes).map_err(|_| unencodable())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::GENESIS;
    use crate::ledger::LedgerStatus;
    use crate::plan::EffectClass;
    use serde_json::json;
    use std::convert::Infallible;

    fn head(status: JobStatus) -> JobHead {
        JobHead {
            status,
            last_seq: 1,
            last_hash: GENESIS,
            token: 4,
            updated_at_ms: 1_000,
        }
    }

    fn append(events: Vec<EventBody>) -> Append {
        Append {
            job_id: JobId::from_bytes([9; 16]),
            token: 4,
            expected_last_seq: 1,
            events,
        }
    }

    fn no_rows(_: &str) -> Result<Option<LedgerRow>, Infallible> {
        Ok(None)
    }

    fn started(step: &str, effect: EffectClass) -> EventBody {
        EventBody::StepStarted {
            step: step.into(),
            attempt: 1,
            invocation_key: format!("key-{step}"),
            tool: "echo".into(),
            effect,
            fencing_token: 4,
        }
    }

    #[test]
    fn fence_and_seq_are_checked_first() {
        let mut stale = append(vec![]);
        stale.token = 3;
        assert_eq!(
            plan_append(&head(JobStatus::Running), stale, 0, no_rows),
            Err(AppendError::Fenced {
                presented: 3,
                current: 4
            })
        );
        let mut behind = append(vec![]);
        behind.expected_last_seq = 0;
        assert_eq!(
            plan_append(&head(JobStatus::Running), behind, 0, no_rows),
            Err(AppendError::SeqConflict {
                expected: 0,
                actual: 1
            })
        );
    }

    #[test]
    fn a_plan_chains_moves_the_ledger_and_never_runs_time_backwards() {
        let p = plan_append(
            &head(JobStatus::Queued),
            append(vec![
                started("a", EffectClass::Pure),
                EventBody::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: json!(1),
                },
            ]),
            900,
            no_rows,
        )
        .unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(p.events.iter().all(|e| e.recorded_at_ms == 1_000));
        assert_eq!(p.events[0].prev_hash, GENESIS);
        assert_eq!(p.events[1].prev_hash, p.events[0].hash);
        assert_eq!(p.head.last_hash, p.events[1].hash);
        assert_eq!((p.head.last_seq, p.head.status), (3, JobStatus::Running));
        assert_eq!(p.payloads[1].as_bytes(), p.events[1].body.payload());
        let row = &p.ledger["a"];
        assert_eq!(
            (
                row.status,
                row.effect,
                row.attempt,
                row.invocation_key.as_str()
            ),
            (LedgerStatus::Succeeded, EffectClass::Pure, 1, "key-a")
        );
        assert_eq!(p.timer, TimerChange::Clear);
    }

    #[test]
    fn an_unknown_effect_counts_as_a_side_effect() {
        // A row moved without its `started` (a store's row from before effect classes).
        let lookup = |_: &str| -> Result<_, Infallible> {
            Ok(Some(LedgerRow {
                invocation_key: "k".into(),
                attempt: 1,
                effect: EffectClass::UNKNOWN_DEFAULT,
                status: LedgerStatus::Started,
                updated_at_ms: 0,
            }))
        };
        let again = plan_append(
            &head(JobStatus::Running),
            append(vec![EventBody::StepStarted {
                step: "a".into(),
                attempt: 2,
                invocation_key: "k".into(),
                tool: "http".into(),
                effect: EffectClass::UNKNOWN_DEFAULT,
                fencing_token: 4,
            }]),
            0,
            lookup,
        );
        assert!(matches!(again, Err(AppendError::IllegalLedgerMove { .. })));
    }

    #[test]
    fn refusals_name_their_rule_and_lookup_errors_pass_through() {
        let finished = plan_append(
            &head(JobStatus::Succeeded),
            append(vec![EventBody::JobParked { wake_at_ms: None }]),
            0,
            no_rows,
        );
        assert_eq!(finished, Err(AppendError::Finished));
        let twice = plan_append(
            &head(JobStatus::Queued),
            append(vec![EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]}))
                    .unwrap(),
                input: json!({}),
                idempotency_key: None,
            }]),
            0,
            no_rows,
        );
        assert_eq!(twice, Err(AppendError::SubmittedAgain));
        let failing = plan_append(
            &head(JobStatus::Queued),
            append(vec![started("a", EffectClass::Pure)]),
            0,
            |_: &str| Err("disk"),
        );
        assert_eq!(failing, Err(AppendError::Lookup("disk")));
    }

    #[test]
    fn timers_follow_the_last_park_and_progress_clears_them() {
        let plan = |status, events| {
            plan_append(&head(status), append(events), 0, no_rows)
                .unwrap()
                .timer
        };
        let park = |at| EventBody::JobParked { wake_at_ms: at };
        assert_eq!(
            plan(JobStatus::Running, vec![park(Some(5)), park(Some(7))]),
            TimerChange::Set(7)
        );
        assert_eq!(
            plan(JobStatus::Running, vec![park(None)]),
            TimerChange::Clear
        );
        // Parked, then moved on in the same append: not waiting, so no timer.
        let done = EventBody::JobSucceeded { output: json!(1) };
        assert_eq!(
            plan(JobStatus::Running, vec![park(Some(5)), done]),
            TimerChange::Clear
        );
        let signal = EventBody::SignalReceived {
            signal: "go".into(),
            signal_id: "s1".into(),
            payload: json!(null),
            by: None,
            command_id: 1,
        };
        assert_eq!(
            plan(JobStatus::Waiting, vec![signal.clone()]),
            TimerChange::Keep
        );
        assert_eq!(plan(JobStatus::Running, vec![signal]), TimerChange::Clear);
        assert_eq!(
            TimerChange::Set(5).then(TimerChange::Keep),
            TimerChange::Set(5)
        );
        assert_eq!(
            TimerChange::Set(5).then(TimerChange::Clear).apply(Some(1)),
            None
        );
    }
}
