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
pub const ACTORS_ALIVE: &str = "aetheris_actors_alive";
pub const ACTOR_RESTARTS: &str = "aetheris_actor_restarts_total";
pub const ACTOR_PANICS: &str = "aetheris_actor_panics_total";
pub const COMMAND_CHECKS: &str = "aetheris_command_checks_total";
pub const LEASE_GRANTS: &str = "aetheris_lease_grants_total";
pub const LEASE_LOSSES: &str = "aetheris_lease_losses_total";
pub const HEARTBEAT_DURATION: &str = "aetheris_heartbeat_seconds";
pub const SNAPSHOTS_WRITTEN: &str = "aetheris_snapshots_written_total";
pub const REPLAY_EVENTS: &str = "aetheris_replay_events_total";
pub const REPLAY_DURATION: &str = "aetheris_replay_duration_seconds";
pub const STORE_APPEND_DURATION: &str = "aetheris_store_append_seconds";
pub const RATE_LIMIT_REJECTIONS: &str = "aetheris_rate_limit_rejections_total";
pub const RATE_LIMIT_WAITS: &str = "aetheris_rate_limit_waits_total";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "aetheris_rate_limit_wait_seconds_total";
pub const LIVE_PROCESSES: &str = "aetheris_live_processes";
/// OpenTelemetry GenAI `gen_ai.client.token.usage`, as a Prometheus counter of tokens.
pub const GEN_AI_TOKEN_USAGE: &str = "aetheris_gen_ai_client_token_usage_total";
/// OpenTelemetry GenAI `gen_ai.client.operation.duration`.
pub const GEN_AI_OPERATION_DURATION: &str = "aetheris_gen_ai_client_operation_duration_seconds";

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

const fn counter(name: &'static str, help: &'static str) -> Definition {
    Definition {
        name,
        kind: Kind::Counter,
        unit: Unit::Count,
        help,
        buckets: &[],
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Definition {
    Definition {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        buckets: &[],
    }
}

const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Definition {
    Definition {
        name,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help,
        buckets,
    }
}

/// Every metric: the one place its kind, unit, help text and buckets are written.
pub const DEFINITIONS: &[Definition] = &[
    gauge(JOBS, Unit::Count, "Jobs by tenant and state, as stored (computed at scrape time by the gateway)."),
    counter(JOBS_SUBMITTED, "Jobs accepted by the gateway (created, not repeats), per tenant."),
    histogram(STEP_DURATION, "Tool step latency, from the call to its result, per tool.", TOOL_BUCKETS),
    counter(TOOL_CALLS, "Tool invocations by tool and outcome (succeeded, retryable_error, permanent_error, outcome_unknown)."),
    counter(LEDGER_OUTCOMES, "Step outcomes recorded in the ledger (succeeded, failed, outcome_unknown)."),
    gauge(ACTORS_ALIVE, Unit::Count, "Live actors per kind (registry, lease_manager, job)."),
    counter(ACTOR_RESTARTS, "Crashed actors restarted from storage (or given up on), per kind and reason."),
    counter(ACTOR_PANICS, "Panics caught, per kind and reason."),
    counter(COMMAND_CHECKS, "Reads of a running job's stored commands prompted by new commands (a flood of commands for one job is coalesced into a few reads)."),
    counter(LEASE_GRANTS, "Leases granted to this worker."),
    counter(LEASE_LOSSES, "Leases this worker lost, by reason (heartbeat: not renewed in time; fenced: an append was refused)."),
    histogram(HEARTBEAT_DURATION, "Round trip of one lease heartbeat (every held lease renewed in one store call).", STORE_BUCKETS),
    counter(SNAPSHOTS_WRITTEN, "Job snapshots written."),
    counter(REPLAY_EVENTS, "Events replayed after the snapshot when job actors load."),
    histogram(REPLAY_DURATION, "Time to load a job actor's state from storage.", REPLAY_BUCKETS),
    histogram(STORE_APPEND_DURATION, "Latency of fenced appends to the store.", STORE_BUCKETS),
    counter(RATE_LIMIT_REJECTIONS, "Requests refused by a rate limit, per tenant and kind."),
    counter(RATE_LIMIT_WAITS, "Calls that waited for a rate limit, per tenant and kind."),
    // A gauge only because the facade's counters count whole units; it only ever grows.
    gauge(RATE_LIMIT_WAIT_SECONDS, Unit::Seconds, "Time calls waited for a rate limit, per tenant and kind (only grows: use rate())."),
    gauge(LIVE_PROCESSES, Unit::Count, "Live processes of this kind; this one takes one over it of each global limit."),
    counter(GEN_AI_TOKEN_USAGE, "LLM tokens used (gen_ai.client.token.usage), per tenant, provider (gen_ai_provider_name), model (gen_ai_request_model) and gen_ai_token_type (input, output)."),
    histogram(GEN_AI_OPERATION_DURATION, "LLM calls' duration (gen_ai.client.operation.duration), per tenant, provider, model and gen_ai_operation_name.", MODEL_BUCKETS),
];

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

/// A gauge computed at scrape time: (name, labels, value).
pub type ScrapeGauge = (&'static str, Vec<(&'static str, String)>, f64);

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

    /// Everything, plus `extra` gauges computed at scrape time (e.g. jobs by state).
    pub fn render(&self, extra: &[ScrapeGauge]) -> String {
        self.render_for(extra, None)
    }

    /// What `tenant` may see (G6): no series labelled with another tenant; `None` renders
    /// everything (the deployment's operators).
    pub fn render_for(&self, extra: &[ScrapeGauge], tenant: Option<&str>) -> String {
        let mut text = self.handle.render();
        text.push_str(&render_gauges(extra));
        match tenant {
            None => text,
            Some(t) => visible_to(&text, t),
        }
    }
}

/// `gauges` in the text format, with the help texts of their definitions.
pub fn render_gauges(gauges: &[ScrapeGauge]) -> String {
    let mut out = String::new();
    let mut last = "";
    for (name, labels, value) in gauges {
        if *name != last {
            let help = definition(name).map_or("", |d| d.help);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            last = name;
        }
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
