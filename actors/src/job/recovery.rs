//! Recovery on load (G2): what a new incarnation does with the calls an earlier one
//! started but never recorded a result for. The decision is `runtime::recover`'s; here it
//! is carried out. A pure or idempotent call is started again with the same key and
//! attempt. A side_effect call is never re-run silently: its tool's `reconcile` hook is
//! asked, by invocation key, what happened, and the answer (or its absence: the step
//! becomes `outcome_unknown` for a human) goes through `runtime::outcome_event` like any
//! other outcome.

use super::JobActor;
use crate::messages::Reconcile;
use crate::tools::{Invocation, Reconciled, ToolEntry};
use crate::trace::{CallTrace, SpanContext};
use actix::prelude::*;
use aetheris_runtime::agent::{recover_agents, AgentRecovery, ChildAttempt};
use aetheris_runtime::template::resolve;
use aetheris_runtime::{recover, Attempt, JobState, Recovery, ToolOutcome};
use serde_json::Value;
use std::time::Duration;

/// How long a reconcile hook may take to answer before the call counts as unanswered.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tool to ask, and the call to ask it about.
type ReconcileRequest = (ToolEntry, Invocation);

/// A call left without a result: a plan step's, or an agent step's tool call.
enum Unresolved {
    Step(Attempt),
    Agent(ChildAttempt),
}

impl JobActor {
    /// Queues the re-starts of reinvocable calls and the outcomes of side_effect calls no
    /// tool on this worker can reconcile, in that order; then asks the tools that can.
    pub(super) fn recover_on_load(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state() else { return };
        let mut restarts = Vec::new();
        let mut unanswerable = Vec::new();
        let mut asks = Vec::new();
        for recovery in recover(state) {
            match recovery {
                Recovery::Reinvoke(call) => restarts.push(call.started_event(self.token)),
                Recovery::Reconcile(call) => match self.reconcile_request(state, &call) {
                    Some(ask) => asks.push((call, ask)),
                    None => unanswerable.push(call),
                },
            }
        }
        let mut asks: Vec<(Unresolved, ReconcileRequest)> = asks
            .into_iter()
            .map(|(call, ask)| (Unresolved::Step(call), ask))
            .collect();
        let mut agent_unanswerable = Vec::new();
        // An agent's model call is asked again with the same key (it is idempotent); its
        // tool calls follow the rule of plan steps.
        for recovery in recover_agents(state) {
            match recovery {
                AgentRecovery::Ask(call) => restarts.push(call.started_event(self.token)),
                AgentRecovery::Reinvoke(call) => restarts.push(call.started_event(self.token)),
                AgentRecovery::Reconcile(call) => {
                    match self.agent_reconcile_request(state, &call) {
                        Some(ask) => asks.push((Unresolved::Agent(call), ask)),
                        None => agent_unanswerable.push(call),
                    }
                }
            }
        }
        for restart in restarts {
            self.outbox.push(restart);
        }
        for call in &unanswerable {
            self.record(call, ToolOutcome::unrecorded());
        }
        for call in &agent_unanswerable {
            self.record_tool(call, ToolOutcome::unrecorded());
        }
        if !asks.is_empty() {
            self.ask_reconcile(asks, ctx);
        }
    }

    /// Asks each tool's reconcile hook about its call, holding every write (`writing`)
    /// until all have answered or timed out; records the answers, then drives on.
    fn ask_reconcile(
        &mut self,
        asks: Vec<(Unresolved, ReconcileRequest)>,
        ctx: &mut Context<Self>,
    ) {
        let answers = futures::future::join_all(asks.into_iter().map(
            |(call, (tool, invocation))| async move {
                let answer = tokio::time::timeout(
                    RECONCILE_TIMEOUT,
                    tool.reconcile.send(Reconcile(invocation)),
                )
                .await;
                (call, answer.ok().and_then(Result::ok).flatten())
            },
        ));
        self.set_writing(true); // nothing else may append until the answers are in
        ctx.wait(
            actix::fut::wrap_future(answers).map(|answers, act: &mut JobActor, ctx| {
                act.set_writing(false);
                for (call, answer) in answers {
                    match call {
                        Unresolved::Step(call) => act.record(&call, reconciled_outcome(answer)),
                        Unresolved::Agent(call) => {
                            act.record_tool(&call, reconciled_outcome(answer))
                        }
                    }
                }
                act.drive(ctx);
            }),
        );
    }

    /// The tool to ask about `call` and what to ask it; `None` if this worker does not
    /// have the tool.
    fn reconcile_request(&self, state: &JobState, call: &Attempt) -> Option<ReconcileRequest> {
        let tool = self.worker.tools.get(&call.tool).cloned()?;
        let args = state
            .plan
            .step(&call.step)
            .and_then(|spec| resolve(&spec.args, &state.input, state).ok())
            .unwrap_or(Value::Null);
        let trace = CallTrace::detached(SpanContext::job_root(self.job_id).child());
        let invocation = self.invocation(state, call, args, trace);
        Some((tool, invocation))
    }
}

/// A reconcile hook's answer as an outcome; no answer (none in time, no tool actor, or
/// the tool cannot tell) leaves the outcome unknown.
fn reconciled_outcome(answer: Option<Reconciled>) -> ToolOutcome {
    match answer {
        Some(Reconciled::Succeeded(output)) => ToolOutcome::Succeeded(output),
        Some(Reconciled::NotExecuted) => ToolOutcome::NotExecuted,
        None => ToolOutcome::unrecorded(),
    }
}
