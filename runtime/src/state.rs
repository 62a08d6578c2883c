//! `JobState`: the fold of a job's events (G5). `apply` is the only way state changes, it
//! checks the ledger state machine and the gap-free seq, and it reads nothing but the event
//! (times come from the event header), so replay from any snapshot is exact.

use crate::agent::{AgentState, Message};
use crate::codec::json_text;
use crate::error::FoldError;
use crate::event::{EventBody, RecordedEvent};
use crate::ids::JobId;
use crate::ledger::LedgerStatus;
use crate::plan::{EffectClass, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted, no step started yet.
    Queued,
    Running,
    /// Blocked on a human: some side_effect step's outcome is unknown.
    Waiting,
    Succeeded,
    Failed,
    /// Ended by a cancel command. (Appended last: variant order is persisted.)
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Waiting,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Waiting => "waiting",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
    /// The status after `body` is applied: the one rule both the fold and the stores'
    /// projections use, so they cannot disagree.
    pub fn after(self, body: &EventBody) -> JobStatus {
        match body {
            EventBody::JobSucceeded { .. } => JobStatus::Succeeded,
            EventBody::JobFailed { .. } => JobStatus::Failed,
            EventBody::JobCancelled { .. } => JobStatus::Cancelled,
            // Parked: no actor, no lease, until a command or its timer wakes it.
            EventBody::JobParked { .. } => JobStatus::Waiting,
            // A signal alone changes nothing until a wait step consumes it.
            EventBody::JobSubmitted { .. } | EventBody::SignalReceived { .. } => self,
            // Any step progress means the job is active again.
            _ if matches!(self, JobStatus::Queued | JobStatus::Waiting) => JobStatus::Running,
            _ => self,
        }
    }
    /// Whether a worker should hold a lease on a job in this status.
    pub fn is_runnable(&self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    OutcomeUnknown,
    /// A wait step waiting for its signal (or its timeout).
    Waiting,
    /// A sleep step whose timer has not fired.
    Sleeping,
}

impl StepStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::OutcomeUnknown => "outcome_unknown",
            StepStatus::Waiting => "waiting",
            StepStatus::Sleeping => "sleeping",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// Attempts started so far (1-based once started).
    pub attempt: u32,
    pub invocation_key: Option<String>,
    pub effect: Option<EffectClass>,
    pub ledger: Option<LedgerStatus>,
    #[serde(with = "json_text::option")]
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Not before this time (ms) may the next attempt start.
    pub retry_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// A waiting step's timeout or a sleeping step's wake-up time (store clock, ms).
    pub deadline_ms: Option<i64>,
    /// An agent step's loop (snapshot format 3).
    pub agent: Option<Box<AgentState>>,
}

impl StepState {
    fn new() -> Self {
        StepState {
            status: StepStatus::Pending,
            attempt: 0,
            invocation_key: None,
            effect: None,
            ledger: None,
            output: None,
            error: None,
            retry_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            deadline_ms: None,
            agent: None,
        }
    }

