//! What an agent step does next, as events, from the folded state alone: the pure half of
//! the loop (the worker's job actor only carries it out, like `crate::decide`).
//!
//! For each unfinished agent step, in plan order, one round of [`decide_agents`]:
//! 1. a model call in flight: nothing;
//! 2. waiting for a budget decision: a buffered `budget` signal resolves it (raise or stop),
//!    or the tenant's next day does; otherwise wait;
//! 3. tool calls of the current turn not settled: refuse each call naming a tool the step
//!    does not offer or with arguments failing the tool's schema (the model is told why);
//!    resolve approvals from buffered `approve:<call>` signals (approve, approve with
//!    edited arguments, reject); then start every call that is ready (its own ledger row,
//!    invocation key derived from the step's key, effect class of its tool);
//! 4. otherwise ask the model: unless the call would breach the step's or the job's token
//!    budget (reserve `max_tokens` plus an estimate of the input), which parks the step.
//!
//! Recovery ([`recover_agents`]) and the outcome rules ([`model_outcome_event`],
//! [`tool_outcome_event`]) keep G2: an unanswered model call is asked again with the same
//! key (it is idempotent); a tool call follows `crate::outcome` exactly as a plan step does.

use super::message::{JournaledMessage, Message, Role};
use super::state::{AgentCall, BudgetScope, CallStatus, ModelStatus};
use super::{
    approval_signal, child_key, model_call_name, schema, AgentSpec, BUDGET_SIGNAL,
    DEFAULT_MODEL_ATTEMPTS,
};
use crate::event::EventBody;
use crate::ids::invocation_key;
use crate::outcome::{classify, Recorded, ToolOutcome};
use crate::plan::{Backoff, EffectClass, RetryPolicy};
use crate::retry::backoff_ms;
use crate::state::{BufferedSignal, JobState, StepStatus};
use crate::template;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

/// A tool as a model is offered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDecl {
    pub name: String,
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// What the decisions need to know about tools: the worker's tool registry.
pub trait AgentTools {
    fn effect_class(&self, tool: &str) -> Option<EffectClass>;
    fn declaration(&self, tool: &str) -> Option<ToolDecl>;
}

/// The events one round adds, and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentDecision {
    pub events: Vec<EventBody>,
    pub wake_at_ms: Option<i64>,
}

impl AgentDecision {
    fn wake(&mut self, t: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(t, |w| w.min(t)));
    }
}

/// One request to a model, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRequest {
    pub provider: String,
    pub model: String,
    /// The conversation, the system prompt first if there is one.
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDecl>,
    pub max_tokens: u32,
    pub temperature: Option<f64>,
}

/// One attempt of one model call, as its `agent_model_started` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAttempt {
    pub step: String,
    pub call: String,
    pub turn: u32,
    pub attempt: u32,
    pub invocation_key: String,
    pub provider: String,
    pub model: String,
    pub reserved_tokens: u64,
    pub request_digest: String,
}

impl ModelAttempt {
    pub fn from_started(body: &EventBody) -> Option<ModelAttempt> {
        match body {
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
            } => Some(ModelAttempt {
                step: step.clone(),
                call: call.clone(),
                turn: *turn,
                attempt: *attempt,
                invocation_key: invocation_key.clone(),
                provider: provider.clone(),
                model: model.clone(),
                reserved_tokens: *reserved_tokens,
                request_digest: request_digest.clone(),
            }),
            _ => None,
        }
    }

    pub fn started_event(&self, fencing_token: u64) -> EventBody {
        EventBody::AgentModelStarted {
            step: self.step.clone(),
            call: self.call.clone(),
            turn: self.turn,
            attempt: self.attempt,
            invocation_key: self.invocation_key.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            reserved_tokens: self.reserved_tokens,
            request_digest: self.request_digest.clone(),
            fencing_token,
        }
    }
}

/// One attempt of one tool call of an agent step, as its `agent_tool_started` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildAttempt {
    pub step: String,
    pub call: String,
    pub attempt: u32,
    pub invocation_key: String,
    pub tool: String,
    pub effect: EffectClass,
}

