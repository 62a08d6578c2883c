//! The job actor's open step spans (`trace::spans`): one per step that runs in this
//! incarnation, opened by the step's first call and closed once the step has finished
//! (or the actor stops), so a step's retries and an agent's turns are children of one
//! span. Spans never affect what the actor decides or writes.

use super::JobActor;
use crate::trace::{spans, CallTrace};
use aetheris_runtime::StepStatus;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct StepSpans(BTreeMap<String, tracing::Span>);

impl JobActor {
    /// The span of `step` in this incarnation, opened now if it is not open.
    pub(super) fn step_span(&mut self, step: &str) -> tracing::Span {
        if let Some(span) = self.step_spans.0.get(step) {
            return span.clone();
        }
        let Some(state) = self.state() else {
            return tracing::Span::none();
        };
        let agent = state.plan.step(step).is_some_and(|s| s.agent.is_some());
        let span = spans::step(self.job_id, &state.tenant, step, agent);
        self.step_spans.0.insert(step.to_string(), span.clone());
        span
    }

    /// The span of one tool call of `step`, under the step's span, and the trace the call
    /// carries (its `traceparent`); `None` if the actor is not active. Plan steps and agent
    /// tool calls (`call_id`: the model's id of the call) both start here.
    pub(super) fn tool_call_trace(
        &mut self,
        step: &str,
        tool: &str,
        attempt: u32,
        invocation_key: &str,
        call_id: Option<&str>,
    ) -> Option<CallTrace> {
        let tenant = self.state()?.tenant.clone();
        let step_span = self.step_span(step);
        let (span, context) = spans::tool_call(
            &step_span,
            &spans::ToolCall {
                job: self.job_id,
                tenant: &tenant,
                step,
                tool,
                attempt,
                invocation_key,
                call_id,
            },
        );
        Some(CallTrace { context, span })
    }

    /// Closes the spans of steps that have finished (as the folded state says).
    pub(super) fn close_finished_steps(&mut self) {
        let Some(state) = self.state() else { return };
        let finished: Vec<(String, &'static str)> = self
            .step_spans
            .0
            .keys()
            .filter_map(|step| {
                let status = state.steps.get(step).map(|s| s.status);
                match status {
                    Some(
                        StepStatus::Succeeded | StepStatus::Failed | StepStatus::OutcomeUnknown,
                    ) => status.map(|s| (step.clone(), s.as_str())),
                    Some(_) => None,
                    None => Some((step.clone(), "unknown")),
                }
            })
            .collect();
        for (step, status) in finished {
            if let Some(span) = self.step_spans.0.remove(&step) {
                spans::step_finished(&span, status);
            }
        }
    }
}
