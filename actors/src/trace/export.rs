//! The OTLP exporter: a `tracing_subscriber` layer that gives every span its
//! OpenTelemetry identity when it opens and queues it when it closes, and a thread that
//! sends the queue in batches to `POST {endpoint}/v1/traces` (OTLP/HTTP, JSON).
//!
//! Identity (the fields of `trace::`): a span's trace id is its `otel.trace_id`, else its
//! parent's, else new; its parent is `otel.parent_id`, else its `tracing` parent; its id
//! is `otel.span_id`, else new. `aetheris.job_id`, `aetheris.tenant` and `aetheris.step`
//! are inherited from the parent span when a span does not set them, so a span made
//! deep inside a call (a model call of the `llm` tool) still names its job.
//!
//! Invariant kept here: a span's close never waits. It is `try_send` into a bounded queue;
//! a full queue drops it and counts it; the thread alone talks to the collector, with a
//! timeout, and drops (and counts) a batch the collector does not take. Nothing is
//! retried: tracing is best effort, the job's events are the record.

use super::otlp::{encode, AttrValue, Attributes, FinishedSpan, SpanKind, StatusCode};
use super::{SpanContext, SpanId, TraceId, LINK, PARENT_ID, SPAN_ID, START_MS, TRACE_ID};
use crate::metrics as metric;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes as SpanAttributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Attributes a span takes from its parent unless it sets them itself.
const INHERITED: [&str; 3] = ["aetheris.job_id", "aetheris.tenant", "aetheris.step"];

/// Where and how spans are sent.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `http://HOST:PORT` (`/v1/traces` is added) or the full URL of the traces route.
    pub endpoint: String,
    /// Describes this process (`service.name`, …).
    pub resource: Attributes,
    /// Closed spans waiting to be sent; beyond it they are dropped.
    pub queue: usize,
    /// Spans per request.
    pub batch: usize,
    /// How long a span may wait for its batch to fill.
    pub interval: Duration,
    /// How long one request may take.
    pub timeout: Duration,
}

impl ExportConfig {
    pub fn new(endpoint: &str, resource: Attributes) -> ExportConfig {
        ExportConfig {
            endpoint: endpoint.to_string(),
            resource,
            queue: 4096,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The URL spans are posted to: the endpoint with `/v1/traces`, unless it names it.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Checks an `--otlp-endpoint` before anything starts: an absolute `http://` URL with a
/// host. The exporter speaks plain HTTP (a collector beside the process terminates TLS).
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint.trim()).map_err(|e| {
        format!("expected an http:// URL like http://127.0.0.1:4318 ({e}), got {endpoint:?}")
    })?;
    match url.scheme() {
        "http" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "http" => Err(format!(
            "expected an http:// URL with a host, got {endpoint:?}"
        )),
        "https" => Err(format!(
            "https is not supported: point it at an OpenTelemetry Collector over plain http \
             (e.g. one beside the process), got {endpoint:?}"
        )),
        other => Err(format!(
            "expected an http:// URL, got scheme {other:?} in {endpoint:?}"
        )),
    }
}

/// Spans the exporter takes: those of Aetheris' own crates at `info` or above (never
/// events, never other crates' spans, so the HTTP client sending spans makes none).
pub fn wanted(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("aetheris") && *meta.level() <= tracing::Level::INFO
}

enum Message {
    Span(Box<FinishedSpan>),
    /// Send everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// Spans this exporter dropped (also the `aetheris_trace_spans_dropped_total` series).
#[derive(Debug, Default)]
pub struct Dropped(AtomicU64);

impl Dropped {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64, reason: &'static str) {
        self.0.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::TRACE_SPANS_DROPPED, "reason" => reason).increment(n);
    }
}

/// The layer: see the module's documentation.
pub struct OtlpLayer {
    queue: SyncSender<Message>,
    dropped: Arc<Dropped>,
}

/// The running exporter: flushes what is queued when dropped (bounded by a timeout).
pub struct ExportHandle {
    queue: SyncSender<Message>,
    pub dropped: Arc<Dropped>,
}

