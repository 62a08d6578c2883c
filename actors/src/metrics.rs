//! Every metric of Aetheris, declared once: a `pub const` name per metric and one table
//! (`DEFINITIONS`) giving each its kind, unit, help text and, for histograms, its
//! buckets. Call sites record through the `metrics` facade with these constants
//! (`metrics::counter!(metrics::LEASE_GRANTS).increment(1)`); `describe_metrics` hands the
//! help texts to the recorder, so a name cannot lose its help text.
//!
//! The recorder is metrics-exporter-prometheus, installed once per process (`Metrics::install`,
//! a `OnceLock`) with no listener of its own: every process serves its text from an
//! actix-web route (the gateway's `/metrics`, a worker's admin listener), and a thread of
//! its own runs the exporter's upkeep. Because the recorder is process-wide, every node of
//! one process shares its series (tests that count run in a process of their own).
//!
//! Some series are computed when a scrape asks (`Definition::at_scrape`): the supervision
//! figures of the process (supervision.rs, added to every render) and what the gateways
//! read from the store (jobs by state, backlog, unknown outcomes, processes, migrations;
//! passed in as `ScrapeGauge`s). They are rendered with the help text and type of their
//! definition and are never recorded through the facade, so no name is rendered twice.
//!
//! Invariants: labels never carry job ids (cardinality stays bounded by tenants, tools,
//! kinds and reasons); a tenant's scrape shows only series labelled with that tenant plus
//! the process-wide ones without a tenant label (`Metrics::render_for`, G6).

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

/// Jobs by tenant and state (a gauge computed from the store at scrape time).
pub const JOBS: &str = "aetheris_jobs";
pub const JOBS_SUBMITTED: &str = "aetheris_jobs_submitted_total";
pub const STEP_DURATION: &str = "aetheris_step_duration_seconds";
pub const TOOL_CALLS: &str = "aetheris_tool_calls_total";
pub const LEDGER_OUTCOMES: &str = "aetheris_ledger_outcomes_total";
pub const QUEUE_WAIT: &str = "aetheris_queue_wait_seconds";
pub const COMMAND_CHECKS: &str = "aetheris_command_checks_total";
// The supervision tree (supervision.rs).
pub const ACTORS: &str = "aetheris_actors";
pub const ACTOR_RESTARTS: &str = "aetheris_actor_restarts_total";
pub const ACTOR_PANICS: &str = "aetheris_actor_panics_total";
pub const MAILBOX_DEPTH: &str = "aetheris_mailbox_depth";
pub const UPTIME: &str = "aetheris_uptime_seconds";
pub const BUILD_INFO: &str = "aetheris_build_info";
// Leases.
pub const LEASE_GRANTS: &str = "aetheris_lease_grants_total";
pub const LEASE_HANDOFFS: &str = "aetheris_lease_handoffs_total";
pub const LEASE_LOSSES: &str = "aetheris_lease_losses_total";
pub const LEASES_HELD: &str = "aetheris_leases_held";
pub const LEASE_TTL: &str = "aetheris_lease_ttl_seconds";
pub const LEASE_HEARTBEAT_AGE: &str = "aetheris_lease_heartbeat_age_seconds";
pub const HEARTBEAT_DURATION: &str = "aetheris_heartbeat_seconds";
pub const CLAIM_DURATION: &str = "aetheris_claim_duration_seconds";
// Snapshots and replay.
pub const SNAPSHOTS_WRITTEN: &str = "aetheris_snapshots_written_total";
pub const SNAPSHOT_FAILURES: &str = "aetheris_snapshot_failures_total";
pub const REPLAY_EVENTS: &str = "aetheris_replay_events_total";
pub const REPLAY_DURATION: &str = "aetheris_replay_duration_seconds";
// The store.
pub const STORE_APPEND_DURATION: &str = "aetheris_store_append_seconds";
pub const STORE_UP: &str = "aetheris_store_up";
pub const STORE_UNAVAILABLE: &str = "aetheris_store_unavailable_total";
pub const MIGRATIONS_APPLIED: &str = "aetheris_migrations_applied";
pub const MIGRATIONS_EXPECTED: &str = "aetheris_migrations_expected";
pub const RUNNABLE_JOBS: &str = "aetheris_runnable_jobs";
pub const RUNNABLE_OLDEST: &str = "aetheris_runnable_oldest_seconds";
pub const OUTCOME_UNKNOWN_STEPS: &str = "aetheris_outcome_unknown_steps";
pub const OUTCOME_UNKNOWN_OLDEST: &str = "aetheris_outcome_unknown_oldest_seconds";
// Rate limits.
pub const RATE_LIMIT_REJECTIONS: &str = "aetheris_rate_limit_rejections_total";
pub const RATE_LIMIT_WAITS: &str = "aetheris_rate_limit_waits_total";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "aetheris_rate_limit_wait_seconds_total";
// Processes (presence).
pub const LIVE_PROCESSES: &str = "aetheris_live_processes";
pub const PROCESSES: &str = "aetheris_processes";
pub const PROCESS_UP: &str = "aetheris_process_up";
pub const PROCESS_HEARTBEAT_AGE: &str = "aetheris_process_heartbeat_age_seconds";
pub const PROCESS_TTL: &str = "aetheris_process_ttl_seconds";
// Evidence, retention and budgets.
pub const EVIDENCE_EXPORT_FAILURES: &str = "aetheris_evidence_export_failures_total";
pub const RETENTION_GC_LAG: &str = "aetheris_retention_gc_lag_seconds";
pub const RETENTION_DELETED: &str = "aetheris_retention_deleted_jobs_total";
pub const RETENTION_BATCH_DURATION: &str = "aetheris_retention_gc_batch_seconds";
pub const RETENTION_ERRORS: &str = "aetheris_retention_gc_errors_total";
pub const LLM_BUDGET_USED: &str = "aetheris_llm_budget_used_ratio";
/// OpenTelemetry GenAI `gen_ai.client.token.usage`, as a Prometheus counter of tokens.
pub const GEN_AI_TOKEN_USAGE: &str = "aetheris_gen_ai_client_token_usage_total";
/// OpenTelemetry GenAI `gen_ai.client.operation.duration`.
pub const GEN_AI_OPERATION_DURATION: &str = "aetheris_gen_ai_client_operation_duration_seconds";
// Tracing (trace/export.rs).
pub const TRACE_SPANS_EXPORTED: &str = "aetheris_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED: &str = "aetheris_trace_spans_dropped_total";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's declaration.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    /// Upper bounds of a histogram's buckets (seconds); empty for other kinds.
    pub buckets: &'static [f64],
    /// Computed when a scrape asks (from the store, the presence table or the supervision
    /// figures), never recorded through the facade: see `ScrapeGauge`.
    pub at_scrape: bool,
}

