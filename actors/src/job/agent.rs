//! Agent steps in the job actor: carrying out what `runtime::agent` decides.
//!
//! The decisions (ask the model, start or refuse tool calls, approvals, budgets) are made
//! by `agent::decide_agents` from the projected state, in the same round and the same
//! fenced append as the plan's own decisions (drive.rs). Once an `agent_model_started` is
//! durable the model is asked (`ask_model`: the request is rebuilt from the folded
//! conversation, sent with the call's invocation key as `Idempotency-Key`, under the
//! tenant's budgets, in a `chat {model}` span under the step's `invoke_agent {step}` span);
//! once an `agent_tool_started` is durable its tool is called (`call_tool`: the call's key
//! and this actor's fencing token, the tool's timeout and rate limit, in an `execute_tool
//! {name}` span under the same step span). Every answer becomes an event through `agent::model_outcome_event` /
//! `agent::tool_outcome_event`, queued in the outbox like a plan step's outcome.
//!
//! Invariants kept here (G2): a model answer is recorded before any of its tool calls is
//! made (the calls start only from a durable `agent_tool_started`, which the decisions
//! emit only for an answer already folded); a tool call gets exactly the G2 treatment of a
//! plan step.

use super::JobActor;
use crate::failpoint;
use crate::messages::Invoke;
use crate::metrics as metric;
use crate::tools::{Invocation, ToolError};
use crate::trace::{spans, CallTrace, SpanContext};
use actix::prelude::*;
use aetheris_runtime::agent::{
    self, decide_agents, model_outcome_event, tool_outcome_event, AgentContext, AgentDecision,
    ChildAttempt, ModelAttempt, ModelOutcome,
};
use aetheris_runtime::{EventBody, JobState, ToolOutcome};
use serde_json::Value;
use std::time::{Duration, Instant};
use tracing::Instrument;

impl JobActor {
    /// This round's agent decisions from `next` (the state the pending events lead to).
    pub(super) fn agent_decision(&self, next: &JobState, now: i64) -> AgentDecision {
        if next.plan.steps.iter().all(|s| s.agent.is_none()) {
            return AgentDecision::default();
        }
        let ctx = AgentContext {
            fencing_token: self.token,
            tools: &self.worker.tools,
        };
        let d = decide_agents(next, now, &ctx);
        if d.events
            .iter()
            .any(|e| matches!(e, EventBody::AgentModelStarted { .. }))
        {
            failpoint::hit("agent.model.before_start");
        }
        d
    }

    /// The time limit of each call of agent step `step`: its `timeout`, else the worker's.
    fn agent_timeout(&self, step: &str) -> Duration {
        let default = Duration::from_millis(self.worker.config.default_step_timeout_ms);
        self.state()
            .and_then(|s| s.plan.step(step))
            .and_then(|s| s.timeout.as_ref())
            .map_or(default, |t| t.duration)
    }

    /// Acts on one recorded event of an agent: asks the model or calls the tool it
    /// started; counts recorded outcomes. `false` if it is no agent event.
    pub(super) fn on_agent_event(&mut self, body: &EventBody, ctx: &mut Context<Self>) -> bool {
        if let Some(call) = ModelAttempt::from_started(body) {
            self.ask_model(call, ctx);
            return true;
        }
        if let Some(call) = ChildAttempt::from_started(body) {
            self.call_tool(call, ctx);
            return true;
        }
        let outcome = match body {
            EventBody::AgentModelAnswered { .. } => {
                failpoint::hit("agent.model.answered");
                return true;
            }
            EventBody::AgentToolSucceeded { .. } => "succeeded",
            EventBody::AgentToolFailed { .. } => "failed",
            EventBody::AgentToolOutcomeUnknown { .. } => "outcome_unknown",
            other => return other.agent_step().is_some(),
        };
        metrics::counter!(metric::LEDGER_OUTCOMES, "outcome" => outcome).increment(1);
        failpoint::hit("agent.tool.recorded");
        true
    }