/// Starts the exporter's thread; the layer feeds it. From now on this process's
/// `traceparent` headers say `sampled`.
pub fn start(config: ExportConfig) -> Result<(OtlpLayer, ExportHandle), String> {
    let started = spawn(config)?;
    super::set_exporting();
    Ok(started)
}

/// `start` without touching the process-wide `sampled` flag (tests run several).
fn spawn(config: ExportConfig) -> Result<(OtlpLayer, ExportHandle), String> {
    let (layer, receiver) = OtlpLayer::new(config.queue);
    let handle = ExportHandle {
        queue: layer.queue.clone(),
        dropped: layer.dropped.clone(),
    };
    let dropped = layer.dropped.clone();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || Sender::new(config, dropped).run(receiver))
        .map_err(|e| format!("starting the OTLP exporter: {e}"))?;
    Ok((layer, handle))
}

impl OtlpLayer {
    /// A layer whose queue (of `capacity` spans) the caller reads.
    fn new(capacity: usize) -> (OtlpLayer, Receiver<Message>) {
        let (queue, receiver) = sync_channel(capacity.max(1));
        let layer = OtlpLayer {
            queue,
            dropped: Arc::default(),
        };
        (layer, receiver)
    }

    fn enqueue(&self, span: FinishedSpan) {
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.add(1, "queue_full"),
            Err(TrySendError::Disconnected(_)) => self.dropped.add(1, "exporter_stopped"),
        }
    }
}

impl ExportHandle {
    /// Waits until everything queued so far is sent (or `limit` passes).
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (ack, done) = sync_channel(1);
        let mut message = Message::Flush(ack);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
    }
}

/// A span being recorded: kept in the span's extensions until it closes.
struct Open {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    name: String,
    kind: SpanKind,
    start_unix_ns: u64,
    attributes: Attributes,
    links: Vec<SpanContext>,
    status: StatusCode,
    status_message: Option<String>,
}

/// What a span's fields say, special fields apart.
#[derive(Default)]
struct Fields {
    name: Option<String>,
    kind: Option<SpanKind>,
    trace_id: Option<TraceId>,
    span_id: Option<SpanId>,
    parent_id: Option<SpanId>,
    start_ms: Option<i64>,
    links: Vec<SpanContext>,
    status: Option<StatusCode>,
    status_message: Option<String>,
    attributes: Attributes,
}