impl ChildAttempt {
    pub fn from_started(body: &EventBody) -> Option<ChildAttempt> {
        match body {
            EventBody::AgentToolStarted {
                step,
                call,
                attempt,
                invocation_key,
                tool,
                effect,
                ..
            } => Some(ChildAttempt {
                step: step.clone(),
                call: call.clone(),
                attempt: *attempt,
                invocation_key: invocation_key.clone(),
                tool: tool.clone(),
                effect: *effect,
            }),
            _ => None,
        }
    }

    pub fn started_event(&self, fencing_token: u64) -> EventBody {
        EventBody::AgentToolStarted {
            step: self.step.clone(),
            call: self.call.clone(),
            attempt: self.attempt,
            invocation_key: self.invocation_key.clone(),
            tool: self.tool.clone(),
            effect: self.effect,
            fencing_token,
        }
    }

    /// The arguments to call the tool with: the call's JSON text parsed (empty: `{}`).
    pub fn arguments(&self, state: &JobState) -> Value {
        state
            .agent(&self.step)
            .and_then(|a| a.call(&self.call))
            .map_or(Value::Null, |c| {
                parse_arguments(&c.arguments).unwrap_or(Value::Null)
            })
    }
}

/// A model's answer, as a provider adapter parsed it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAnswer {
    pub message: Message,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// How a model call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOutcome {
    Answered(ModelAnswer),
    /// Failed as a tool call fails: retryable (5xx, malformed answer), permanent (4xx), or
    /// unknown (timed out: the model may have answered).
    Failed(ToolOutcome),
    /// Asked to come back later (429 with `Retry-After`, in ms).
    RetryAfter(String, u64),
    /// Refused before it was sent: the tenant's daily budget.
    Budget(BudgetScope, String),
}

/// The step's key, from which its calls' keys derive.
fn step_key(state: &JobState, step: &str) -> String {
    invocation_key(&state.tenant, state.job_id, step, 0)
}

/// The retry policy of an agent step's model calls: its `retry`, else three attempts.
pub fn model_policy(state: &JobState, step: &str) -> RetryPolicy {
    state
        .plan
        .step(step)
        .and_then(|s| s.retry.clone())
        .unwrap_or(RetryPolicy {
            max_attempts: DEFAULT_MODEL_ATTEMPTS,
            backoff: Backoff::Exponential,
            initial: None,
            max: None,
        })
}

/// `messages` as an event carries them: each with its digest, its body only if the
/// journal lacks it (and it is not earlier in the same list).
fn journaled(state: &JobState, messages: Vec<Message>) -> Vec<JournaledMessage> {
    let mut seen = BTreeSet::new();
    messages
        .into_iter()
        .map(|m| {
            let digest = m.digest();
            let known = state.messages.contains_key(&digest) || !seen.insert(digest.clone());
            JournaledMessage {
                digest,
                message: (!known).then_some(m),
            }
        })
        .collect()
}

