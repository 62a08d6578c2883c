//! The agent's part of the fold: `AgentState` (in the agent step's `StepState`) and how each
//! agent event changes it. Messages live in the job's journal (`JobState::messages`, one
//! entry per digest); the conversation is the list of their digests with a running prefix
//! digest. Tool results become messages here, when the last call of a turn settles, from
//! the outcome events alone, so they are never stored twice and replay rebuilds them
//! exactly (G5). Every check is made before anything changes: a refused event leaves the
//! state as it was.

use super::message::{chain_digest, JournaledMessage, Message, Role, EMPTY_CONVERSATION};
use super::{approval_signal, owner_of, AgentSpec, BUDGET_SIGNAL};
use crate::error::FoldError;
use crate::event::{ConfirmOutcome, EventBody};
use crate::ledger::LedgerStatus;
use crate::plan::EffectClass;
use crate::state::{JobState, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Whose token budget a model call would breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// The step's `budget.tokens` (raised by `budget` signals).
    Step,
    /// The plan's `budget.tokens` (all agent steps of the job together).
    Job,
    /// The tenant's `llm_tokens_per_day`.
    Tenant,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Step => "step",
            BudgetScope::Job => "job",
            BudgetScope::Tenant => "tenant",
        }
    }
}

/// A step waiting for a `budget` signal (or, for the tenant's daily budget, the next day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Park {
    pub scope: BudgetScope,
    pub limit: u64,
    pub used: u64,
    /// What the refused call would have reserved.
    pub needed: u64,
    /// When the wait ends by itself (the tenant's next day), store clock.
    pub until_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelStatus {
    /// No model call in flight.
    Idle,
    /// A model call is started (its `agent_model_started` is durable) and unanswered.
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallStatus {
    /// Not started yet, waiting for an approval, or due again at `retry_at_ms`.
    Pending,
    Running,
    Succeeded,
    /// Failed for good (no attempt left, or a permanent error).
    Failed,
    /// A side_effect call whose outcome is unknown: waits for a confirmation.
    OutcomeUnknown,
    /// Never run: an unknown tool, arguments that fail its schema, or a human's rejection.
    Refused,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Running => "running",
            CallStatus::Succeeded => "succeeded",
            CallStatus::Failed => "failed",
            CallStatus::OutcomeUnknown => "outcome_unknown",
            CallStatus::Refused => "refused",
        }
    }
    /// The call has a result the model can be told.
    pub fn settled(self) -> bool {
        matches!(
            self,
            CallStatus::Succeeded | CallStatus::Failed | CallStatus::Refused
        )
    }
}

/// One tool call the model asked for: a child invocation of the agent step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCall {
    /// `step.turn.index`: its ledger name, and the name in its approval signal.
    pub id: String,
    pub turn: u32,
    pub index: u32,
    /// The provider's id of the call, which the tool result answers.
    pub provider_id: String,
    pub tool: String,
    /// The arguments as JSON text: the model's, or the approver's edit.
    pub arguments: String,
    pub needs_approval: bool,
    pub approved_by: Option<String>,
    pub status: CallStatus,
    pub attempt: u32,
    pub invocation_key: Option<String>,
    pub effect: Option<EffectClass>,
    pub ledger: Option<LedgerStatus>,
    /// The output as JSON text.
    pub output: Option<String>,
    pub error: Option<String>,
    pub retry_at_ms: Option<i64>,
}

impl AgentCall {
    /// Waits for its `approve:<id>` signal.
    pub fn awaits_approval(&self) -> bool {
        self.needs_approval && self.approved_by.is_none() && self.status == CallStatus::Pending
    }
}

/// One answered model call, for `job get` and replay-diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub turn: u32,
    pub provider: String,
    pub model: String,
    /// Messages of the conversation the request held (its first `request_len`).
    pub request_len: u32,
    /// The prefix digest of that conversation.
    pub request_digest: String,
    /// Digests of the answer's messages.
    pub answer: Vec<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Attempts the answer took.
    pub attempts: u32,
}

