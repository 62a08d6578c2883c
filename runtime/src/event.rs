//! The event enum: every fact about a job, append-only. The JSON form of `EventBody` is the
//! event's payload (hashed as a digest by the chain, G7); the header (job, seq, kind, time)
//! is assigned by the store at append. Never reorder or rename variants or fields: stored
//! logs must keep folding.

use crate::agent::{BudgetScope, JournaledMessage};
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
    // Agent steps (docs/agents.md). Appended after the variants above: variant order is
    // persisted. A call of an agent step is named `step.turn` (the model call of a turn)
    // or `step.turn.index` (a tool call); that name is its ledger row.
    /// An agent step began: the conversation's first messages (the system prompt and the
    /// prompt, references resolved).
    AgentStarted {
        step: String,
        provider: String,
        model: String,
        messages: Vec<JournaledMessage>,
        /// The prompt could not be built (a reference resolves to nothing): the step fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The ledger's `started` record of model call `call` (idempotent): durable before the
    /// request is sent. `request_digest` is the prefix digest of the conversation it asks
    /// about (not the conversation itself: the events hold each message once).
    AgentModelStarted {
        step: String,
        call: String,
        turn: u32,
        attempt: u32,
        invocation_key: String,
        provider: String,
        model: String,
        /// Tokens reserved against the budgets: `max_tokens` plus an input estimate.
        reserved_tokens: u64,
        request_digest: String,
        fencing_token: u64,
    },
    /// The model's answer: the turn's new messages (each with its digest, its body only if
    /// the journal lacks it) and its token usage. Durable before any of its tool calls
    /// starts. An answer without tool calls is the step's final answer.
    AgentModelAnswered {
        step: String,
        call: String,
        turn: u32,
        attempt: u32,
        messages: Vec<JournaledMessage>,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// A model call failed. `retry_after_ms` set: asked again that long after this event;
    /// `budget` set: refused by that budget, the step waits for a `budget` signal; neither:
    /// the step fails.
    AgentModelFailed {
        step: String,
        call: String,
        turn: u32,
        attempt: u32,
        error: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<BudgetScope>,
    },
    /// The ledger's `started` record of tool call `call`: durable and fenced before the
    /// tool is called (G2), exactly as `step_started` is for a plan step.
    AgentToolStarted {
        step: String,
        call: String,
        attempt: u32,
        invocation_key: String,
        tool: String,
        effect: EffectClass,
        fencing_token: u64,
    },
    AgentToolSucceeded {
        step: String,
        call: String,
        attempt: u32,
        output: Value,
    },
    /// As `step_failed`: `retry_after_ms` set means the call runs again (same key).
    AgentToolFailed {
        step: String,
        call: String,
        attempt: u32,
        error: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// As `step_outcome_unknown`: a side_effect call is never re-run silently; a human
    /// confirms it (the confirmation names the call).
    AgentToolOutcomeUnknown {
        step: String,
        call: String,
        attempt: u32,
        reason: String,
    },
    /// A tool call that never runs: an unknown tool, arguments failing its schema, or a
    /// human's rejection (`by`, through signal `signal_id`). The model is told `reason`.
    AgentToolRefused {
        step: String,
        call: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal_id: Option<String>,
    },
    /// A human approved a call (signal `approve:<call>`), maybe with edited arguments.
    AgentToolApproved {
        step: String,
        call: String,
        signal_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The next model call would breach `scope`'s budget: the step waits for a `budget`
    /// signal instead of overspending.
    AgentBudgetReached {
        step: String,
        scope: BudgetScope,
        limit: u64,
        used: u64,
        needed: u64,
    },
    /// A budget wait ended: by a `budget` signal (raise by `raise_tokens`, or `stop`), or by
    /// a new day for the tenant's daily budget (no signal).
    AgentBudgetDecided {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal_id: Option<String>,
        raise_tokens: u64,
        stop: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
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
            EventBody::AgentStarted { .. } => "agent_started",
            EventBody::AgentModelStarted { .. } => "agent_model_started",
            EventBody::AgentModelAnswered { .. } => "agent_model_answered",
            EventBody::AgentModelFailed { .. } => "agent_model_failed",
            EventBody::AgentToolStarted { .. } => "agent_tool_started",
            EventBody::AgentToolSucceeded { .. } => "agent_tool_succeeded",
            EventBody::AgentToolFailed { .. } => "agent_tool_failed",
            EventBody::AgentToolOutcomeUnknown { .. } => "agent_tool_outcome_unknown",
            EventBody::AgentToolRefused { .. } => "agent_tool_refused",
            EventBody::AgentToolApproved { .. } => "agent_tool_approved",
            EventBody::AgentBudgetReached { .. } => "agent_budget_reached",
            EventBody::AgentBudgetDecided { .. } => "agent_budget_decided",
        }
    }

    /// The payload bytes as hashed and stored: serde_json of the body. Deterministic because
    /// struct fields have a fixed order and JSON objects are sorted maps.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The agent step this event is about, for an agent event.
    pub fn agent_step(&self) -> Option<&str> {
        match self {
            EventBody::AgentStarted { step, .. }
            | EventBody::AgentModelStarted { step, .. }
            | EventBody::AgentModelAnswered { step, .. }
            | EventBody::AgentModelFailed { step, .. }
            | EventBody::AgentToolStarted { step, .. }
            | EventBody::AgentToolSucceeded { step, .. }
            | EventBody::AgentToolFailed { step, .. }
            | EventBody::AgentToolOutcomeUnknown { step, .. }
            | EventBody::AgentToolRefused { step, .. }
            | EventBody::AgentToolApproved { step, .. }
            | EventBody::AgentBudgetReached { step, .. }
            | EventBody::AgentBudgetDecided { step, .. } => Some(step),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::JobSucceeded { .. } | EventBody::JobFailed { .. }
        )
    }

    /// Whether this event ends its job: it succeeded, failed or was cancelled (no event
    /// may follow it, and the append that records it gives the job's lease back).
    pub fn ends_job(&self) -> bool {
        self.is_terminal() || matches!(self, EventBody::JobCancelled { .. })
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