/// The event that starts agent step `step`: its first messages, with references in the
/// system prompt and prompt resolved (or the reason they cannot be).
pub fn start_event(state: &JobState, step: &str) -> Option<EventBody> {
    let spec = state.agent_spec(step)?;
    let resolve = |text: &str| -> Result<String, String> {
        match template::resolve(&Value::String(text.to_string()), &state.input, state)? {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    };
    let mut messages = Vec::new();
    let mut error = None;
    if let Some(system) = &spec.system {
        match resolve(system) {
            Ok(s) => messages.push(Message::text(Role::System, s)),
            Err(e) => error = Some(format!("system: {e}")),
        }
    }
    match resolve(&spec.prompt) {
        Ok(p) => messages.push(Message::text(Role::User, p)),
        Err(e) => error = error.or(Some(format!("prompt: {e}"))),
    }
    if error.is_some() {
        messages.clear();
    }
    Some(EventBody::AgentStarted {
        step: step.to_string(),
        provider: spec.provider.clone(),
        model: spec.model.clone(),
        messages: journaled(state, messages),
        error,
    })
}

/// The request of the model call agent step `step` makes now: the conversation and the
/// declarations of its tools. `None` if it is not an agent step or the journal lacks a
/// message (which the fold never allows).
pub fn request(state: &JobState, step: &str, tools: &dyn AgentTools) -> Option<ModelRequest> {
    let spec = state.agent_spec(step)?;
    let agent = state.agent(step)?;
    let messages = agent
        .conversation
        .iter()
        .map(|d| state.messages.get(d).cloned())
        .collect::<Option<Vec<_>>>()?;
    Some(ModelRequest {
        provider: agent.provider.clone(),
        model: agent.model.clone(),
        messages,
        tools: spec
            .tools
            .iter()
            .filter_map(|t| tools.declaration(t))
            .collect(),
        max_tokens: spec.max_tokens(),
        temperature: spec.temperature,
    })
}

/// Parses a model's arguments text; an empty text is `{}`.
pub fn parse_arguments(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|e| format!("arguments are not valid JSON: {e}"))
}

/// Why a tool call of the model cannot run, if it cannot: a tool the step does not offer
/// (or this worker lacks), or arguments that are not JSON or fail the tool's schema.
pub fn check_call(
    spec: &AgentSpec,
    tool: &str,
    arguments: &str,
    tools: &dyn AgentTools,
) -> Result<Value, String> {
    let offered = spec.tools.iter().any(|t| t == tool);
    let decl = tools.declaration(tool).filter(|_| offered).ok_or_else(|| {
        format!(
            "unknown tool {tool:?}; the tools you may call are: {}",
            if spec.tools.is_empty() {
                "none".to_string()
            } else {
                spec.tools.join(", ")
            }
        )
    })?;
    let args = parse_arguments(arguments)?;
    schema::validate(&args, &decl.parameters)
        .map_err(|e| format!("arguments do not match the schema of {tool:?}: {e}"))?;
    Ok(args)
}

/// The first buffered signal named `name` that this round has not consumed yet.
fn buffered<'a>(
    state: &'a JobState,
    name: &str,
    consumed: &BTreeSet<String>,
) -> Option<&'a BufferedSignal> {
    state
        .signals
        .get(name)?
        .iter()
        .find(|b| !consumed.contains(&b.signal_id))
}

/// What the decisions need from the worker: its fencing token and its tools.
pub struct AgentContext<'a> {
    pub fencing_token: u64,
    pub tools: &'a dyn AgentTools,
}

/// One round of decisions for every unfinished agent step (see the module doc).
pub fn decide_agents(state: &JobState, now_ms: i64, ctx: &AgentContext<'_>) -> AgentDecision {
    let mut d = AgentDecision::default();
    if state.status.is_terminal() {
        return d;
    }
    // A failed step fails the job once nothing runs: start nothing new.
    if state.steps.values().any(|s| s.status == StepStatus::Failed) {
        return d;
    }
    let mut consumed = BTreeSet::new();
    for spec in &state.plan.steps {
        let Some(agent_spec) = &spec.agent else {
            continue;
        };
        let Some(st) = state.steps.get(&spec.id) else {
            continue;
        };
        if matches!(st.status, StepStatus::Running | StepStatus::Waiting) && st.agent.is_some() {
            decide_step(
                state,
                &spec.id,
                agent_spec,
                now_ms,
                ctx,
                &mut consumed,
                &mut d,
            );
        }
    }
    d
}