/// An agent step's loop, folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub provider: String,
    pub model: String,
    /// The conversation: message digests, in order (bodies in `JobState::messages`).
    pub conversation: Vec<String>,
    /// The prefix digest of the whole conversation.
    pub conversation_digest: String,
    /// Bytes of the conversation's messages, for the input-token estimate.
    pub conversation_bytes: u64,
    /// Model calls answered so far (the current turn's number).
    pub answered: u32,
    pub model_status: ModelStatus,
    /// Attempts of the next (or running) model call so far.
    pub model_attempt: u32,
    pub model_key: Option<String>,
    pub model_ledger: Option<LedgerStatus>,
    pub model_retry_at_ms: Option<i64>,
    pub model_error: Option<String>,
    /// Tokens reserved by the model call in flight.
    pub reserved_tokens: u64,
    pub turns: Vec<TurnRecord>,
    /// Every tool call of every turn.
    pub calls: Vec<AgentCall>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Tokens added to the step's budget by `budget` signals.
    pub extra_tokens: u64,
    pub park: Option<Park>,
    /// The last turn whose tool results are in the conversation.
    pub results_of_turn: u32,
}

impl AgentState {
    fn new(provider: &str, model: &str) -> AgentState {
        AgentState {
            provider: provider.to_string(),
            model: model.to_string(),
            conversation: Vec::new(),
            conversation_digest: EMPTY_CONVERSATION.to_string(),
            conversation_bytes: 0,
            answered: 0,
            model_status: ModelStatus::Idle,
            model_attempt: 0,
            model_key: None,
            model_ledger: None,
            model_retry_at_ms: None,
            model_error: None,
            reserved_tokens: 0,
            turns: Vec::new(),
            calls: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            extra_tokens: 0,
            park: None,
            results_of_turn: 0,
        }
    }

    pub fn used_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The calls of the current turn.
    pub fn current_calls(&self) -> impl Iterator<Item = &AgentCall> {
        let turn = self.answered;
        self.calls.iter().filter(move |c| c.turn == turn)
    }

    pub fn call(&self, id: &str) -> Option<&AgentCall> {
        self.calls.iter().rev().find(|c| c.id == id)
    }

    fn call_mut(&mut self, id: &str) -> Option<&mut AgentCall> {
        self.calls.iter_mut().rev().find(|c| c.id == id)
    }

    /// Something of the step is in flight: a model call or a tool call.
    pub fn in_flight(&self) -> bool {
        self.model_status == ModelStatus::Running
            || self
                .current_calls()
                .any(|c| c.status == CallStatus::Running)
    }

    /// Every call of the current turn has a result the model can be told.
    pub fn turn_settled(&self) -> bool {
        self.current_calls().all(|c| c.status.settled())
    }

    /// The signals the step waits for now, if it waits for a human.
    pub fn awaited_signals(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .current_calls()
            .filter(|c| c.awaits_approval())
            .map(|c| approval_signal(&c.id))
            .collect();
        if self.park.is_some() {
            out.push(BUDGET_SIGNAL.to_string());
        }
        out
    }

    /// Nothing in flight, and waiting for a human (an approval, a budget decision, a
    /// confirmation) or the next day.
    fn waits(&self) -> bool {
        !self.in_flight()
            && (self.park.is_some()
                || self
                    .current_calls()
                    .any(|c| c.awaits_approval() || c.status == CallStatus::OutcomeUnknown))
    }

    /// Appends messages (already in the journal) to the conversation.
    fn extend(&mut self, digests: &[String], journal: &dyn Journal) {
        for d in digests {
            self.conversation_digest = chain_digest(&self.conversation_digest, d);
            self.conversation.push(d.clone());
            self.conversation_bytes += journal.body(d).map_or(0, Message::size_bytes);
        }
    }
}

/// The tool-result message of a settled call.
fn result_message(call: &AgentCall) -> Message {
    match call.status {
        CallStatus::Succeeded => Message::tool_result(
            &call.provider_id,
            call.output.clone().unwrap_or_else(|| "null".into()),
            false,
        ),
        _ => Message::tool_result(
            &call.provider_id,
            call.error
                .clone()
                .unwrap_or_else(|| "the call failed".into()),
            true,
        ),
    }
}

fn illegal(seq: u64, step: &str, detail: impl Into<String>) -> FoldError {
    FoldError::IllegalTransition {
        seq,
        step: step.to_string(),
        detail: detail.into(),
    }
}

/// Checks journaled messages against the journal: a body must have its digest; a bare
/// digest must be known. Returns the bodies to add.
fn check_journaled(
    seq: u64,
    step: &str,
    messages: &[JournaledMessage],
    journal: &BTreeMap<String, Message>,
) -> Result<Vec<(String, Message)>, FoldError> {
    let mut new = Vec::new();
    for m in messages {
        match &m.message {
            Some(body) => {
                if body.digest() != m.digest {
                    return Err(illegal(
                        seq,
                        step,
                        format!("message digest {} does not match its body", m.digest),
                    ));
                }
                new.push((m.digest.clone(), body.clone()));
            }
            None if journal.contains_key(&m.digest) || new.iter().any(|(d, _)| *d == m.digest) => {}
            None => {
                return Err(illegal(
                    seq,
                    step,
                    format!("message {} is not in the journal", m.digest),
                ))
            }
        }
    }
    Ok(new)
}

