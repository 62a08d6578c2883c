//! Calling a step's tool and recording how the call ended.
//!
//! `invoke` runs only for a `step_started` the store has recorded under this actor's token
//! (G2, G3); the tool gets the invocation key and the token. A call that cannot be made
//! (arguments that do not resolve, a tool this worker lacks) and every answer — output,
//! error, timeout, panic — become a `runtime::ToolOutcome`, and `runtime::outcome_event`
//! says which event records it: the actor only measures the call and queues the event.
//! Each call runs inside an `execute_tool {name}` span under its step's span, whose id the
//! tool receives (`Invocation::trace`).

use super::JobActor;
use crate::messages::{CrashReason, Invoke};
use crate::metrics as metric;
use crate::ratelimit::RateLimiters;
use crate::tools::{Invocation, ToolEntry, ToolError};
use crate::trace::{spans, CallTrace};
use actix::prelude::*;
use aetheris_runtime::template::resolve;
use aetheris_runtime::{outcome_event, Attempt, ToolOutcome};
use serde_json::Value;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// What one tool call needs, once its step's arguments are resolved.
struct Call {
    tool_name: String,
    tool: ToolEntry,
    invocation: Invocation,
    timeout: Duration,
}

impl JobActor {
    /// Calls the tool of `call`, whose `step_started` is durable; the answer comes back
    /// through `on_result`.
    pub(super) fn invoke(&mut self, call: Attempt, ctx: &mut Context<Self>) {
        let Some(trace) = self.tool_call_trace(
            &call.step,
            &call.tool,
            call.attempt,
            &call.invocation_key,
            None,
        ) else {
            return;
        };
        let span = trace.span.clone();
        let prepared = match self.prepare(&call, trace) {
            Some(Ok(prepared)) => prepared,
            Some(Err(cannot)) => {
                spans::failed(&span, "permanent_error");
                return self.record(&call, cannot);
            }
            None => return,
        };
        let started = Instant::now();
        let limits = self.worker.config.rate_limits.clone();
        ctx.spawn(
            actix::fut::wrap_future(call_tool(limits, prepared).instrument(span.clone())).map(
                move |answer: Result<Value, ToolError>, act: &mut JobActor, ctx| {
                    if let Err(error) = &answer {
                        spans::failed(&span, error.kind.as_str());
                    }
                    act.on_result(call, answer, started, ctx)
                },
            ),
        );
    }

    /// The call to make for `call`, or the outcome of a call that cannot be made. `None`
    /// if the actor is not active or the plan lacks the step.
    fn prepare(&self, call: &Attempt, trace: CallTrace) -> Option<Result<Call, ToolOutcome>> {
        let state = self.state()?;
        let spec = state.plan.step(&call.step)?;
        let default_timeout = Duration::from_millis(self.worker.config.default_step_timeout_ms);
        let timeout = spec
            .timeout
            .as_ref()
            .map_or(default_timeout, |t| t.duration);
        let args = match resolve(&spec.args, &state.input, state) {
            Ok(args) => args,
            Err(msg) => return Some(Err(ToolOutcome::Permanent(format!("arguments: {msg}")))),
        };
        let Some(tool) = self.worker.tools.get(&call.tool).cloned() else {
            return Some(Err(ToolOutcome::Permanent(format!(
                "tool {:?} is not registered on this worker",
                call.tool
            ))));
        };
        let invocation = self.invocation(state, call, args, trace);
        Some(Ok(Call {
            tool_name: call.tool.clone(),
            tool,
            invocation,
            timeout,
        }))
    }

    /// Measures the answer, notes a panic (the actor stops as crashed once the outcome is
    /// durable), queues the outcome's event and drives on.
    fn on_result(
        &mut self,
        call: Attempt,
        answer: Result<Value, ToolError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        if self.active().is_none() {
            return; // stopping: the next incarnation recovers this step from the ledger
        }
        let outcome = self.tool_answered(&call.tool, answer, started);
        self.record(&call, outcome);
        self.drive(ctx);
    }

    /// The outcome of a tool call's answer, for a plan step and an agent's tool call alike:
    /// measures it (duration, outcome), and after a panic (already counted where it was
    /// caught, tools.rs) stops the actor as crashed once the outcome is durable.
    pub(super) fn tool_answered(
        &mut self,
        tool: &str,
        answer: Result<Value, ToolError>,
        started: Instant,
    ) -> ToolOutcome {
        metrics::histogram!(metric::STEP_DURATION, "tool" => tool.to_string())
            .record(started.elapsed().as_secs_f64());
        let label = match &answer {
            Ok(_) => "succeeded",
            Err(error) => error.kind.as_str(),
        };
        metrics::counter!(metric::TOOL_CALLS, "tool" => tool.to_string(), "outcome" => label)
            .increment(1);
        match answer {
            Ok(output) => ToolOutcome::Succeeded(output),
            Err(error) => {
                if error.panicked {
                    self.phase.crash_after_flush(CrashReason::ToolPanic);
                }
                ToolOutcome::from(error)
            }
        }
    }

    /// Queues the event `runtime::outcome_event` gives for `outcome` of `call` (the retry
    /// jitter is drawn here, so the rule stays pure; the delay is recorded in the event).
    pub(super) fn record(&mut self, call: &Attempt, outcome: ToolOutcome) {
        let Some(state) = self.state() else { return };
        let event = outcome_event(state, call, outcome, rand::random::<f64>());
        self.outbox.push(event);
    }
}

/// Waits for the tenant's tool-call rate (over it a call waits its turn; it never fails),
/// then calls the tool. No answer in time, or no tool actor, is an unknown outcome: the
/// call may have been made.
async fn call_tool(limits: RateLimiters, call: Call) -> Result<Value, ToolError> {
    let Call {
        tool_name,
        tool,
        invocation,
        timeout,
    } = call;
    limits.tool_call(&invocation.tenant, &tool_name).await;
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