/// A tool call: from a millisecond (echo) to the longest default step timeout (5 min).
const TOOL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// One store round trip: from a tenth of a millisecond (redb, warm) to a stalled database.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// A model call: from a fake provider answering at once to a long generation.
const MODEL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Loading a job: one round trip for a short log, many pages for a long one.
const REPLAY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Waiting in the queue: from a few milliseconds (an idle worker) to an hour's backlog.
const QUEUE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

const fn counter(name: &'static str, help: &'static str) -> Definition {
    Definition {
        name,
        kind: Kind::Counter,
        unit: Unit::Count,
        help,
        buckets: &[],
        at_scrape: false,
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Definition {
    Definition {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        buckets: &[],
        at_scrape: false,
    }
}

const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Definition {
    Definition {
        name,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help,
        buckets,
        at_scrape: false,
    }
}

impl Definition {
    /// Computed at scrape time (see `at_scrape`).
    const fn at_scrape(self) -> Definition {
        Definition {
            at_scrape: true,
            ..self
        }
    }
}

/// Every metric: the one place its kind, unit, help text and buckets are written.
pub const DEFINITIONS: &[Definition] = &[
    // Jobs and steps.
    gauge(JOBS, Unit::Count, "Jobs by tenant and state, as stored (computed at scrape time by the gateway).").at_scrape(),
    counter(JOBS_SUBMITTED, "Jobs accepted by the gateway (created, not repeats), per tenant."),
    histogram(STEP_DURATION, "Tool step latency, from the call to its result, per tool.", TOOL_BUCKETS),
    counter(TOOL_CALLS, "Tool invocations by tool and outcome (succeeded, retryable_error, permanent_error, outcome_unknown)."),
    counter(LEDGER_OUTCOMES, "Step outcomes recorded in the ledger (succeeded, failed, outcome_unknown)."),
    histogram(QUEUE_WAIT, "Queue wait per tenant: from a job's submission to the start of its first step (store clock).", QUEUE_BUCKETS),
    counter(COMMAND_CHECKS, "Reads of a running job's stored commands prompted by new commands (a flood of commands for one job is coalesced into a few reads)."),
    // The supervision tree.
    gauge(ACTORS, Unit::Count, "Live actors of this process per kind (registry, lease_manager, job, rate_limiter, tool).").at_scrape(),
    counter(ACTOR_RESTARTS, "Crashed actors restarted from storage (or given up on), per kind and reason."),
    counter(ACTOR_PANICS, "Panics caught, per kind and reason."),
    gauge(MAILBOX_DEPTH, Unit::Count, "Messages sent to this process's actors of a kind and not yet handled (tool actors: calls in flight).").at_scrape(),
    gauge(UPTIME, Unit::Seconds, "Seconds since this process started.").at_scrape(),
    gauge(BUILD_INFO, Unit::Count, "Always 1, labelled with the version this process runs.").at_scrape(),
    // Leases.
    counter(LEASE_GRANTS, "Leases granted to this worker."),
    counter(LEASE_HANDOFFS, "Of the leases granted, those of new jobs handed to this worker's free slots by their submission, with no claim."),
    counter(LEASE_LOSSES, "Leases this worker lost, by reason (heartbeat: not renewed in time; fenced: an append was refused)."),
    gauge(LEASES_HELD, Unit::Count, "Leases this process's workers hold now.").at_scrape(),
    gauge(LEASE_TTL, Unit::Seconds, "The lease TTL of this process's workers: a lease not renewed for this long is lost.").at_scrape(),
    gauge(LEASE_HEARTBEAT_AGE, Unit::Seconds, "Seconds since this process's leases were last renewed (0 while it holds none); near the lease TTL, leases are about to be lost.").at_scrape(),
    histogram(HEARTBEAT_DURATION, "Round trip of one lease heartbeat (every held lease renewed in one store call).", STORE_BUCKETS),
    histogram(CLAIM_DURATION, "Round trip of one claim of runnable jobs (leases granted and their logs read in one store call).", STORE_BUCKETS),
    // Snapshots and replay.
    counter(SNAPSHOTS_WRITTEN, "Job snapshots written."),
    counter(SNAPSHOT_FAILURES, "Job snapshots that could not be written (the job goes on; its next reload replays more events)."),
    counter(REPLAY_EVENTS, "Events replayed after the snapshot when job actors load."),
    histogram(REPLAY_DURATION, "Time to load a job actor's state from storage.", REPLAY_BUCKETS),
    // The store.
    histogram(STORE_APPEND_DURATION, "Latency of fenced appends to the store.", STORE_BUCKETS),
    gauge(STORE_UP, Unit::Count, "1 if the store answered this process's last heartbeat, else 0.").at_scrape(),
    counter(STORE_UNAVAILABLE, "Store calls of this process that failed because the store could not be reached (connection lost, pool timeout, server restarting, I/O).").at_scrape(),
    gauge(MIGRATIONS_APPLIED, Unit::Count, "Migrations recorded as applied in the database (computed at scrape time by the gateway).").at_scrape(),
    gauge(MIGRATIONS_EXPECTED, Unit::Count, "Migrations this build of the gateway knows; differs from the applied count while versions are mixed.").at_scrape(),
    gauge(RUNNABLE_JOBS, Unit::Count, "Jobs runnable now and held by no live lease, per tenant: the backlog (computed at scrape time by the gateway).").at_scrape(),
    gauge(RUNNABLE_OLDEST, Unit::Seconds, "Age of the oldest runnable unleased job's last change, per tenant (0 with no backlog).").at_scrape(),
    gauge(OUTCOME_UNKNOWN_STEPS, Unit::Count, "Steps whose outcome is unknown, waiting for a human confirmation, per tenant (computed at scrape time by the gateway).").at_scrape(),
    gauge(OUTCOME_UNKNOWN_OLDEST, Unit::Seconds, "How long the oldest outcome_unknown step of a tenant has waited for a confirmation (0 with none).").at_scrape(),
    // Rate limits.
    counter(RATE_LIMIT_REJECTIONS, "Requests refused by a rate limit, per tenant and kind."),
    counter(RATE_LIMIT_WAITS, "Calls that waited for a rate limit, per tenant and kind."),
    // A gauge only because the facade's counters count whole units; it only ever grows.
    gauge(RATE_LIMIT_WAIT_SECONDS, Unit::Seconds, "Time calls waited for a rate limit, per tenant and kind (only grows: use rate())."),
    // Processes.
    gauge(LIVE_PROCESSES, Unit::Count, "Live processes of this kind; this one takes one over it of each global limit."),
    gauge(PROCESSES, Unit::Count, "Live processes per kind (gateway, worker) in the presence table (computed at scrape time by the gateway).").at_scrape(),
    gauge(PROCESS_UP, Unit::Count, "Per announced process: 1 while its announcement is live, 0 once it expired without being withdrawn (killed, hung or cut off); gone 10 minutes later.").at_scrape(),
    gauge(PROCESS_HEARTBEAT_AGE, Unit::Seconds, "Per announced process: seconds since its last announcement (store clock).").at_scrape(),
    gauge(PROCESS_TTL, Unit::Seconds, "Per announced process: how long one announcement keeps it live.").at_scrape(),
    // Evidence, retention and budgets.
    counter(EVIDENCE_EXPORT_FAILURES, "Evidence exports that failed on the server's side, by stage (key: no signing key, store, build, audit)."),
    gauge(RETENTION_GC_LAG, Unit::Seconds, "Age of the oldest finished job past its tenant's retention, not yet deleted (0: retention is kept)."),
    counter(RETENTION_DELETED, "Finished jobs deleted by retention."),
    histogram(RETENTION_BATCH_DURATION, "One retention batch: archiving its jobs (if configured) and deleting them in one store transaction.", REPLAY_BUCKETS),
    counter(RETENTION_ERRORS, "Retention failures by stage (store: a pass failed and is retried next interval; archive: a job's package could not be written, so it is kept)."),
    gauge(LLM_BUDGET_USED, Unit::Count, "Share (0 to 1) of a tenant's LLM token budget of the day that is used, per tenant."),
    counter(GEN_AI_TOKEN_USAGE, "LLM tokens used (gen_ai.client.token.usage), per tenant, provider (gen_ai_provider_name), model (gen_ai_request_model) and gen_ai_token_type (input, output)."),
    histogram(GEN_AI_OPERATION_DURATION, "LLM calls' duration (gen_ai.client.operation.duration), per tenant, provider, model and gen_ai_operation_name.", MODEL_BUCKETS),
    // Tracing.
    counter(TRACE_SPANS_EXPORTED, "Spans the OTLP collector accepted (only with --otlp-endpoint)."),
    counter(TRACE_SPANS_DROPPED, "Spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector did not take the batch; exporter_stopped)."),
];

/// Whether no step of `state` has started yet (the job is still in the queue).
pub fn nothing_started(state: &aetheris_runtime::JobState) -> bool {
    state.steps.values().all(|s| s.started_at_ms.is_none())
}

/// Records the queue wait of a job whose first step just started: from its submission to
/// that start, both on the store clock (`aetheris_queue_wait_seconds{tenant}`).
pub fn record_queue_wait(state: &aetheris_runtime::JobState) {
    if let Some(wait_ms) = queue_wait_ms(state) {
        metrics::histogram!(QUEUE_WAIT, "tenant" => state.tenant.clone())
            .record(wait_ms as f64 / 1000.0);
    }
}

/// From a job's submission to the start of its first step, if one started.
fn queue_wait_ms(state: &aetheris_runtime::JobState) -> Option<i64> {
    let first = state.steps.values().filter_map(|s| s.started_at_ms).min()?;
    Some((first - state.created_at_ms).max(0))
}

/// The declaration of `name`, if it is one of ours.
pub fn definition(name: &str) -> Option<&'static Definition> {
    DEFINITIONS.iter().find(|d| d.name == name)
}

/// Hands every help text and unit to the current recorder.
pub fn describe_metrics() {
    for d in DEFINITIONS {
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

/// The exporter's configuration: every histogram with its own buckets (a histogram without
/// buckets would be rendered as a summary).
pub fn prometheus_builder() -> PrometheusBuilder {
    let mut builder = PrometheusBuilder::new();
    for d in DEFINITIONS.iter().filter(|d| d.kind == Kind::Histogram) {
        builder = match builder.set_buckets_for_metric(Matcher::Full(d.name.to_string()), d.buckets)
        {
            Ok(b) => b,
            // Only empty buckets are refused, and a test keeps every histogram's non-empty.
            Err(e) => {
                tracing::error!(metric = d.name, error = %e, "bad histogram buckets");
                return PrometheusBuilder::new();
            }
        };
    }
    builder
}

/// How often the exporter's upkeep runs (drains histogram samples into their buckets).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A series computed at scrape time: (name, labels, value); its type (gauge, or counter
/// for a count kept elsewhere) comes from its definition.
pub type ScrapeGauge = (&'static str, Vec<(&'static str, String)>, f64);

/// The unlabelled counters and gauges every process reports from its start, at zero
/// until something happens, so a scrape (and an alert on their rate) finds them at once.
fn zero_process_series() {
    metrics::counter!(SNAPSHOT_FAILURES).increment(0);
    metrics::counter!(RETENTION_DELETED).increment(0);
    metrics::gauge!(RETENTION_GC_LAG).set(0.0);
    for stage in ["store", "archive"] {
        metrics::counter!(RETENTION_ERRORS, "stage" => stage).increment(0);
    }
}

/// The process's metrics: a handle on its one recorder. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Metrics {
    handle: &'static PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::install()
    }
}