/// Removes the buffered signal `signal_id` of `name`; `Err` if it was not received.
fn consume_signal(
    state: &JobState,
    seq: u64,
    step: &str,
    name: &str,
    signal_id: &str,
) -> Result<(), FoldError> {
    let buffered = state
        .signals
        .get(name)
        .is_some_and(|v| v.iter().any(|b| b.signal_id == signal_id));
    if buffered {
        Ok(())
    } else {
        Err(illegal(
            seq,
            step,
            format!("signal {signal_id:?} of {name:?} was not received"),
        ))
    }
}

fn drop_signal(state: &mut JobState, name: &str, signal_id: &str) {
    if let Some(v) = state.signals.get_mut(name) {
        v.retain(|b| b.signal_id != signal_id);
        if v.is_empty() {
            state.signals.remove(name);
        }
    }
}

/// The start of the next UTC day after `at_ms`.
pub fn next_day_ms(at_ms: i64) -> i64 {
    (at_ms.div_euclid(86_400_000) + 1) * 86_400_000
}

impl JobState {
    /// The agent step `step`'s spec, if it is an agent step of the plan.
    pub fn agent_spec(&self, step: &str) -> Option<&AgentSpec> {
        self.plan.step(step).and_then(|s| s.agent.as_ref())
    }

    /// The status of a plan step, or of an agent step's tool call (`step.turn.index`) as a
    /// step's: what a confirmation checks (it resolves `outcome_unknown` only).
    pub fn status_of(&self, name: &str) -> Option<StepStatus> {
        match owner_of(name) {
            None => self.steps.get(name).map(|s| s.status),
            Some(step) => {
                let call = self.agent(step)?.call(name)?;
                Some(match call.status {
                    CallStatus::OutcomeUnknown => StepStatus::OutcomeUnknown,
                    CallStatus::Running => StepStatus::Running,
                    CallStatus::Pending => StepStatus::Pending,
                    CallStatus::Succeeded => StepStatus::Succeeded,
                    CallStatus::Failed | CallStatus::Refused => StepStatus::Failed,
                })
            }
        }
    }

    pub fn agent(&self, step: &str) -> Option<&AgentState> {
        self.steps.get(step).and_then(|s| s.agent.as_deref())
    }

    /// The current ledger status and effect class of a ledger name: a plan step's own, or
    /// an agent step's model call (`step.turn`, idempotent) or tool call (`step.turn.index`).
    pub(crate) fn ledger_slot(
        &self,
        seq: u64,
        name: &str,
    ) -> Result<(Option<LedgerStatus>, Option<EffectClass>), FoldError> {
        let unknown = || FoldError::UnknownStep {
            seq,
            step: name.to_string(),
        };
        match owner_of(name) {
            None => {
                let st = self.steps.get(name).ok_or_else(unknown)?;
                Ok((st.ledger, st.effect))
            }
            Some(step) => {
                let agent = self.agent(step).ok_or_else(unknown)?;
                if name.matches('.').count() == 1 {
                    // One row per turn: an answered turn's is done; the next one's is live.
                    let turn: u32 = name[step.len() + 1..].parse().map_err(|_| unknown())?;
                    let status = match turn {
                        t if t <= agent.answered => Some(LedgerStatus::Succeeded),
                        t if t == agent.answered + 1 => agent.model_ledger,
                        _ => None,
                    };
                    Ok((status, Some(EffectClass::Idempotent)))
                } else {
                    let call = agent.call(name).ok_or_else(unknown)?;
                    Ok((call.ledger, call.effect))
                }
            }
        }
    }

    /// A working copy of agent step `step`'s state (checked to exist and be unfinished),
    /// with its spec.
    fn agent_copy(&self, seq: u64, step: &str) -> Result<(AgentSpec, AgentState), FoldError> {
        let spec = self
            .agent_spec(step)
            .cloned()
            .ok_or_else(|| FoldError::UnknownStep {
                seq,
                step: step.to_string(),
            })?;
        let st = self.steps.get(step).ok_or_else(|| FoldError::UnknownStep {
            seq,
            step: step.to_string(),
        })?;
        if matches!(st.status, StepStatus::Succeeded | StepStatus::Failed) {
            return Err(illegal(
                seq,
                step,
                format!("agent event after the step {}", st.status.as_str()),
            ));
        }
        let agent = st
            .agent
            .as_deref()
            .cloned()
            .ok_or_else(|| illegal(seq, step, "agent event before agent_started"))?;
        Ok((spec, agent))
    }