fn decide_step(
    state: &JobState,
    step: &str,
    spec: &AgentSpec,
    now_ms: i64,
    ctx: &AgentContext<'_>,
    consumed: &mut BTreeSet<String>,
    d: &mut AgentDecision,
) {
    let Some(agent) = state.agent(step) else {
        return;
    };
    if agent.model_status == ModelStatus::Running {
        return;
    }
    if let Some(park) = &agent.park {
        if let Some(sig) = buffered(state, BUDGET_SIGNAL, consumed) {
            consumed.insert(sig.signal_id.clone());
            let stop = sig
                .payload
                .get("stop")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let raise = sig
                .payload
                .get("tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            d.events.push(EventBody::AgentBudgetDecided {
                step: step.to_string(),
                signal_id: Some(sig.signal_id.clone()),
                raise_tokens: raise,
                stop,
                by: sig.by.clone(),
            });
        } else if let Some(until) = park.until_ms {
            if until <= now_ms {
                d.events.push(EventBody::AgentBudgetDecided {
                    step: step.to_string(),
                    signal_id: None,
                    raise_tokens: 0,
                    stop: false,
                    by: None,
                });
            } else {
                d.wake(until);
            }
        }
        return;
    }
    let current: Vec<&AgentCall> = agent.current_calls().collect();
    if !current.is_empty() && !agent.turn_settled() {
        decide_calls(state, step, spec, &current, now_ms, ctx, consumed, d);
        return;
    }
    if let Some(t) = agent.model_retry_at_ms {
        if t > now_ms {
            d.wake(t);
            return;
        }
    }
    let reserve = u64::from(spec.max_tokens()) + agent.conversation_bytes / 4;
    if let Some(b) = spec.budget {
        let limit = b.tokens.saturating_add(agent.extra_tokens);
        let used = agent.used_tokens();
        if used.saturating_add(reserve) > limit {
            d.events.push(budget_reached(
                step,
                BudgetScope::Step,
                limit,
                used,
                reserve,
            ));
            return;
        }
    }
    if let Some(b) = state.plan.budget {
        let limit = b.tokens.saturating_add(state.extra_job_tokens);
        let used = job_tokens(state);
        if used.saturating_add(reserve) > limit {
            d.events
                .push(budget_reached(step, BudgetScope::Job, limit, used, reserve));
            return;
        }
    }
    let turn = agent.answered + 1;
    let attempt = ModelAttempt {
        step: step.to_string(),
        call: model_call_name(step, turn),
        turn,
        attempt: agent.model_attempt + 1,
        invocation_key: child_key(&step_key(state, step), &turn.to_string()),
        provider: spec.provider.clone(),
        model: spec.model.clone(),
        reserved_tokens: reserve,
        request_digest: agent.conversation_digest.clone(),
    };
    d.events.push(attempt.started_event(ctx.fencing_token));
}

/// Tokens the job's agent steps used, plus what their calls in flight reserved.
fn job_tokens(state: &JobState) -> u64 {
    state
        .steps
        .values()
        .filter_map(|s| s.agent.as_deref())
        .map(|a| a.used_tokens().saturating_add(a.reserved_tokens))
        .sum()
}

fn budget_reached(step: &str, scope: BudgetScope, limit: u64, used: u64, needed: u64) -> EventBody {
    EventBody::AgentBudgetReached {
        step: step.to_string(),
        scope,
        limit,
        used,
        needed,
    }
}

/// Step 3 of the round: refusals and approvals first (if any, the starts wait for the
/// next round, which sees them folded); else the starts of every ready call.
#[allow(clippy::too_many_arguments)]
fn decide_calls(
    state: &JobState,
    step: &str,
    spec: &AgentSpec,
    current: &[&AgentCall],
    now_ms: i64,
    ctx: &AgentContext<'_>,
    consumed: &mut BTreeSet<String>,
    d: &mut AgentDecision,
) {
    let before = d.events.len();
    for c in current
        .iter()
        .filter(|c| c.status == CallStatus::Pending && c.approved_by.is_none())
    {
        if let Err(reason) = check_call(spec, &c.tool, &c.arguments, ctx.tools) {
            d.events.push(EventBody::AgentToolRefused {
                step: step.to_string(),
                call: c.id.clone(),
                reason,
                by: None,
                signal_id: None,
            });
            continue;
        }
        if !c.needs_approval {
            continue;
        }
        if let Some(sig) = buffered(state, &approval_signal(&c.id), consumed) {
            consumed.insert(sig.signal_id.clone());
            d.events.push(approval_event(step, spec, c, sig, ctx.tools));
        }
    }
    if d.events.len() > before {
        return;
    }
    for c in current {
        if c.status != CallStatus::Pending || c.awaits_approval() {
            continue;
        }
        match c.retry_at_ms {
            Some(t) if t > now_ms => d.wake(t),
            _ => {
                let part = format!("{}.{}", c.turn, c.index);
                let call = ChildAttempt {
                    step: step.to_string(),
                    call: c.id.clone(),
                    attempt: c.attempt + 1,
                    invocation_key: child_key(&step_key(state, step), &part),
                    tool: c.tool.clone(),
                    effect: ctx
                        .tools
                        .effect_class(&c.tool)
                        .unwrap_or(EffectClass::UNKNOWN_DEFAULT),
                };
                d.events.push(call.started_event(ctx.fencing_token));
            }
        }
    }
}