    /// A call of this step is in flight: a tool step running, or an agent step's model or
    /// tool call. (An agent step in status `running` may have nothing in flight.)
    pub fn in_flight(&self) -> bool {
        match &self.agent {
            Some(agent) => agent.in_flight(),
            None => self.status == StepStatus::Running,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: JobId,
    pub tenant: String,
    /// Shared, never changed after submission: projecting the state past pending events
    /// (every step, `projected`) clones the state, and a plan of many steps is most of
    /// it.
    #[serde(with = "json_text::plan")]
    pub plan: std::sync::Arc<Plan>,
    #[serde(with = "json_text")]
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub status: JobStatus,
    pub steps: BTreeMap<String, StepState>,
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    #[serde(with = "json_text::option")]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Signals received and not yet consumed by a wait step, by name, oldest first.
    pub signals: BTreeMap<String, Vec<BufferedSignal>>,
    /// Every signal id ever applied: a repeated signal id is applied once.
    pub signal_ids: BTreeSet<String>,
    /// The journal of agent steps' messages: each message once, by its digest (snapshot
    /// format 3).
    #[serde(with = "json_text::messages")]
    pub messages: BTreeMap<String, Message>,
    /// Tokens added to the plan's job budget by `budget` signals.
    pub extra_job_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferedSignal {
    pub signal_id: String,
    #[serde(with = "json_text")]
    pub payload: Value,
    pub by: Option<String>,
}

impl JobState {
    /// Folds a whole log. The first event must be `job_submitted` at seq 1.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<Option<JobState>, FoldError> {
        let mut state: Option<JobState> = None;
        for e in events {
            match state.as_mut() {
                None => state = Some(JobState::genesis(e)?),
                Some(s) => s.apply(e)?,
            }
        }
        Ok(state)
    }

    /// Folds `events` on top of an optional snapshot (the state at some seq).
    pub fn replay<'a>(
        snapshot: Option<JobState>,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<Option<JobState>, FoldError> {
        let mut state = snapshot;
        for e in events {
            match state.as_mut() {
                None => state = Some(JobState::genesis(e)?),
                Some(s) => {
                    if e.seq <= s.last_seq {
                        continue; // already folded into the snapshot
                    }
                    s.apply(e)?
                }
            }
        }
        Ok(state)
    }

    /// The state after the first event.
    pub fn genesis(e: &RecordedEvent) -> Result<JobState, FoldError> {
        let EventBody::JobSubmitted {
            tenant,
            plan,
            input,
            idempotency_key,
        } = &e.body
        else {
            return Err(FoldError::NotSubmittedFirst { seq: e.seq });
        };
        if e.seq != 1 {
            return Err(FoldError::SeqGap {
                expected_after: 0,
                got: e.seq,
            });
        }
        Ok(JobState {
            job_id: e.job_id,
            tenant: tenant.clone(),
            steps: plan
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepState::new()))
                .collect(),
            plan: std::sync::Arc::new(plan.clone()),
            input: input.clone(),
            idempotency_key: idempotency_key.clone(),
            status: JobStatus::Queued,
            last_seq: e.seq,
            last_hash: e.hash,
            output: None,
            error: None,
            created_at_ms: e.recorded_at_ms,
            updated_at_ms: e.recorded_at_ms,
            signals: BTreeMap::new(),
            signal_ids: BTreeSet::new(),
            messages: BTreeMap::new(),
            extra_job_tokens: 0,
        })
    }

    fn step_mut(&mut self, seq: u64, step: &str) -> Result<&mut StepState, FoldError> {
        self.steps
            .get_mut(step)
            .ok_or_else(|| FoldError::UnknownStep {
                seq,
                step: step.to_string(),
            })
    }

    /// The step, which must be in `expected` status.
    fn step_in(
        &mut self,
        seq: u64,
        step: &str,
        expected: StepStatus,
    ) -> Result<&mut StepState, FoldError> {
        let st = self.step_mut(seq, step)?;
        if st.status != expected {
            return Err(FoldError::IllegalTransition {
                seq,
                step: step.to_string(),
                detail: format!("{} while {}", expected.as_str(), st.status.as_str()),
            });
        }
        Ok(st)
    }

