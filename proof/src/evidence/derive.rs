//! What `ledger.json`, `approvals.json` and `job.json` say, derived from the events: the
//! exporter writes these files from these functions and the verifier recomputes them with
//! the same functions, so the two cannot disagree. Ledger rows come from the runtime's own
//! rule (`LedgerRow::advance` at the event's store time, as both stores apply it) and the
//! status from `JobStatus::after`. A redacted event still counts: its kind (and, for a step
//! output, the step named by its redaction path) is enough for both rules, through a
//! placeholder body of that kind.

use super::{Approval, LedgerRecord};
use aetheris_runtime::plan::Plan;
use aetheris_runtime::{ConfirmOutcome, EventBody, JobStatus, LedgerRow};
use ring::digest::{digest, SHA256};
use serde_json::Value;
use std::collections::BTreeMap;

/// The kinds `approvals.json` lists.
pub(crate) const APPROVAL_KINDS: [&str; 4] = [
    "signal_received",
    "wait_completed",
    "step_confirmed",
    "job_cancelled",
];

/// A body of `kind` that moves the ledger and the status as the real (redacted) one did:
/// only the variant and, for step events, the step matter to those rules. `None` for kinds
/// no redaction rule can produce.
pub(crate) fn placeholder(kind: &str, step: Option<&str>) -> Option<EventBody> {
    let step = step.unwrap_or_default().to_string();
    Some(match kind {
        "job_submitted" => EventBody::JobSubmitted {
            tenant: String::new(),
            plan: Plan::default(),
            input: Value::Null,
            idempotency_key: None,
        },
        "job_succeeded" => EventBody::JobSucceeded {
            output: Value::Null,
        },
        "step_succeeded" => EventBody::StepSucceeded {
            step,
            attempt: 0,
            output: Value::Null,
        },
        "step_confirmed" => EventBody::StepConfirmed {
            step,
            outcome: ConfirmOutcome::Succeeded,
            output: None,
            by: String::new(),
            note: None,
            command_id: 0,
        },
        "wait_completed" => EventBody::WaitCompleted {
            step,
            signal_id: String::new(),
            output: Value::Null,
        },
        "signal_received" => EventBody::SignalReceived {
            signal: String::new(),
            signal_id: String::new(),
            payload: Value::Null,
            by: None,
            command_id: 0,
        },
        _ => return None,
    })
}

/// The `approvals.json` entry of an event, if it is a decision or a signal.
pub(crate) fn approval_of(
    seq: u64,
    at_ms: i64,
    body: &EventBody,
    redacted: bool,
) -> Option<Approval> {
    let mut a = Approval {
        seq,
        at_ms,
        kind: body.kind().to_string(),
        by: None,
        step: None,
        signal: None,
        signal_id: None,
        outcome: None,
        note: None,
        reason: None,
        command_id: None,
        redacted,
    };
    match body {
        EventBody::SignalReceived {
            signal,
            signal_id,
            by,
            command_id,
            ..
        } => {
            a.signal = Some(signal.clone());
            a.signal_id = Some(signal_id.clone());
            a.by = by.clone();
            a.command_id = Some(*command_id);
        }
        EventBody::WaitCompleted {
            step, signal_id, ..
        } => {
            a.step = Some(step.clone());
            a.signal_id = Some(signal_id.clone());
        }
        EventBody::StepConfirmed {
            step,
            outcome,
            by,
            note,
            command_id,
            ..
        } => {
            a.step = Some(step.clone());
            a.outcome = Some(*outcome);
            a.by = Some(by.clone());
            a.note = note.clone();
            a.command_id = Some(*command_id);
        }
        EventBody::JobCancelled {
            by,
            reason,
            command_id,
        } => {
            a.by = Some(by.clone());
            a.reason = Some(reason.clone());
            a.command_id = Some(*command_id);
        }
        _ => return None,
    }
    Some(a)
}

/// Folds the ledger and the status over events (`(seq, store time, body)`, in order).
#[derive(Debug, Default)]
pub(crate) struct Fold {
    rows: BTreeMap<String, LedgerRow>,
    status: Option<JobStatus>,
}

impl Fold {
    /// Applies one event; `Err` is the illegal ledger move it makes.
    pub(crate) fn apply(&mut self, at_ms: i64, body: &EventBody) -> Result<(), String> {
        if let Some(mv) = body.ledger_move() {
            let next = LedgerRow::advance(self.rows.get(mv.step), &mv, at_ms)
                .map_err(|d| format!("step {:?}: illegal ledger move {d}", mv.step))?;
            self.rows.insert(mv.step.to_string(), next);
        }
        self.status = Some(self.status.unwrap_or(JobStatus::Queued).after(body));
        Ok(())
    }

    pub(crate) fn status(&self) -> JobStatus {
        self.status.unwrap_or(JobStatus::Queued)
    }

    /// The ledger rows, by step.
    pub(crate) fn ledger(&self) -> Vec<LedgerRecord> {
        self.rows
            .iter()
            .map(|(step, row)| LedgerRecord::new(step.clone(), row))
            .collect()
    }
}

/// `sha256:<hex>` of some bytes.
pub(crate) fn sha256_tag(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, bytes)))
}

/// The input digest of `job.json`: of the input's JSON text as serialized in the payload.
pub(crate) fn input_digest(input: &Value) -> String {
    sha256_tag(&serde_json::to_vec(input).unwrap_or_default())
}