    /// Asks the model for `call`, whose `agent_model_started` is durable.
    fn ask_model(&mut self, call: ModelAttempt, ctx: &mut Context<Self>) {
        let Some(state) = self.state() else { return };
        let Some(request) = agent::request(state, &call.step, &self.worker.tools) else {
            let outcome = ModelOutcome::Failed(ToolOutcome::Permanent(
                "the conversation cannot be rebuilt from the journal".into(),
            ));
            return self.record_model(&call, outcome);
        };
        let tenant = state.tenant.clone();
        let timeout = self.agent_timeout(&call.step);
        let llm = self.worker.llm.clone();
        // The model call's `chat {model}` span (llm/) opens inside the step's span.
        let span = self.step_span(&call.step);
        let key = call.invocation_key.clone();
        let reserve = call.reserved_tokens;
        ctx.spawn(
            actix::fut::wrap_future(
                async move {
                    llm.chat_budgeted(&tenant, &request, &key, timeout, reserve)
                        .await
                }
                .instrument(span),
            )
            .map(move |outcome, act: &mut JobActor, ctx| {
                if act.active().is_none() {
                    return; // stopping: the next incarnation asks again with the same key
                }
                failpoint::hit("agent.model.in_flight");
                act.record_model(&call, outcome);
                act.drive(ctx);
            }),
        );
    }

    fn record_model(&mut self, call: &ModelAttempt, outcome: ModelOutcome) {
        let Some(state) = self.state() else { return };
        let event = model_outcome_event(state, call, outcome, rand::random::<f64>());
        self.outbox.push(event);
    }

    /// What the tool of `call` receives: the call's key, this actor's token, the
    /// arguments the model (or an approver) gave.
    fn child_invocation(
        &self,
        state: &JobState,
        call: &ChildAttempt,
        trace: CallTrace,
    ) -> Invocation {
        Invocation {
            job_id: self.job_id,
            tenant: state.tenant.clone(),
            step: call.call.clone(),
            attempt: call.attempt,
            invocation_key: call.invocation_key.clone(),
            fencing_token: self.token,
            effect: call.effect,
            args: call.arguments(state),
            trace,
        }
    }

    /// Calls the tool of `call`, whose `agent_tool_started` is durable.
    fn call_tool(&mut self, call: ChildAttempt, ctx: &mut Context<Self>) {
        let Some(trace) = self.tool_call_trace(
            &call.step,
            &call.tool,
            call.attempt,
            &call.invocation_key,
            Some(&call.call),
        ) else {
            return;
        };
        let span = trace.span.clone();
        let Some(state) = self.state() else { return };
        let Some(tool) = self.worker.tools.get(&call.tool).cloned() else {
            spans::failed(&span, "permanent_error");
            let outcome = ToolOutcome::Permanent(format!(
                "tool {:?} is not registered on this worker",
                call.tool
            ));
            return self.record_tool(&call, outcome);
        };
        let invocation = self.child_invocation(state, &call, trace);
        let timeout = self.agent_timeout(&call.step);
        let limits = self.worker.config.rate_limits.clone();
        let started = Instant::now();
        let name = call.tool.clone();
        let answer = async move {
            limits.tool_call(&invocation.tenant, &name).await;
            match tokio::time::timeout(timeout, tool.recipient.send(Invoke(invocation))).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(mailbox)) => Err(ToolError::outcome_unknown(format!(
                    "tool actor unavailable: {mailbox}"
                ))),
                Err(_) => Err(ToolError::outcome_unknown(format!(
                    "timed out after {}ms",
                    timeout.as_millis()
                ))),
            }
        }
        .instrument(span.clone());
        ctx.spawn(actix::fut::wrap_future(answer).map(
            move |answer: Result<Value, ToolError>, act: &mut JobActor, ctx| {
                if let Err(error) = &answer {
                    spans::failed(&span, error.kind.as_str());
                }
                if act.active().is_none() {
                    return; // stopping: the next incarnation recovers it from the ledger
                }
                failpoint::hit("agent.tool.in_flight");
                let outcome = act.tool_answered(&call.tool, answer, started);
                act.record_tool(&call, outcome);
                act.drive(ctx);
            },
        ));
    }

    /// Queues the event `agent::tool_outcome_event` gives for `outcome` of `call`.
    pub(super) fn record_tool(&mut self, call: &ChildAttempt, outcome: ToolOutcome) {
        let Some(state) = self.state() else { return };
        let event = tool_outcome_event(state, call, outcome, rand::random::<f64>());
        self.outbox.push(event);
    }

    /// The reconcile hook to ask about a side_effect tool call of an agent, and what to
    /// ask it; `None` if this worker lacks the tool.
    pub(super) fn agent_reconcile_request(
        &self,
        state: &JobState,
        call: &ChildAttempt,
    ) -> Option<(crate::tools::ToolEntry, Invocation)> {
        let tool = self.worker.tools.get(&call.tool).cloned()?;
        let trace = CallTrace::detached(SpanContext::job_root(self.job_id).child());
        Some((tool, self.child_invocation(state, call, trace)))
    }
}
