//! The event enum: every fact about a job, append-only. The JSON form of `EventBody` is the
//! event's payload (hashed as a digest by the chain, G7); the header (job, seq, kind, time)
//! is assigned by the store at append. Never reorder or rename variants or fields: stored
//! logs must keep folding.

use crate::ids::JobId;
use crate::plan::{EffectClass, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    /// Seq 1 of every job: what was submitted.
    JobSubmitted {
        tenant: String,
        plan: Plan,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// The ledger's `started` record: durable and fenced before the tool is called (G2).
    StepStarted {
        step: String,
        attempt: u32,
        invocation_key: String,
        tool: String,
        effect: EffectClass,
        fencing_token: u64,
    },
    StepSucceeded {
        step: String,
        attempt: u32,
        output: Value,
    },
    /// A failed attempt. `retry_after_ms` set means the step will be tried again that long
    /// after this event's store time (same invocation key); unset means the step, and so
    /// the job, has failed.
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A side_effect call was started but no result was recorded (crash, timeout, panic):
    /// it is never silently re-run; a human (or a reconcile hook) must confirm.
    StepOutcomeUnknown {
        step: String,
        attempt: u32,
        reason: String,
    },
    JobSucceeded {
        output: Value,
    },
    JobFailed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
    },
    /// An operator cancelled the job (a stored `cancel` command, applied by the lease
    /// holder). Terminal; in-flight calls are abandoned.
    JobCancelled {
        by: String,
        reason: String,
        command_id: u64,
    },
    /// A signal delivered to the job (stored command, applied by the lease holder). It is
    /// buffered until a `wait` step for that name consumes it. Idempotent by `signal_id`.
    SignalReceived {
        signal: String,
        signal_id: String,
        payload: Value,
        /// Who sent it (an approval's approver).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        command_id: u64,
    },
    /// A `wait` step began waiting; it times out `timeout_ms` after this event's time.
    WaitStarted {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    WaitCompleted {
        step: String,
        signal_id: String,
        output: Value,
    },
    WaitTimedOut {
        step: String,
    },
    /// A durable timer: the step finishes `duration_ms` after this event's time.
    SleepStarted {
        step: String,
        duration_ms: u64,
    },
    SleepFinished {
        step: String,
    },
    /// A human resolved an `outcome_unknown` step: it did happen (with `output`), or it
    /// did not (`not_executed`: the step runs again with the same invocation key).
    StepConfirmed {
        step: String,
        outcome: ConfirmOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        command_id: u64,
    },
    /// Nothing can happen until a signal, a confirmation, or `wake_at_ms` (a timer): the
    /// job holds no actor and no lease until then (passivation).
    JobParked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wake_at_ms: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmOutcome {
    Succeeded,
    NotExecuted,
}

impl EventBody {
    /// The `type` tag, part of the hashed header.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::JobSubmitted { .. } => "job_submitted",
            EventBody::StepStarted { .. } => "step_started",
            EventBody::StepSucceeded { .. } => "step_succeeded",
            EventBody::StepFailed { .. } => "step_failed",
            EventBody::StepOutcomeUnknown { .. } => "step_outcome_unknown",
            EventBody::JobSucceeded { .. } => "job_succeeded",
            EventBody::JobFailed { .. } => "job_failed",
            EventBody::JobCancelled { .. } => "job_cancelled",
            EventBody::SignalReceived { .. } => "signal_received",
            EventBody::WaitStarted { .. } => "wait_started",
            EventBody::WaitCompleted { .. } => "wait_completed",
            EventBody::WaitTimedOut { .. } => "wait_timed_out",
            EventBody::SleepStarted { .. } => "sleep_started",
            EventBody::SleepFinished { .. } => "sleep_finished",
            EventBody::StepConfirmed { .. } => "step_confirmed",
            EventBody::JobParked { .. } => "job_parked",
        }
    }

    /// The payload bytes as hashed and stored: serde_json of the body. Deterministic because
    /// struct fields have a fixed order and JSON objects are sorted maps.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::JobSucceeded { .. } | EventBody::JobFailed { .. }
        )
    }
}

/// An event as stored: header assigned by the store, body, and its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecordedEvent {
    pub job_id: JobId,
    pub seq: u64,
    /// Milliseconds since the Unix epoch, from the store's clock (G3: never a worker's).
    pub recorded_at_ms: i64,
    pub body: EventBody,
    /// SHA-256 of the previous event (hex); zeros for the first.
    #[serde(with = "hex_bytes")]
    #[schemars(with = "String")]
    pub prev_hash: [u8; 32],
    /// This event's chain hash (hex): SHA-256(prev_hash ‖ header ‖ SHA-256(payload)).
    #[serde(with = "hex_bytes")]
    #[schemars(with = "String")]
    pub hash: [u8; 32],
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}