impl Metrics {
    /// The process's recorder, installed (with every description, and its upkeep thread)
    /// on the first call; later calls return the same one.
    pub fn install() -> Metrics {
        let handle = HANDLE.get_or_init(|| {
            let recorder = prometheus_builder().build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::error!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            describe_metrics();
            zero_process_series();
            crate::supervision::init();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("aetheris-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                // Rendering also drains histogram samples, so scrapes keep them bounded.
                tracing::warn!(error = %e, "no metrics upkeep thread");
            }
            handle
        });
        Metrics { handle }
    }

    /// Everything, plus `extra` series computed at scrape time (e.g. jobs by state) and
    /// this process's supervision figures (`supervision::scrape_series`).
    pub fn render(&self, extra: &[ScrapeGauge]) -> String {
        self.render_for(extra, None)
    }

    /// What `tenant` may see (G6): no series labelled with another tenant; `None` renders
    /// everything (the deployment's operators).
    pub fn render_for(&self, extra: &[ScrapeGauge], tenant: Option<&str>) -> String {
        let mut text = self.handle.render();
        let mut computed = crate::supervision::scrape_series();
        computed.extend_from_slice(extra);
        text.push_str(&render_gauges(&computed));
        match tenant {
            None => text,
            Some(t) => visible_to(&text, t),
        }
    }
}