/// A human's answer to call `c`: payload `null` or `{}` approves; `{"approve": false,
/// "reason": …}` rejects; `{"args": {…}}` approves with edited arguments (checked against
/// the schema like the model's). Anything else is read as a rejection.
fn approval_event(
    step: &str,
    spec: &AgentSpec,
    c: &AgentCall,
    sig: &BufferedSignal,
    tools: &dyn AgentTools,
) -> EventBody {
    let who = sig.by.clone().unwrap_or_else(|| "unknown".into());
    let refused = |reason: String| EventBody::AgentToolRefused {
        step: step.to_string(),
        call: c.id.clone(),
        reason,
        by: sig.by.clone(),
        signal_id: Some(sig.signal_id.clone()),
    };
    let payload = match &sig.payload {
        Value::Null => serde_json::Map::new(),
        Value::Object(o) => o.clone(),
        _ => {
            return refused(format!(
                "rejected by {who}: the approval was not a JSON object"
            ))
        }
    };
    if !payload
        .get("approve")
        .map_or(Some(true), Value::as_bool)
        .unwrap_or(false)
    {
        let reason = payload
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return refused(format!("rejected by {who}: {reason}"));
    }
    let args = payload.get("args").cloned();
    if let Some(edited) = &args {
        if let Err(e) = check_call(spec, &c.tool, &edited.to_string(), tools) {
            return refused(format!("the arguments {who} approved cannot be used: {e}"));
        }
    }
    EventBody::AgentToolApproved {
        step: step.to_string(),
        call: c.id.clone(),
        signal_id: sig.signal_id.clone(),
        args,
        by: sig.by.clone(),
    }
}

/// What a new incarnation does with an agent's calls left without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRecovery {
    /// A model call: asked again with the same key and attempt (append its started event
    /// again under the new token, then call).
    Ask(ModelAttempt),
    /// A pure or idempotent tool call: started again with the same key and attempt.
    Reinvoke(ChildAttempt),
    /// A side_effect tool call: its reconcile hook is asked, else its outcome is unknown.
    Reconcile(ChildAttempt),
}

/// The recovery of every agent call in flight, by step id then call.
pub fn recover_agents(state: &JobState) -> Vec<AgentRecovery> {
    let mut out = Vec::new();
    for (step, st) in &state.steps {
        let Some(agent) = st.agent.as_deref() else {
            continue;
        };
        if agent.model_status == ModelStatus::Running {
            if let Some(key) = &agent.model_key {
                let turn = agent.answered + 1;
                out.push(AgentRecovery::Ask(ModelAttempt {
                    step: step.clone(),
                    call: model_call_name(step, turn),
                    turn,
                    attempt: agent.model_attempt,
                    invocation_key: key.clone(),
                    provider: agent.provider.clone(),
                    model: agent.model.clone(),
                    reserved_tokens: agent.reserved_tokens,
                    request_digest: agent.conversation_digest.clone(),
                }));
            }
        }
        for c in agent
            .current_calls()
            .filter(|c| c.status == CallStatus::Running)
        {
            let Some(key) = &c.invocation_key else {
                continue;
            };
            let call = ChildAttempt {
                step: step.clone(),
                call: c.id.clone(),
                attempt: c.attempt,
                invocation_key: key.clone(),
                tool: c.tool.clone(),
                effect: c.effect.unwrap_or(EffectClass::UNKNOWN_DEFAULT),
            };
            out.push(if call.effect.reinvocable() {
                AgentRecovery::Reinvoke(call)
            } else {
                AgentRecovery::Reconcile(call)
            });
        }
    }
    out
}