    /// Stores the working copy back, adds its new messages to the journal, and sets the
    /// step's status from it (unless `end` finishes the step).
    fn agent_commit(
        &mut self,
        step: &str,
        at: i64,
        agent: AgentState,
        new_messages: Vec<(String, Message)>,
        end: Option<Result<Value, String>>,
    ) {
        for (digest, body) in new_messages {
            self.messages.entry(digest).or_insert(body);
        }
        if let Some(st) = self.steps.get_mut(step) {
            match end {
                Some(Ok(output)) => {
                    st.status = StepStatus::Succeeded;
                    st.output = Some(output);
                    st.error = None;
                    st.finished_at_ms = Some(at);
                }
                Some(Err(error)) => {
                    st.status = StepStatus::Failed;
                    st.error = Some(error);
                    st.finished_at_ms = Some(at);
                }
                None => {
                    st.status = if agent.waits() {
                        StepStatus::Waiting
                    } else {
                        StepStatus::Running
                    };
                    st.error = agent.model_error.clone();
                }
            }
            st.deadline_ms = agent.park.as_ref().and_then(|p| p.until_ms);
            st.agent = Some(Box::new(agent));
        }
    }

    /// When the current turn's last call settles: its calls' results, in call order, join
    /// the conversation (and the journal). Returns the new journal entries.
    fn add_results(
        agent: &mut AgentState,
        journal: &BTreeMap<String, Message>,
    ) -> Vec<(String, Message)> {
        if agent.answered == agent.results_of_turn || !agent.turn_settled() {
            return Vec::new();
        }
        let messages: Vec<Message> = agent.current_calls().map(result_message).collect();
        let mut local = journal.clone_subset();
        let mut new = Vec::new();
        let mut digests = Vec::new();
        for m in messages {
            let d = m.digest();
            if !journal.contains_key(&d) && !local.contains_key(&d) {
                new.push((d.clone(), m.clone()));
            }
            local.insert(d.clone(), m);
            digests.push(d);
        }
        agent.results_of_turn = agent.answered;
        agent.extend(&digests, &local);
        new
    }