/// `series` computed at scrape time, in the text format: each metric once, with the help
/// text and type of its definition, then all its samples (in the order given).
pub fn render_gauges(series: &[ScrapeGauge]) -> String {
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _, _) in series {
        if !names.contains(name) {
            names.push(name);
        }
    }
    let mut out = String::new();
    for name in names {
        let (help, kind) = definition(name).map_or(("", "gauge"), |d| {
            let kind = if d.kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            (d.help, kind)
        });
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (_, labels, value) in series.iter().filter(|(n, _, _)| *n == name) {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if parts.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", parts.join(","));
            }
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The part of a Prometheus text that `tenant` may see: every sample labelled with another
/// tenant (or that cannot be read) is left out, and so are the `# HELP`/`# TYPE` lines of
/// a metric none of whose samples is left.
pub fn visible_to(text: &str, tenant: &str) -> String {
    let mut out = String::new();
    let mut headers: Vec<&str> = Vec::new();
    let mut in_headers = false;
    for line in text.lines() {
        if line.starts_with('#') {
            if !in_headers {
                headers.clear();
                in_headers = true;
            }
            headers.push(line);
        } else if !line.trim().is_empty() {
            in_headers = false;
            let visible = labels_of(line).is_some_and(|labels| {
                labels
                    .iter()
                    .all(|(k, v)| *k != "tenant" || v.as_str() == tenant)
            });
            if visible {
                for h in headers.drain(..) {
                    out.push_str(h);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The labels of one sample line (`name{k="v",…} value` or `name value`), unescaped;
/// `None` if the line cannot be read.
fn labels_of(line: &str) -> Option<Vec<(&str, String)>> {
    let name_end = line.find(['{', ' '])?;
    let Some(mut rest) = line[name_end..].strip_prefix('{') else {
        return Some(Vec::new());
    };
    let mut labels = Vec::new();
    loop {
        if rest.starts_with('}') {
            return Some(labels);
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let quoted = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = &quoted[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusRecorder;

    /// A recorder of this module's configuration, for this thread only (the process's
    /// global one would mix in every other test's series).
    fn local() -> PrometheusRecorder {
        prometheus_builder().build_recorder()
    }

    #[test]
    fn every_definition_is_complete_and_declared_once() {
        let mut names = std::collections::HashSet::new();
        for d in DEFINITIONS {
            assert!(names.insert(d.name), "{} declared twice", d.name);
            assert!(d.name.starts_with("aetheris_"), "{}", d.name);
            assert!(d.help.len() > 10, "{} has no real help text", d.name);
            match d.kind {
                Kind::Histogram => {
                    assert!(!d.buckets.is_empty(), "{} has no buckets", d.name);
                    assert!(
                        d.buckets.windows(2).all(|w| w[0] < w[1]),
                        "{}: buckets must increase",
                        d.name
                    );
                    assert!(d.name.ends_with("_seconds"), "{}", d.name);
                }
                Kind::Counter => assert!(d.name.ends_with("_total"), "{}", d.name),
                Kind::Gauge => assert!(d.buckets.is_empty()),
            }
        }
    }

    #[test]
    fn every_metric_renders_with_its_help_text_and_histograms_with_their_buckets() {
        let recorder = local();
        let handle = recorder.handle();
        let text = metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            for d in DEFINITIONS {
                match d.kind {
                    Kind::Counter => metrics::counter!(d.name).increment(1),
                    Kind::Gauge => metrics::gauge!(d.name).set(1.0),
                    Kind::Histogram => metrics::histogram!(d.name).record(0.003),
                }
            }
            handle.render()
        });
        for d in DEFINITIONS {
            assert!(
                text.contains(&format!("# HELP {} {}", d.name, d.help)),
                "{} has no help line:\n{text}",
                d.name
            );
        }
        // The heartbeat histogram, whose help text was lost once.
        assert!(
            text.contains("aetheris_heartbeat_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aetheris_step_duration_seconds_bucket{le=\"300\"} 1"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summaries: {text}");
    }

    #[test]
    fn a_tenant_sees_only_its_own_series_and_the_process_wide_ones() {
        let recorder = local();
        let handle = recorder.handle();
        let text = metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            metrics::counter!(JOBS_SUBMITTED, "tenant" => "acme").increment(1);
            metrics::counter!(JOBS_SUBMITTED, "tenant" => "globex").increment(2);
            metrics::counter!(RATE_LIMIT_WAITS, "tenant" => "globex", "kind" => "tool_call")
                .increment(1);
            metrics::counter!(LEASE_GRANTS).increment(3);
            // A label value that looks like a tenant label must not fool the filter.
            metrics::counter!(TOOL_CALLS, "tool" => "x\",tenant=\"acme", "outcome" => "ok")
                .increment(1);
            handle.render()
        });
        let extra: Vec<ScrapeGauge> = vec![
            (
                JOBS,
                vec![("tenant", "acme".into()), ("state", "queued".into())],
                1.0,
            ),
            (
                JOBS,
                vec![("tenant", "globex".into()), ("state", "queued".into())],
                2.0,
            ),
        ];
        let all = format!("{text}{}", render_gauges(&extra));
        let acme = visible_to(&all, "acme");
        assert!(!acme.contains("globex"), "{acme}");
        assert!(
            acme.contains("aetheris_jobs_submitted_total{tenant=\"acme\"} 1"),
            "{acme}"
        );
        assert!(
            acme.contains("aetheris_jobs{tenant=\"acme\",state=\"queued\"} 1"),
            "{acme}"
        );
        assert!(acme.contains("aetheris_lease_grants_total 3"), "{acme}");
        assert!(
            acme.contains("# HELP aetheris_lease_grants_total"),
            "{acme}"
        );
        assert!(
            acme.contains("aetheris_tool_calls_total{tool="),
            "not a tenant label: {acme}"
        );
        // No help lines of a metric whose every sample is another tenant's.
        assert!(!acme.contains("aetheris_rate_limit_waits_total"), "{acme}");
        assert!(all.contains("globex"));
        // An unreadable line is left out (fail closed).
        assert_eq!(visible_to("x{tenant=\"acme\" 1\n", "acme"), "");
    }

    #[test]
    fn labels_are_read_with_escapes() {
        let l = labels_of(r#"m{a="1",b="x\"y\\z\n",tenant="t"} 2"#).unwrap();
        assert_eq!(
            l,
            vec![
                ("a", "1".into()),
                ("b", "x\"y\\z\n".into()),
                ("tenant", "t".into())
            ]
        );
        assert_eq!(labels_of("m 1").unwrap(), vec![]);
        assert_eq!(
            labels_of("m_bucket{le=\"+Inf\"} 1").unwrap(),
            vec![("le", "+Inf".into())]
        );
        assert!(labels_of("m{a=1} 2").is_none());
    }

    #[test]
    fn scrape_series_are_grouped_per_metric_and_typed_by_their_definition() {
        let t = render_gauges(&[
            (RUNNABLE_JOBS, vec![("tenant", "a".into())], 1.0),
            (STORE_UNAVAILABLE, vec![], 7.0),
            (RUNNABLE_JOBS, vec![("tenant", "b".into())], 2.0),
        ]);
        assert_eq!(
            t.matches("# TYPE aetheris_runnable_jobs gauge").count(),
            1,
            "{t}"
        );
        assert!(
            t.contains(
                "aetheris_runnable_jobs{tenant=\"a\"} 1\naetheris_runnable_jobs{tenant=\"b\"} 2\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("# TYPE aetheris_store_unavailable_total counter\n"),
            "{t}"
        );
    }

    #[test]
    fn queue_wait_is_from_submission_to_the_first_start() {
        use aetheris_runtime::{EventBody, JobId, JobState, Plan, RecordedEvent};
        let job = JobId::new();
        let plan: Plan = serde_json::from_value(serde_json::json!({"steps": [
            {"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo"}
        ]}))
        .unwrap();
        let at = |seq, ms, body| RecordedEvent {
            job_id: job,
            seq,
            recorded_at_ms: ms,
            body,
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        let submitted = at(
            1,
            1_000,
            EventBody::JobSubmitted {
                tenant: "t".into(),
                plan,
                input: serde_json::Value::Null,
                idempotency_key: None,
            },
        );
        let mut state = JobState::genesis(&submitted).unwrap();
        assert!(nothing_started(&state));
        assert_eq!(queue_wait_ms(&state), None);
        for (seq, step) in [(2, "a"), (3, "b")] {
            state
                .apply(&at(
                    seq,
                    1_000 + 250 * (seq as i64 - 1),
                    EventBody::StepStarted {
                        step: step.into(),
                        attempt: 1,
                        invocation_key: format!("k-{step}"),
                        tool: "echo".into(),
                        effect: aetheris_runtime::EffectClass::Pure,
                        fencing_token: 1,
                    },
                ))
                .unwrap();
        }
        assert!(!nothing_started(&state));
        assert_eq!(queue_wait_ms(&state), Some(250), "the first start counts");
    }

    #[test]
    fn scrape_gauges_render_with_their_help_text() {
        let t = render_gauges(&[(JOBS, vec![("state", "queued".into())], 3.0)]);
        assert!(
            t.starts_with("# HELP aetheris_jobs Jobs by tenant and state"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE aetheris_jobs gauge\naetheris_jobs{state=\"queued\"} 3\n"),
            "{t}"
        );
    }
}
