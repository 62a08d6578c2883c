//! Tracing: one span tree per job, the W3C trace context, and the optional OTLP export
//! (user docs: docs/operations.md, "Tracing").
//!
//! - A job's trace id is its job id (the UUID's 16 bytes), and the span id of its root
//!   span `job` is the job id's last 8 bytes. Both are derived, never stored, so every
//!   process and every incarnation of a job actor — after a crash, a lease moving to
//!   another worker, a park and a wake-up — puts its spans in the same trace under the
//!   same root, and an operator finds a job's trace by its id. The root is emitted once,
//!   by the worker that records the job's end, spanning submission to end.
//! - The tree: `job` → a step span (`step {id}`, `invoke_agent {id}` for agent steps) →
//!   `execute_tool {name}` per tool call and `chat {model}` per model call (spans.rs).
//!   Every span carries `aetheris.job_id` and `aetheris.tenant`; step and call spans
//!   `aetheris.step`; call spans `aetheris.attempt` and `aetheris.invocation_key`.
//! - Spans are plain `tracing` spans. Their OpenTelemetry identity is given by fields the
//!   exporter reads (`otel.trace_id`, `otel.span_id`, `otel.parent_id`, `otel.link`,
//!   `otel.start_ms`, next to `otel.name`, `otel.kind`, `otel.status_code`): so an id
//!   can cross an actor's mailbox or a process boundary as data (a tool call's span id is
//!   what its `traceparent` header names) without the actors knowing the exporter.
//! - [`export`]: a `tracing_subscriber` layer that turns closed spans into OTLP/HTTP
//!   (JSON encoding, [`otlp`]) batches, sent by a thread of its own.
//!
//! Invariant kept here: tracing never blocks or slows a job. A closed span goes into a
//! bounded queue with `try_send`; a full queue drops it and counts it
//! (`aetheris_trace_spans_dropped_total{reason="queue_full"}`), an unreachable collector
//! drops the batch and counts it (`reason="export_failed"`).

pub mod export;
pub mod otlp;
pub mod spans;

use aetheris_runtime::JobId;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The field of a span that sets its trace id (32 lowercase hex digits).
pub const TRACE_ID: &str = "otel.trace_id";
/// The field that sets a span's own id (16 hex digits).
pub const SPAN_ID: &str = "otel.span_id";
/// The field that names a span's parent by id (16 hex digits): a parent in another
/// process, or one that is not a live `tracing` span (the job's root).
pub const PARENT_ID: &str = "otel.parent_id";
/// The field that links a span to another trace (a `traceparent` value).
pub const LINK: &str = "otel.link";
/// The field that backdates a span's start (Unix milliseconds).
pub const START_MS: &str = "otel.start_ms";

/// Whether closed spans are exported (set once an exporter is installed): the `sampled`
/// flag of the `traceparent` this process sends.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(crate) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// A W3C trace id: 16 bytes, not all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span (parent) id: 8 bytes, not all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The trace of job `job`: its UUID's bytes (a UUIDv7's last 7 bytes are random, as
    /// W3C's `random` trace-id flag asks).
    pub fn of_job(job: JobId) -> TraceId {
        TraceId(*job.0.as_bytes())
    }

    pub fn random() -> TraceId {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }

    pub fn parse(hex: &str) -> Option<TraceId> {
        let mut id = [0u8; 16];
        decode_hex(hex, &mut id)?;
        (id != [0; 16]).then_some(TraceId(id))
    }
}

impl SpanId {
    /// The id of job `job`'s root span: the last 8 bytes of its UUID (never all zero: the
    /// UUID's variant bits are in the first of them).
    pub fn job_root(job: JobId) -> SpanId {
        let bytes = job.0.as_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..]);
        if id == [0; 8] {
            id[7] = 1; // not a UUID of any version we make; still a valid id
        }
        SpanId(id)
    }

    pub fn random() -> SpanId {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }

    pub fn parse(hex: &str) -> Option<SpanId> {
        let mut id = [0u8; 8];
        decode_hex(hex, &mut id)?;
        (id != [0; 8]).then_some(SpanId(id))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Lowercase hex (as W3C requires) of exactly `out.len()` bytes.
fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    let digits = hex.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(())
}

/// One span's place in a trace: what a `traceparent` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl SpanContext {
    /// The root span of job `job`'s trace.
    pub fn job_root(job: JobId) -> SpanContext {
        SpanContext {
            trace_id: TraceId::of_job(job),
            span_id: SpanId::job_root(job),
            sampled: exporting(),
        }
    }

    /// A new span of the same trace.
    pub fn child(&self) -> SpanContext {
        SpanContext {
            span_id: SpanId::random(),
            ..*self
        }
    }

    /// The W3C `traceparent` header value: `00-{trace id}-{span id}-{flags}`.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }

    /// Parses a `traceparent` header as W3C Trace Context level 1 says a receiver must:
    /// version `00` has exactly four fields; a higher version may have more after them;
    /// version `ff`, upper-case hex and all-zero ids are invalid (`None`: start a trace).
    pub fn parse_traceparent(header: &str) -> Option<SpanContext> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        let mut v = [0u8; 1];
        decode_hex(version, &mut v)?;
        if v[0] == 0 && parts.next().is_some() {
            return None;
        }
        let mut f = [0u8; 1];
        decode_hex(flags, &mut f)?;
        Some(SpanContext {
            trace_id: TraceId::parse(trace_id)?,
            span_id: SpanId::parse(span_id)?,
            sampled: f[0] & 1 == 1,
        })
    }
}

/// The trace of one tool call, handed to the tool with its `Invocation`: the call's span
/// context (what `traceparent` names) and its `tracing` span, which the tool actor enters
/// while the tool runs, so spans a tool makes (a model call of the `llm` tool) are its
/// children.
#[derive(Debug, Clone)]
pub struct CallTrace {
    pub context: SpanContext,
    pub span: tracing::Span,
}

impl CallTrace {
    /// A call with a context but no live span (a reconcile question after a crash).
    pub fn detached(context: SpanContext) -> CallTrace {
        CallTrace {
            context,
            span: tracing::Span::none(),
        }
    }

    /// The `traceparent` header value naming the call's span.
    pub fn traceparent(&self) -> String {
        self.context.traceparent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_trace_and_root_come_from_its_id() {
        let job = JobId::new();
        let root = SpanContext::job_root(job);
        assert_eq!(root.trace_id.to_string(), job.0.simple().to_string());
        assert_eq!(root.span_id.to_string(), job.0.simple().to_string()[16..]);
        assert_eq!(
            SpanContext::job_root(job),
            root,
            "derived, the same every time"
        );
        assert_ne!(SpanContext::job_root(JobId::new()).trace_id, root.trace_id);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn traceparent_is_written_and_read_as_w3c_says() {
        let ctx = SpanContext {
            trace_id: TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::parse("00f067aa0ba902b7").unwrap(),
            sampled: true,
        };
        let header = ctx.traceparent();
        assert_eq!(
            header,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(SpanContext::parse_traceparent(&header), Some(ctx));
        let unsampled = SpanContext::parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.traceparent().ends_with("-00"));
        // A future version may add fields; version 00 may not.
        assert!(SpanContext::parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        )
        .is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(SpanContext::parse_traceparent(bad), None, "{bad:?}");
        }
    }
}