    /// Applies one agent event (or a confirmation of an agent's tool call). `ledger` is the
    /// status the event's ledger move leads to, already checked. One method per event
    /// below; each checks everything before it changes anything.
    pub(crate) fn apply_agent(
        &mut self,
        seq: u64,
        at: i64,
        body: &EventBody,
        ledger: Option<LedgerStatus>,
    ) -> Result<(), FoldError> {
        match body {
            EventBody::AgentStarted {
                step,
                provider,
                model,
                messages,
                error,
            } => self.agent_started(seq, at, step, provider, model, messages, error.as_deref()),
            EventBody::AgentModelStarted {
                step,
                call,
                turn,
                attempt,
                invocation_key,
                provider,
                model,
                reserved_tokens,
                request_digest,
                ..
            } => {
                let start = ModelStart {
                    call,
                    turn: *turn,
                    attempt: *attempt,
                    invocation_key,
                    provider,
                    model,
                    reserved_tokens: *reserved_tokens,
                    request_digest,
                };
                self.model_started(seq, at, step, start, ledger)
            }
            EventBody::AgentModelAnswered {
                step,
                call,
                turn,
                attempt,
                messages,
                input_tokens,
                output_tokens,
            } => {
                let answer = ModelAnswer {
                    call,
                    turn: *turn,
                    attempt: *attempt,
                    messages,
                    input_tokens: *input_tokens,
                    output_tokens: *output_tokens,
                };
                self.model_answered(seq, at, step, answer)
            }
            EventBody::AgentModelFailed {
                step,
                call,
                turn,
                error,
                retry_after_ms,
                budget,
                ..
            } => {
                let failure = ModelFailure {
                    call,
                    turn: *turn,
                    error,
                    retry_after_ms: *retry_after_ms,
                    budget: *budget,
                };
                self.model_failed(seq, at, step, failure, ledger)
            }
            EventBody::AgentToolStarted {
                step,
                call,
                attempt,
                invocation_key,
                tool,
                effect,
                ..
            } => {
                let start = ToolStart {
                    call,
                    attempt: *attempt,
                    invocation_key,
                    tool,
                    effect: *effect,
                };
                self.tool_started(seq, at, step, start, ledger)
            }
            EventBody::AgentToolSucceeded {
                step, call, output, ..
            } => self.call_result(seq, at, step, call, ledger, CallStatus::Running, |c| {
                c.status = CallStatus::Succeeded;
                c.output = Some(output.to_string());
            }),
            EventBody::AgentToolFailed {
                step,
                call,
                error,
                retry_after_ms,
                ..
            } => self.call_result(seq, at, step, call, ledger, CallStatus::Running, |c| {
                c.error = Some(error.clone());
                match retry_after_ms {
                    Some(d) => {
                        c.status = CallStatus::Pending;
                        c.retry_at_ms = Some(at.saturating_add(*d as i64));
                    }
                    None => c.status = CallStatus::Failed,
                }
            }),
            EventBody::AgentToolOutcomeUnknown {
                step, call, reason, ..
            } => self.call_result(seq, at, step, call, ledger, CallStatus::Running, |c| {
                c.status = CallStatus::OutcomeUnknown;
                c.error = Some(reason.clone());
            }),
            EventBody::AgentToolRefused {
                step,
                call,
                reason,
                signal_id,
                ..
            } => {
                if let Some(id) = signal_id {
                    consume_signal(self, seq, step, &approval_signal(call), id)?;
                }
                self.call_result(seq, at, step, call, ledger, CallStatus::Pending, |c| {
                    c.status = CallStatus::Refused;
                    c.error = Some(reason.clone());
                })?;
                if let Some(id) = signal_id {
                    drop_signal(self, &approval_signal(call), id);
                }
                Ok(())
            }
            EventBody::AgentToolApproved {
                step,
                call,
                signal_id,
                args,
                by,
            } => {
                consume_signal(self, seq, step, &approval_signal(call), signal_id)?;
                self.call_result(seq, at, step, call, ledger, CallStatus::Pending, |c| {
                    c.approved_by = Some(by.clone().unwrap_or_else(|| "unknown".into()));
                    if let Some(edited) = args {
                        c.arguments = edited.to_string();
                    }
                })?;
                drop_signal(self, &approval_signal(call), signal_id);
                Ok(())
            }
            EventBody::AgentBudgetReached {
                step,
                scope,
                limit,
                used,
                needed,
            } => {
                let park = Park {
                    scope: *scope,
                    limit: *limit,
                    used: *used,
                    needed: *needed,
                    until_ms: None,
                };
                self.budget_reached(seq, at, step, park)
            }
            EventBody::AgentBudgetDecided {
                step,
                signal_id,
                raise_tokens,
                stop,
                by,
            } => {
                let decision = BudgetDecision {
                    signal_id: signal_id.as_deref(),
                    raise_tokens: *raise_tokens,
                    stop: *stop,
                    by: by.as_deref(),
                };
                self.budget_decided(seq, at, step, decision)
            }
            EventBody::StepConfirmed {
                step: call,
                outcome,
                output,
                ..
            } => self.call_confirmed(seq, at, call, *outcome, output.as_ref(), ledger),
            _ => Ok(()),
        }
    }

    /// `agent_started`: a pending agent step gets its state and first messages.
    #[allow(clippy::too_many_arguments)]
    fn agent_started(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        provider: &str,
        model: &str,
        messages: &[JournaledMessage],
        error: Option<&str>,
    ) -> Result<(), FoldError> {
        let spec_ok = self.agent_spec(step).is_some();
        let st = self.steps.get(step).ok_or_else(|| FoldError::UnknownStep {
            seq,
            step: step.to_string(),
        })?;
        if !spec_ok || st.status != StepStatus::Pending || st.agent.is_some() {
            return Err(illegal(
                seq,
                step,
                "agent_started for a step that is not a pending agent step",
            ));
        }
        let new = check_journaled(seq, step, messages, &self.messages)?;
        let mut agent = AgentState::new(provider, model);
        let mut journal_view = self.messages.clone_subset();
        journal_view.extend(new.iter().cloned());
        let digests: Vec<String> = messages.iter().map(|m| m.digest.clone()).collect();
        agent.extend(&digests, &journal_view);
        if let Some(st) = self.steps.get_mut(step) {
            st.attempt = 1;
            st.started_at_ms = Some(at);
        }
        let end = error.map(|e| Err(e.to_string()));
        self.agent_commit(step, at, agent, new, end);
        Ok(())
    }