/// The event recording `outcome` of model call `call` (the retry jitter passed in).
/// - an answer → `agent_model_answered` with the answer's messages journaled;
/// - a retryable failure or an unknown outcome (the call is idempotent) → asked again with
///   backoff while the step's model policy has attempts left (`Retry-After` as a floor);
/// - a permanent failure, or none left → `agent_model_failed` that fails the step;
/// - a budget refusal → `agent_model_failed` naming the budget: the step waits.
pub fn model_outcome_event(
    state: &JobState,
    call: &ModelAttempt,
    outcome: ModelOutcome,
    jitter01: f64,
) -> EventBody {
    let failed = |error: String, retryable: bool, retry_after_ms: Option<u64>, budget| {
        EventBody::AgentModelFailed {
            step: call.step.clone(),
            call: call.call.clone(),
            turn: call.turn,
            attempt: call.attempt,
            error,
            retryable,
            retry_after_ms,
            budget,
        }
    };
    let policy = model_policy(state, &call.step);
    match outcome {
        ModelOutcome::Answered(answer) => EventBody::AgentModelAnswered {
            step: call.step.clone(),
            call: call.call.clone(),
            turn: call.turn,
            attempt: call.attempt,
            messages: journaled(state, vec![answer.message]),
            input_tokens: answer.input_tokens,
            output_tokens: answer.output_tokens,
        },
        ModelOutcome::Budget(scope, why) => failed(why, false, None, Some(scope)),
        ModelOutcome::RetryAfter(error, after_ms) => {
            let delay = (call.attempt < policy.max_attempts)
                .then(|| backoff_ms(&policy, call.attempt, jitter01).max(after_ms));
            failed(error, true, delay, None)
        }
        ModelOutcome::Failed(outcome) => {
            match classify(
                &policy,
                EffectClass::Idempotent,
                call.attempt,
                outcome,
                jitter01,
            ) {
                Recorded::Failed {
                    error,
                    retryable,
                    retry_after_ms,
                } => failed(error, retryable, retry_after_ms, None),
                // An idempotent call is never `unknown`; a success is an `Answered`.
                Recorded::Unknown(error) => failed(error, true, None, None),
                Recorded::Succeeded(_) => failed(
                    "the provider's answer could not be read".into(),
                    false,
                    None,
                    None,
                ),
            }
        }
    }
}

/// The event recording `outcome` of tool call `call`: `crate::outcome`'s rule with the
/// agent step's retry policy and the call's effect class.
pub fn tool_outcome_event(
    state: &JobState,
    call: &ChildAttempt,
    outcome: ToolOutcome,
    jitter01: f64,
) -> EventBody {
    let policy = state
        .plan
        .step(&call.step)
        .map(|s| s.retry_policy())
        .unwrap_or_default();
    match classify(&policy, call.effect, call.attempt, outcome, jitter01) {
        Recorded::Succeeded(output) => EventBody::AgentToolSucceeded {
            step: call.step.clone(),
            call: call.call.clone(),
            attempt: call.attempt,
            output,
        },
        Recorded::Failed {
            error,
            retryable,
            retry_after_ms,
        } => EventBody::AgentToolFailed {
            step: call.step.clone(),
            call: call.call.clone(),
            attempt: call.attempt,
            error,
            retryable,
            retry_after_ms,
        },
        Recorded::Unknown(reason) => EventBody::AgentToolOutcomeUnknown {
            step: call.step.clone(),
            call: call.call.clone(),
            attempt: call.attempt,
            reason,
        },
    }
}