impl Fields {
    fn set(&mut self, field: &Field, value: AttrValue) {
        let text = || match &value {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Double(d) => d.to_string(),
        };
        match field.name() {
            "otel.name" => self.name = Some(text()),
            "otel.kind" => self.kind = Some(SpanKind::parse(&text())),
            "otel.status_code" => {
                self.status = Some(match text().to_ascii_lowercase().as_str() {
                    "error" => StatusCode::Error,
                    "ok" => StatusCode::Ok,
                    _ => StatusCode::Unset,
                })
            }
            "otel.status_message" => self.status_message = Some(text()),
            TRACE_ID => self.trace_id = TraceId::parse(&text()),
            SPAN_ID => self.span_id = SpanId::parse(&text()),
            PARENT_ID => self.parent_id = SpanId::parse(&text()),
            LINK => self.links.extend(SpanContext::parse_traceparent(&text())),
            START_MS => self.start_ms = text().parse().ok(),
            name => {
                if name == "error.type" && self.status.is_none() {
                    self.status = Some(StatusCode::Error);
                }
                match self.attributes.iter_mut().find(|(k, _)| k == name) {
                    Some((_, v)) => *v = value,
                    None => self.attributes.push((name.to_string(), value)),
                }
            }
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, AttrValue::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, AttrValue::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, AttrValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.set(field, AttrValue::Int(v)),
            Err(_) => self.set(field, AttrValue::Str(value.to_string())),
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, AttrValue::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, AttrValue::Double(value));
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &SpanAttributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parent = span.parent();
        let parent_ext = parent.as_ref().map(|p| p.extensions());
        let parent_open = parent_ext.as_ref().and_then(|e| e.get::<Open>());
        let trace_id = fields
            .trace_id
            .or(parent_open.map(|p| p.trace_id))
            .unwrap_or_else(TraceId::random);
        // A live parent of another trace (a job's span made inside a request) is no parent.
        let live_parent = parent_open
            .filter(|p| p.trace_id == trace_id)
            .map(|p| p.span_id);
        let mut attributes = fields.attributes;
        if let Some(p) = parent_open {
            for key in INHERITED {
                if !attributes.iter().any(|(k, _)| k == key) {
                    if let Some((k, v)) = p.attributes.iter().find(|(k, _)| k == key) {
                        attributes.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        let open = Open {
            trace_id,
            span_id: fields.span_id.unwrap_or_else(SpanId::random),
            parent: fields.parent_id.or(live_parent),
            name: fields
                .name
                .unwrap_or_else(|| attrs.metadata().name().to_string()),
            kind: fields.kind.unwrap_or(SpanKind::Internal),
            start_unix_ns: match fields.start_ms {
                Some(ms) => u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000),
                None => now_unix_ns(),
            },
            attributes,
            links: fields.links,
            status: fields.status.unwrap_or(StatusCode::Unset),
            status_message: fields.status_message,
        };
        drop(parent_ext);
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut ext = span.extensions_mut();
        let Some(open) = ext.get_mut::<Open>() else {
            return;
        };
        if let Some(name) = fields.name {
            open.name = name;
        }
        if let Some(kind) = fields.kind {
            open.kind = kind;
        }
        if let Some(status) = fields.status {
            open.status = status;
        }
        if fields.status_message.is_some() {
            open.status_message = fields.status_message;
        }
        open.links.extend(fields.links);
        for (key, value) in fields.attributes {
            match open.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v = value,
                None => open.attributes.push((key, value)),
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        self.enqueue(FinishedSpan {
            trace_id: open.trace_id,
            span_id: open.span_id,
            parent: open.parent,
            name: open.name,
            kind: open.kind,
            start_unix_ns: open.start_unix_ns,
            end_unix_ns: now_unix_ns(),
            attributes: open.attributes,
            links: open.links,
            status: open.status,
            status_message: open.status_message,
        });
    }
}

/// The exporter's thread: batches the queue and posts each batch once.
struct Sender {
    config: ExportConfig,
    url: String,
    dropped: Arc<Dropped>,
    /// When a failed export was last logged (one warning a minute at most).
    warned: Option<Instant>,
}

impl Sender {
    fn new(config: ExportConfig, dropped: Arc<Dropped>) -> Sender {
        Sender {
            url: traces_url(&config.endpoint),
            config,
            dropped,
            warned: None,
        }
    }

    fn run(mut self, queue: Receiver<Message>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "the OTLP exporter cannot start; spans are dropped");
                return; // the queue disconnects: every span is counted as dropped
            }
        };
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        while let Some((batch, acks)) = self.next_batch(&queue) {
            for chunk in batch.chunks(self.config.batch.max(1)) {
                runtime.block_on(self.post(&client, chunk));
            }
            for ack in acks {
                let _ = ack.try_send(());
            }
        }
    }

    /// Waits for a span, then gathers more until the batch is full or `interval` passed;
    /// a flush takes everything queued at once. `None` once no layer is left.
    fn next_batch(
        &self,
        queue: &Receiver<Message>,
    ) -> Option<(Vec<FinishedSpan>, Vec<SyncSender<()>>)> {
        let (mut batch, mut acks) = (Vec::new(), Vec::new());
        let take =
            |m: Message, batch: &mut Vec<FinishedSpan>, acks: &mut Vec<SyncSender<()>>| match m {
                Message::Span(s) => batch.push(*s),
                Message::Flush(ack) => acks.push(ack),
            };
        take(queue.recv().ok()?, &mut batch, &mut acks);
        let deadline = Instant::now() + self.config.interval;
        while acks.is_empty() && batch.len() < self.config.batch {
            match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(m) => take(m, &mut batch, &mut acks),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if !acks.is_empty() {
            while let Ok(m) = queue.try_recv() {
                take(m, &mut batch, &mut acks);
            }
        }
        Some((batch, acks))
    }

    async fn post(&mut self, client: &reqwest::Client, spans: &[FinishedSpan]) {
        let n = spans.len() as u64;
        let body = encode(&self.config.resource, spans);
        let sent = client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => metrics::counter!(metric::TRACE_SPANS_EXPORTED).increment(n),
            Some(why) => {
                self.dropped.add(n, "export_failed");
                if self
                    .warned
                    .is_none_or(|at| at.elapsed() > Duration::from_secs(60))
                {
                    self.warned = Some(Instant::now());
                    tracing::warn!(url = %self.url, error = %why, spans = n,
                        "OTLP export failed; these spans are dropped (warned once a minute)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::spans;
    use aetheris_runtime::JobId;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` under a subscriber with the layer (queue of `capacity`), and returns what
    /// the layer queued and how many it dropped.
    fn capture(capacity: usize, f: impl FnOnce()) -> (Vec<FinishedSpan>, u64) {
        let (layer, queue) = OtlpLayer::new(capacity);
        let dropped = layer.dropped.clone();
        let subscriber = tracing_subscriber::registry()
            .with(layer.with_filter(tracing_subscriber::filter::filter_fn(wanted)));
        tracing::subscriber::with_default(subscriber, f);
        let spans = queue
            .try_iter()
            .filter_map(|m| match m {
                Message::Span(s) => Some(*s),
                Message::Flush(_) => None,
            })
            .collect();
        (spans, dropped.count())
    }

    fn named<'a>(spans: &'a [FinishedSpan], name: &str) -> &'a FinishedSpan {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    }

    fn text<'a>(span: &'a FinishedSpan, key: &str) -> &'a str {
        span.attribute(key)
            .and_then(AttrValue::as_str)
            .unwrap_or_else(|| panic!("{key} missing on {span:#?}"))
    }

    #[test]
    fn a_jobs_spans_form_one_tree_under_its_derived_root() {
        let job = JobId::new();
        let root = SpanContext::job_root(job);
        let (spans, dropped) = capture(64, || {
            let step = spans::step(job, "acme", "fetch", false);
            let (tool, ctx) = spans::tool_call(
                &step,
                &spans::ToolCall {
                    job,
                    tenant: "acme",
                    step: "fetch",
                    tool: "llm",
                    attempt: 2,
                    invocation_key: "k-1",
                    call_id: None,
                },
            );
            // A span made inside the call, knowing nothing of the job (a model call).
            tool.in_scope(|| {
                let chat =
                    tracing::info_span!("chat", otel.name = "chat m", error.type = "timeout");
                drop(chat);
            });
            spans::failed(&tool, "retryable_error");
            assert_eq!(ctx.trace_id, root.trace_id);
            drop(tool);
            drop(step);
            spans::accept_job(job, "acme", None);
        });
        assert_eq!(dropped, 0);
        let step = named(&spans, "step fetch");
        let tool = named(&spans, "execute_tool llm");
        let chat = named(&spans, "chat m");
        let accept = named(&spans, "accept_job");
        for s in [step, tool, chat, accept] {
            assert_eq!(s.trace_id, root.trace_id, "{}", s.name);
            assert_eq!(text(s, "aetheris.job_id"), job.to_string(), "{}", s.name);
            assert_eq!(text(s, "aetheris.tenant"), "acme", "{}", s.name);
        }
        assert_eq!(step.parent, Some(root.span_id));
        assert_eq!(accept.parent, Some(root.span_id));
        assert_eq!(tool.parent, Some(step.span_id));
        assert_eq!(chat.parent, Some(tool.span_id));
        assert_eq!(text(chat, "aetheris.step"), "fetch", "inherited");
        assert_eq!(tool.attribute("aetheris.attempt"), Some(&AttrValue::Int(2)));
        assert_eq!(text(tool, "aetheris.invocation_key"), "k-1");
        assert_eq!(text(tool, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(tool.status, StatusCode::Error);
        assert_eq!(chat.status, StatusCode::Error, "error.type makes an error");
        assert_eq!(step.status, StatusCode::Unset);
        for s in &spans {
            assert!(
                !s.attributes.iter().any(|(k, _)| k.starts_with("otel.")),
                "identity fields are not attributes: {s:#?}"
            );
        }
    }

    #[test]
    fn the_root_is_backdated_to_the_submission_and_carries_the_outcome() {
        let job = JobId::new();
        let mut state = aetheris_runtime::JobState::genesis(&aetheris_runtime::RecordedEvent {
            job_id: job,
            seq: 1,
            recorded_at_ms: 1_700_000_000_123,
            body: aetheris_runtime::EventBody::JobSubmitted {
                tenant: "acme".into(),
                plan: serde_json::from_value(
                    serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}),
                )
                .unwrap(),
                input: serde_json::Value::Null,
                idempotency_key: None,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        })
        .unwrap();
        state.status = aetheris_runtime::JobStatus::Failed;
        state.error = Some("step a failed".into());
        let (spans, _) = capture(8, || spans::job_root(&state));
        let root = named(&spans, "job");
        assert_eq!(root.span_id, SpanId::job_root(job));
        assert_eq!(root.trace_id, TraceId::of_job(job));
        assert_eq!(root.parent, None);
        assert_eq!(root.start_unix_ns, state.created_at_ms as u64 * 1_000_000);
        assert!(root.end_unix_ns > root.start_unix_ns);
        assert_eq!(root.status, StatusCode::Error);
        assert_eq!(root.status_message.as_deref(), Some("step a failed"));
        assert_eq!(text(root, "aetheris.job.status"), "failed");
    }

    #[test]
    fn a_remote_parent_and_a_link_are_taken_from_fields() {
        let caller = SpanContext::parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        let (spans, _) = capture(8, || {
            let request = tracing::info_span!(
                target: "aetheris_api::trace",
                "request",
                otel.name = "POST /v1/jobs",
                otel.kind = "server",
                otel.trace_id = %caller.trace_id,
                otel.parent_id = %caller.span_id,
                otel.link = tracing::field::Empty,
            );
            let job = JobId::new();
            request.record(
                "otel.link",
                SpanContext::job_root(job).traceparent().as_str(),
            );
            // A job's span made while the request is current keeps to the job's trace.
            request.in_scope(|| spans::accept_job(job, "t", None));
            drop(request);
        });
        let request = named(&spans, "POST /v1/jobs");
        assert_eq!(request.trace_id, caller.trace_id);
        assert_eq!(request.parent, Some(caller.span_id));
        assert_eq!(request.kind, SpanKind::Server);
        assert_eq!(request.links.len(), 1);
        let accept = named(&spans, "accept_job");
        assert_eq!(request.links[0].trace_id, accept.trace_id);
        assert_ne!(accept.trace_id, caller.trace_id);
        assert_eq!(accept.parent, Some(request.links[0].span_id));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // Nobody reads the queue (a collector that is down and a sender that is stuck).
        let (spans, dropped) = capture(4, || {
            for i in 0..1000 {
                let span = tracing::info_span!(target: "aetheris_actors", "s", i);
                drop(span);
            }
        });
        assert_eq!(spans.len(), 4);
        assert_eq!(dropped, 996);
    }

    #[test]
    fn only_aetheris_spans_are_exported() {
        let (spans, _) = capture(8, || {
            drop(tracing::info_span!(target: "hyper::client", "connect"));
            drop(tracing::debug_span!(target: "aetheris_actors", "chatty"));
            tracing::info!(target: "aetheris_actors", "an event is no span");
            drop(tracing::info_span!(target: "aetheris_actors", "kept"));
        });
        assert_eq!(
            spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["kept"]
        );
    }

    /// A minimal OTLP/HTTP collector on loopback (std only): answers each request with
    /// `status` and hands its headers and body to the test; with `status` 0 it accepts
    /// connections and never answers (a collector that hangs).
    fn collector(status: u16) -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if status == 0 {
                    held.push(conn);
                    continue;
                }
                let mut reader = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}");
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                    let _ = tx.send((head, body));
                }
            }
        });
        (url, rx)
    }

    fn quick(url: &str, queue: usize, batch: usize) -> ExportConfig {
        ExportConfig {
            queue,
            batch,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(30),
            ..ExportConfig::new(
                url,
                vec![("service.name".into(), AttrValue::Str("t".into()))],
            )
        }
    }

    #[test]
    fn closed_spans_are_posted_as_otlp_json_batches() {
        let (url, requests) = collector(200);
        let (layer, handle) = spawn(quick(&url, 64, 2)).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(layer.with_filter(tracing_subscriber::filter::filter_fn(wanted)));
        let job = JobId::new();
        tracing::subscriber::with_default(subscriber, || {
            for step in ["a", "b", "c"] {
                drop(spans::step(job, "acme", step, false));
            }
        });
        handle.flush(Duration::from_secs(10));
        let mut names = Vec::new();
        while let Ok((head, body)) = requests.recv_timeout(Duration::from_secs(5)) {
            assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let rs = &body["resourceSpans"][0];
            assert_eq!(rs["resource"]["attributes"][0]["value"]["stringValue"], "t");
            let batch = rs["scopeSpans"][0]["spans"].as_array().unwrap();
            assert!(batch.len() <= 2, "batches of at most 2: {batch:?}");
            for span in batch {
                assert_eq!(span["traceId"], TraceId::of_job(job).to_string());
                assert_eq!(span["parentSpanId"], SpanId::job_root(job).to_string());
                names.push(span["name"].as_str().unwrap().to_string());
            }
            if names.len() == 3 {
                break;
            }
        }
        names.sort();
        assert_eq!(names, ["step a", "step b", "step c"]);
        assert_eq!(handle.dropped.count(), 0);
    }

    #[test]
    fn a_batch_the_collector_refuses_is_dropped_and_counted() {
        let (url, requests) = collector(500);
        let (layer, handle) = spawn(quick(&url, 64, 512)).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(layer.with_filter(tracing_subscriber::filter::filter_fn(wanted)));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5 {
                drop(tracing::info_span!(target: "aetheris_actors", "s", i));
            }
        });
        handle.flush(Duration::from_secs(10));
        assert!(requests.recv_timeout(Duration::from_secs(5)).is_ok());
        assert_eq!(handle.dropped.count(), 5, "not retried, counted");
    }

    #[test]
    fn a_hanging_collector_never_holds_up_a_span() {
        // The sender is stuck in its first request (a 30 s timeout); spans keep closing.
        let (url, _requests) = collector(0);
        let (layer, handle) = spawn(quick(&url, 8, 4)).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(layer.with_filter(tracing_subscriber::filter::filter_fn(wanted)));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                drop(tracing::info_span!(target: "aetheris_actors", "s", i));
            }
        });
        // At most one batch in flight and a full queue were kept; the rest was dropped.
        let dropped = handle.dropped.count();
        assert!((10_000 - 12..10_000).contains(&dropped), "{dropped}");
        handle.flush(Duration::from_millis(50)); // gives up: the sender is stuck
        std::mem::forget(handle); // its drop would wait for the stuck sender again
    }

    #[test]
    fn an_endpoint_is_checked_before_start() {
        assert!(check_endpoint("http://127.0.0.1:4318").is_ok());
        assert!(check_endpoint("http://collector:4318/otlp/v1/traces").is_ok());
        for bad in [
            "",
            "127.0.0.1:4318",
            "https://c:4318",
            "grpc://c:4317",
            "http://",
            "nope",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?}");
        }
        assert!(check_endpoint("https://c:4318")
            .unwrap_err()
            .contains("https"));
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_its_route() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/otlp/v1/traces"),
            "http://c:4318/otlp/v1/traces"
        );
    }
}
