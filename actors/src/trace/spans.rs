//! The spans of a job's tree, made in one place so their names and attributes agree
//! with the OpenTelemetry GenAI conventions and with each other:
//!
//! ```text
//! job                               aetheris.job_id, aetheris.tenant, aetheris.job.status
//! ├── accept_job                    (the gateway; links the submitting request)
//! ├── step {id} | invoke_agent {id}  + aetheris.step
//! │   ├── execute_tool {name}       + aetheris.attempt, aetheris.invocation_key, gen_ai.tool.*
//! │   │   └── chat {model}           (the `llm` tool's model call)
//! │   └── chat {model}               (an agent's model call: gen_ai.*)
//! ```
//!
//! A step span lives as long as its step runs in one incarnation of the job actor (a
//! retry inside it is a second call span under it); a restart starts a new step span under
//! the same root. The root itself is emitted when the job's end is recorded.

use super::{SpanContext, SpanId};
use aetheris_runtime::{JobId, JobState, JobStatus};
use tracing::field::Empty;

/// The span of step `step` of `job`, a child of the job's root: `invoke_agent {step}` for
/// an agent step (GenAI), `step {step}` for others.
pub fn step(job: JobId, tenant: &str, step: &str, agent: bool) -> tracing::Span {
    let root = SpanContext::job_root(job);
    if agent {
        tracing::info_span!(
            target: "aetheris_actors::trace",
            "invoke_agent",
            otel.name = %format!("invoke_agent {step}"),
            otel.trace_id = %root.trace_id,
            otel.parent_id = %root.span_id,
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %step,
            gen_ai.conversation.id = %job,
            aetheris.job_id = %job,
            aetheris.tenant = %tenant,
            aetheris.step = %step,
            aetheris.step.status = Empty,
            otel.status_code = Empty,
        )
    } else {
        tracing::info_span!(
            target: "aetheris_actors::trace",
            "step",
            otel.name = %format!("step {step}"),
            otel.trace_id = %root.trace_id,
            otel.parent_id = %root.span_id,
            aetheris.job_id = %job,
            aetheris.tenant = %tenant,
            aetheris.step = %step,
            aetheris.step.status = Empty,
            otel.status_code = Empty,
        )
    }
}

/// Ends a step span's story: the status its step reached (`failed` and
/// `outcome_unknown` mark the span as an error).
pub fn step_finished(span: &tracing::Span, status: &str) {
    span.record("aetheris.step.status", status);
    if status != "succeeded" {
        span.record("otel.status_code", "error");
    }
}

/// What a tool call span names.
pub struct ToolCall<'a> {
    pub job: JobId,
    pub tenant: &'a str,
    pub step: &'a str,
    pub tool: &'a str,
    pub attempt: u32,
    pub invocation_key: &'a str,
    /// The model's id of the call, for an agent's tool call.
    pub call_id: Option<&'a str>,
}

/// The `execute_tool {name}` span of one call under `parent` (its step's span), with the
/// span id `context` names (what the call's `traceparent` carries).
pub fn tool_call(parent: &tracing::Span, call: &ToolCall<'_>) -> (tracing::Span, SpanContext) {
    let context = SpanContext::job_root(call.job).child();
    let span = tracing::info_span!(
        target: "aetheris_actors::trace",
        parent: parent,
        "execute_tool",
        otel.name = %format!("execute_tool {}", call.tool),
        otel.kind = "internal",
        otel.trace_id = %context.trace_id,
        otel.span_id = %context.span_id,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %call.tool,
        gen_ai.tool.call.id = call.call_id,
        aetheris.job_id = %call.job,
        aetheris.tenant = %call.tenant,
        aetheris.step = %call.step,
        aetheris.attempt = call.attempt,
        aetheris.invocation_key = %call.invocation_key,
        error.type = Empty,
        otel.status_code = Empty,
    );
    (span, context)
}

/// Marks a call or step span as failed, with the error's kind (`error.type`).
pub fn failed(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// The job's root span, emitted once the job's end is recorded: from its submission
/// (`created_at_ms`, the store's clock) to now, with its final status.
pub fn job_root(state: &JobState) {
    let root = SpanContext::job_root(state.job_id);
    let span = tracing::info_span!(
        target: "aetheris_actors::trace",
        parent: None,
        "job",
        otel.trace_id = %root.trace_id,
        otel.span_id = %root.span_id,
        otel.start_ms = state.created_at_ms,
        aetheris.job_id = %state.job_id,
        aetheris.tenant = %state.tenant,
        aetheris.job.status = state.status.as_str(),
        otel.status_code = Empty,
        otel.status_message = Empty,
    );
    if state.status == JobStatus::Failed {
        span.record("otel.status_code", "error");
        if let Some(error) = &state.error {
            span.record("otel.status_message", error.as_str());
        }
    }
    drop(span); // closed now: exported
}

/// The gateway's span of an accepted job, a child of its root, linking the request that
/// submitted it (whose trace is the caller's when it sent a `traceparent`).
pub fn accept_job(job: JobId, tenant: &str, request: Option<SpanContext>) {
    let root = SpanContext::job_root(job);
    let link = request.map(|r| r.traceparent());
    let span = tracing::info_span!(
        target: "aetheris_actors::trace",
        parent: None,
        "accept_job",
        otel.trace_id = %root.trace_id,
        otel.parent_id = %root.span_id,
        otel.span_id = %SpanId::random(),
        otel.link = link,
        aetheris.job_id = %job,
        aetheris.tenant = %tenant,
    );
    drop(span);
}