    /// `agent_model_started`: the next turn's model call starts (or a running one is
    /// started again under the same attempt and key).
    fn model_started(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        s: ModelStart<'_>,
        ledger: Option<LedgerStatus>,
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        if s.turn != agent.answered + 1 || s.call != super::model_call_name(step, s.turn) {
            return Err(illegal(
                seq,
                step,
                format!(
                    "model call {} is not the next turn ({})",
                    s.call,
                    agent.answered + 1
                ),
            ));
        }
        if s.request_digest != agent.conversation_digest {
            return Err(illegal(
                seq,
                step,
                "model call request is not the recorded conversation",
            ));
        }
        if agent.park.is_some() || !agent.turn_settled() {
            return Err(illegal(
                seq,
                step,
                "model call while tool calls or a budget wait are unresolved",
            ));
        }
        if agent.model_status == ModelStatus::Running
            && (agent.model_attempt != s.attempt
                || agent.model_key.as_deref() != Some(s.invocation_key))
        {
            return Err(illegal(
                seq,
                step,
                "a running model call restarted as another attempt",
            ));
        }
        agent.provider = s.provider.to_string();
        agent.model = s.model.to_string();
        agent.model_status = ModelStatus::Running;
        agent.model_attempt = s.attempt;
        agent.model_key = Some(s.invocation_key.to_string());
        agent.model_ledger = ledger;
        agent.model_retry_at_ms = None;
        agent.reserved_tokens = s.reserved_tokens;
        self.agent_commit(step, at, agent, Vec::new(), None);
        Ok(())
    }

    /// `agent_model_answered`: the running call's answer joins the conversation; its tool
    /// calls become the turn's calls, or, without any, the answer ends the step.
    fn model_answered(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        a: ModelAnswer<'_>,
    ) -> Result<(), FoldError> {
        let (spec, mut agent) = self.agent_copy(seq, step)?;
        if agent.model_status != ModelStatus::Running
            || a.turn != agent.answered + 1
            || a.call != super::model_call_name(step, a.turn)
        {
            return Err(illegal(
                seq,
                step,
                format!("answer of {}, which is not running", a.call),
            ));
        }
        let new = check_journaled(seq, step, a.messages, &self.messages)?;
        let mut journal_view = self.messages.clone_subset();
        journal_view.extend(new.iter().cloned());
        let answer = a
            .messages
            .last()
            .and_then(|m| journal_view.get(&m.digest))
            .filter(|m| m.role == Role::Assistant)
            .cloned()
            .ok_or_else(|| {
                illegal(
                    seq,
                    step,
                    "a model answer must end with an assistant message",
                )
            })?;
        let digests: Vec<String> = a.messages.iter().map(|m| m.digest.clone()).collect();
        agent.turns.push(TurnRecord {
            turn: a.turn,
            provider: agent.provider.clone(),
            model: agent.model.clone(),
            request_len: agent.conversation.len() as u32,
            request_digest: agent.conversation_digest.clone(),
            answer: digests.clone(),
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            attempts: a.attempt,
        });
        agent.extend(&digests, &journal_view);
        agent.answered = a.turn;
        agent.results_of_turn = a.turn;
        agent.model_status = ModelStatus::Idle;
        // The turn's row is done; the next turn's starts afresh.
        agent.model_ledger = None;
        agent.model_attempt = 0;
        agent.model_error = None;
        agent.reserved_tokens = 0;
        agent.input_tokens = agent.input_tokens.saturating_add(a.input_tokens);
        agent.output_tokens = agent.output_tokens.saturating_add(a.output_tokens);
        for (i, tc) in answer.tool_calls.iter().enumerate() {
            agent.calls.push(AgentCall {
                id: super::tool_call_name(step, a.turn, i as u32),
                turn: a.turn,
                index: i as u32,
                provider_id: tc.id.clone(),
                tool: tc.name.clone(),
                arguments: tc.arguments.clone(),
                needs_approval: spec.needs_approval(&tc.name),
                approved_by: None,
                status: CallStatus::Pending,
                attempt: 0,
                invocation_key: None,
                effect: None,
                ledger: None,
                output: None,
                error: None,
                retry_at_ms: None,
            });
        }
        let end = if answer.tool_calls.is_empty() {
            Some(Ok(json!({
                "answer": answer.content,
                "turns": a.turn,
                "usage": {"input_tokens": agent.input_tokens, "output_tokens": agent.output_tokens},
            })))
        } else {
            // Results of this turn's calls join the conversation once they settle.
            agent.results_of_turn = a.turn - 1;
            (a.turn >= spec.max_turns()).then(|| {
                Err(format!(
                    "max_turns ({}) reached and the model still asks for tools",
                    spec.max_turns()
                ))
            })
        };
        self.agent_commit(step, at, agent, new, end);
        Ok(())
    }