    /// Applies one event. Errors leave `self` unchanged.
    pub fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        if e.seq != self.last_seq + 1 {
            return Err(FoldError::SeqGap {
                expected_after: self.last_seq,
                got: e.seq,
            });
        }
        if self.status.is_terminal() {
            return Err(FoldError::AfterTerminal { seq: e.seq });
        }
        let seq = e.seq;
        let at = e.recorded_at_ms;
        // The ledger move, by the same rule the stores' append planner uses; computed
        // before anything changes, so an illegal move leaves `self` as it was.
        let ledger = match e.body.ledger_move() {
            Some(mv) => {
                let (current, effect) = self.ledger_slot(seq, mv.step)?;
                let (status, _) =
                    mv.next(current, effect)
                        .map_err(|detail| FoldError::IllegalTransition {
                            seq,
                            step: mv.step.to_string(),
                            detail,
                        })?;
                Some(status)
            }
            None => None,
        };
        let agent_event = e.body.agent_step().is_some()
            || matches!(&e.body, EventBody::StepConfirmed { step, .. } if crate::agent::owner_of(step).is_some());
        if agent_event {
            self.apply_agent(seq, at, &e.body, ledger)?;
        }
        match &e.body {
            _ if agent_event => {}
            EventBody::JobSubmitted { .. } => return Err(FoldError::SubmittedTwice { seq }),
            EventBody::StepStarted {
                step,
                attempt,
                invocation_key,
                effect,
                ..
            } => {
                let st = self.step_mut(seq, step)?;
                st.ledger = ledger;
                st.status = StepStatus::Running;
                st.attempt = *attempt;
                st.invocation_key = Some(invocation_key.clone());
                st.effect = Some(*effect);
                st.retry_at_ms = None;
                st.error = None;
                st.started_at_ms = Some(at);
            }
            EventBody::StepSucceeded { step, output, .. } => {
                let st = self.step_mut(seq, step)?;
                st.ledger = ledger;
                st.status = StepStatus::Succeeded;
                st.output = Some(output.clone());
                st.finished_at_ms = Some(at);
            }
            EventBody::StepFailed {
                step,
                error,
                retry_after_ms,
                ..
            } => {
                let st = self.step_mut(seq, step)?;
                st.ledger = ledger;
                st.error = Some(error.clone());
                st.finished_at_ms = Some(at);
                match retry_after_ms {
                    Some(d) => {
                        st.status = StepStatus::Pending;
                        st.retry_at_ms = Some(at.saturating_add(*d as i64));
                    }
                    None => st.status = StepStatus::Failed,
                }
            }
            EventBody::StepOutcomeUnknown { step, reason, .. } => {
                let st = self.step_mut(seq, step)?;
                st.ledger = ledger;
                st.status = StepStatus::OutcomeUnknown;
                st.error = Some(reason.clone());
                st.finished_at_ms = Some(at);
            }
            EventBody::JobSucceeded { output } => self.output = Some(output.clone()),
            EventBody::JobFailed { error, .. } => self.error = Some(error.clone()),
            EventBody::JobCancelled { by, reason, .. } => {
                self.error = Some(format!("cancelled by {by}: {reason}"))
            }
            EventBody::SignalReceived {
                signal,
                signal_id,
                payload,
                by,
                ..
            } => {
                if self.signal_ids.contains(signal_id) {
                    return Err(FoldError::IllegalTransition {
                        seq,
                        step: String::new(),
                        detail: format!("signal id {signal_id:?} applied twice"),
                    });
                }
                self.signal_ids.insert(signal_id.clone());
                self.signals
                    .entry(signal.clone())
                    .or_default()
                    .push(BufferedSignal {
                        signal_id: signal_id.clone(),
                        payload: payload.clone(),
                        by: by.clone(),
                    });
            }
            EventBody::WaitStarted { step, timeout_ms } => {
                let st = self.step_in(seq, step, StepStatus::Pending)?;
                st.status = StepStatus::Waiting;
                st.started_at_ms = Some(at);
                st.deadline_ms = timeout_ms.map(|t| at.saturating_add(t as i64));
            }
            EventBody::WaitCompleted {
                step,
                signal_id,
                output,
            } => {
                let name = self
                    .plan
                    .step(step)
                    .and_then(|s| s.wait.as_ref())
                    .map(|w| w.signal.clone())
                    .ok_or_else(|| FoldError::UnknownStep {
                        seq,
                        step: step.clone(),
                    })?;
                let buffered = self
                    .signals
                    .get(&name)
                    .is_some_and(|v| v.iter().any(|b| &b.signal_id == signal_id));
                if !buffered {
                    return Err(FoldError::IllegalTransition {
                        seq,
                        step: step.clone(),
                        detail: format!("signal {signal_id:?} was not received"),
                    });
                }
                let st = self.step_in(seq, step, StepStatus::Waiting)?;
                st.status = StepStatus::Succeeded;
                st.output = Some(output.clone());
                st.finished_at_ms = Some(at);
                st.deadline_ms = None;
                if let Some(v) = self.signals.get_mut(&name) {
                    v.retain(|b| &b.signal_id != signal_id);
                    if v.is_empty() {
                        self.signals.remove(&name);
                    }
                }
            }
            EventBody::WaitTimedOut { step } => {
                let default = self
                    .plan
                    .step(step)
                    .and_then(|s| s.wait.as_ref())
                    .and_then(|w| w.default.clone());
                let signal = self
                    .plan
                    .step(step)
                    .and_then(|s| s.wait.as_ref())
                    .map(|w| w.signal.clone())
                    .unwrap_or_default();
                let st = self.step_in(seq, step, StepStatus::Waiting)?;
                st.finished_at_ms = Some(at);
                st.deadline_ms = None;
                match default {
                    Some(d) => {
                        st.status = StepStatus::Succeeded;
                        st.output = Some(d);
                    }
                    None => {
                        st.status = StepStatus::Failed;
                        st.error = Some(format!("timed out waiting for signal {signal:?}"));
                    }
                }
            }
            EventBody::SleepStarted { step, duration_ms } => {
                let st = self.step_in(seq, step, StepStatus::Pending)?;
                st.status = StepStatus::Sleeping;
                st.started_at_ms = Some(at);
                st.deadline_ms = Some(at.saturating_add(*duration_ms as i64));
            }
            EventBody::SleepFinished { step } => {
                let st = self.step_in(seq, step, StepStatus::Sleeping)?;
                st.status = StepStatus::Succeeded;
                st.output = Some(Value::Null);
                st.finished_at_ms = Some(at);
                st.deadline_ms = None;
            }
            EventBody::StepConfirmed {
                step,
                outcome,
                output,
                by,
                ..
            } => {
                let st = self.step_mut(seq, step)?;
                st.ledger = ledger;
                st.finished_at_ms = Some(at);
                match outcome {
                    crate::event::ConfirmOutcome::Succeeded => {
                        st.status = StepStatus::Succeeded;
                        st.output = Some(output.clone().unwrap_or(Value::Null));
                        st.error = None;
                    }
                    crate::event::ConfirmOutcome::NotExecuted => {
                        st.status = StepStatus::Pending;
                        st.error = Some(format!("confirmed not executed by {by}; runs again"));
                    }
                }
            }
            EventBody::JobParked { .. } => {}
            // The agent events, applied above.
            _ => {}
        }
        self.status = self.status.after(&e.body);
        self.last_seq = seq;
        self.last_hash = e.hash;
        self.updated_at_ms = at;
        Ok(())
    }

    /// The state once `bodies` are appended at `at_ms` (store clock), by the same fold: what
    /// a writer decides its next events from before its append is durable. The hashes are
    /// not known yet and are left zero. Errors like [`JobState::apply`].
    pub fn projected<'a>(
        &self,
        bodies: impl IntoIterator<Item = &'a EventBody>,
        at_ms: i64,
    ) -> Result<JobState, FoldError> {
        let mut next = self.clone();
        for body in bodies {
            next.apply(&RecordedEvent {
                job_id: self.job_id,
                seq: next.last_seq + 1,
                recorded_at_ms: at_ms,
                body: body.clone(),
                prev_hash: [0; 32],
                hash: [0; 32],
            })?;
        }
        Ok(next)
    }
}

/// Recorded outputs of succeeded steps, for resolving `${steps.ID.output…}`.
impl crate::template::StepOutputs for JobState {
    fn output(&self, step: &str) -> Option<&Value> {
        self.steps.get(step)?.output.as_ref()
    }
}