    /// `agent_model_failed`: the running call failed; it parks on a budget, waits for its
    /// retry, or fails the step.
    fn model_failed(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        f: ModelFailure<'_>,
        ledger: Option<LedgerStatus>,
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        if agent.model_status != ModelStatus::Running
            || f.turn != agent.answered + 1
            || f.call != super::model_call_name(step, f.turn)
        {
            return Err(illegal(
                seq,
                step,
                format!("failure of {}, which is not running", f.call),
            ));
        }
        agent.model_status = ModelStatus::Idle;
        agent.model_ledger = ledger;
        agent.reserved_tokens = 0;
        agent.model_error = Some(f.error.to_string());
        let mut end = None;
        match (f.budget, f.retry_after_ms) {
            (Some(scope), _) => {
                // Refused for budget: not an attempt that counts.
                agent.model_attempt = agent.model_attempt.saturating_sub(1);
                agent.park = Some(Park {
                    scope,
                    limit: 0,
                    used: 0,
                    needed: 0,
                    until_ms: (scope == BudgetScope::Tenant).then(|| next_day_ms(at)),
                });
            }
            (None, Some(d)) => agent.model_retry_at_ms = Some(at.saturating_add(d as i64)),
            (None, None) => end = Some(Err(format!("model call failed: {}", f.error))),
        }
        self.agent_commit(step, at, agent, Vec::new(), end);
        Ok(())
    }

    /// `agent_tool_started`: a call of the current turn starts (or starts again).
    fn tool_started(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        s: ToolStart<'_>,
        ledger: Option<LedgerStatus>,
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        let turn = agent.answered;
        let call = s.call;
        let c = agent
            .call_mut(call)
            .filter(|c| c.turn == turn && c.tool == s.tool)
            .ok_or_else(|| illegal(seq, step, format!("start of unknown call {call}")))?;
        if !matches!(c.status, CallStatus::Pending | CallStatus::Running) || c.awaits_approval() {
            return Err(illegal(
                seq,
                step,
                format!("call {call} cannot start while {}", c.status.as_str()),
            ));
        }
        c.status = CallStatus::Running;
        c.attempt = s.attempt;
        c.invocation_key = Some(s.invocation_key.to_string());
        c.effect = Some(s.effect);
        c.ledger = ledger;
        c.retry_at_ms = None;
        c.error = None;
        self.agent_commit(step, at, agent, Vec::new(), None);
        Ok(())
    }

    /// `agent_budget_reached`: the step parks until a budget decision.
    fn budget_reached(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        park: Park,
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        if agent.park.is_some() || agent.model_status == ModelStatus::Running {
            return Err(illegal(
                seq,
                step,
                "budget wait while one is open or a model call runs",
            ));
        }
        agent.park = Some(park);
        self.agent_commit(step, at, agent, Vec::new(), None);
        Ok(())
    }

    /// `agent_budget_decided`: the open budget wait ends, raised or stopped.
    fn budget_decided(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        d: BudgetDecision<'_>,
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        let park = agent
            .park
            .take()
            .ok_or_else(|| illegal(seq, step, "budget decision without a budget wait"))?;
        if let Some(id) = d.signal_id {
            consume_signal(self, seq, step, BUDGET_SIGNAL, id)?;
        }
        match park.scope {
            BudgetScope::Step => {
                agent.extra_tokens = agent.extra_tokens.saturating_add(d.raise_tokens)
            }
            BudgetScope::Job => {
                self.extra_job_tokens = self.extra_job_tokens.saturating_add(d.raise_tokens)
            }
            BudgetScope::Tenant => {}
        }
        agent.model_error = None;
        let end = d.stop.then(|| {
            Err(format!(
                "stopped at its {} token budget by {}",
                park.scope.as_str(),
                d.by.unwrap_or("unknown")
            ))
        });
        if let Some(id) = d.signal_id {
            drop_signal(self, BUDGET_SIGNAL, id);
        }
        self.agent_commit(step, at, agent, Vec::new(), end);
        Ok(())
    }

    /// `step_confirmed` of an agent's tool call (`step.turn.index`) left `outcome_unknown`.
    fn call_confirmed(
        &mut self,
        seq: u64,
        at: i64,
        call: &str,
        outcome: ConfirmOutcome,
        output: Option<&Value>,
        ledger: Option<LedgerStatus>,
    ) -> Result<(), FoldError> {
        let step = owner_of(call).unwrap_or(call).to_string();
        self.call_result(
            seq,
            at,
            &step,
            call,
            ledger,
            CallStatus::OutcomeUnknown,
            |c| match outcome {
                ConfirmOutcome::Succeeded => {
                    c.status = CallStatus::Succeeded;
                    c.output = Some(output.cloned().unwrap_or(Value::Null).to_string());
                    c.error = None;
                }
                ConfirmOutcome::NotExecuted => c.status = CallStatus::Pending,
            },
        )
    }

    /// Changes call `call` of agent step `step` (a call of the current turn in status
    /// `from`), then adds the turn's results if it settled.
    #[allow(clippy::too_many_arguments)]
    fn call_result(
        &mut self,
        seq: u64,
        at: i64,
        step: &str,
        call: &str,
        ledger: Option<LedgerStatus>,
        from: CallStatus,
        change: impl FnOnce(&mut AgentCall),
    ) -> Result<(), FoldError> {
        let (_, mut agent) = self.agent_copy(seq, step)?;
        let turn = agent.answered;
        let c = agent
            .call_mut(call)
            .filter(|c| c.turn == turn)
            .ok_or_else(|| illegal(seq, step, format!("unknown call {call}")))?;
        if c.status != from {
            return Err(illegal(
                seq,
                step,
                format!(
                    "call {call} is {}, not {}",
                    c.status.as_str(),
                    from.as_str()
                ),
            ));
        }
        change(c);
        if ledger.is_some() {
            c.ledger = ledger;
        }
        let new = Self::add_results(&mut agent, &self.messages);
        self.agent_commit(step, at, agent, new, None);
        Ok(())
    }
}

/// The fields of `agent_model_started` the fold reads.
struct ModelStart<'a> {
    call: &'a str,
    turn: u32,
    attempt: u32,
    invocation_key: &'a str,
    provider: &'a str,
    model: &'a str,
    reserved_tokens: u64,
    request_digest: &'a str,
}

/// The fields of `agent_model_answered` the fold reads.
struct ModelAnswer<'a> {
    call: &'a str,
    turn: u32,
    attempt: u32,
    messages: &'a [JournaledMessage],
    input_tokens: u64,
    output_tokens: u64,
}

/// The fields of `agent_model_failed` the fold reads.
struct ModelFailure<'a> {
    call: &'a str,
    turn: u32,
    error: &'a str,
    retry_after_ms: Option<u64>,
    budget: Option<BudgetScope>,
}

/// The fields of `agent_tool_started` the fold reads.
struct ToolStart<'a> {
    call: &'a str,
    attempt: u32,
    invocation_key: &'a str,
    tool: &'a str,
    effect: EffectClass,
}

/// The fields of `agent_budget_decided` the fold reads.
struct BudgetDecision<'a> {
    signal_id: Option<&'a str>,
    raise_tokens: u64,
    stop: bool,
    by: Option<&'a str>,
}

/// A small view of the journal for one event: the entries an event adds, looked up
/// alongside the job's journal without copying it.
trait CloneSubset {
    fn clone_subset(&self) -> Overlay<'_>;
}

impl CloneSubset for BTreeMap<String, Message> {
    fn clone_subset(&self) -> Overlay<'_> {
        Overlay {
            base: self,
            added: BTreeMap::new(),
        }
    }
}

/// The job's journal plus the messages an event is about to add.
pub(crate) struct Overlay<'a> {
    base: &'a BTreeMap<String, Message>,
    added: BTreeMap<String, Message>,
}

impl Overlay<'_> {
    fn get(&self, digest: &str) -> Option<&Message> {
        self.added.get(digest).or_else(|| self.base.get(digest))
    }
    fn contains_key(&self, digest: &str) -> bool {
        self.get(digest).is_some()
    }
    fn insert(&mut self, digest: String, m: Message) {
        self.added.insert(digest, m);
    }
    fn extend(&mut self, items: impl IntoIterator<Item = (String, Message)>) {
        self.added.extend(items);
    }
}

/// What `AgentState::extend` needs of a journal.
pub(crate) trait Journal {
    fn body(&self, digest: &str) -> Option<&Message>;
}

impl Journal for BTreeMap<String, Message> {
    fn body(&self, digest: &str) -> Option<&Message> {
        self.get(digest)
    }
}

impl Journal for Overlay<'_> {
    fn body(&self, digest: &str) -> Option<&Message> {
        self.get(digest)
    }
}
