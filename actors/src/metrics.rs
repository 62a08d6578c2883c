//! A small Prometheus registry: labelled counters, gauges and histograms rendered in the
//! text exposition format. Hand-rolled on purpose: it is ~150 lines against a dependency
//! tree (metrics + exporter) that DESIGN §8 says needs trimming anyway. Invariant: labels
//! never carry job ids (cardinality stays bounded by tenants, tools and kinds).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Seconds buckets for latency histograms.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

/// A gauge computed at scrape time: (name, labels, value).
pub type ScrapeGauge = (&'static str, Vec<(&'static str, String)>, f64);

#[derive(Default)]
struct Histogram {
    counts: [u64; 14],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), f64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn help(name: &str) -> &'static str {
    match name {
        "aetheris_jobs" => "Jobs by tenant and state.",
        "aetheris_jobs_submitted_total" => "Jobs accepted by the gateway (created, not repeats).",
        "aetheris_step_duration_seconds" => "Tool step latency from started to recorded result.",
        "aetheris_tool_calls_total" => "Tool invocations by tool and outcome.",
        "aetheris_ledger_outcomes_total" => "Ledger outcomes recorded, incl. outcome_unknown.",
        "aetheris_actors_alive" => "Live actors per kind.",
        "aetheris_actor_restarts_total" => "Actor restarts from storage per kind and reason.",
        "aetheris_actor_panics_total" => "Panics caught per kind and reason.",
        "aetheris_lease_grants_total" => "Leases granted to this worker.",
        "aetheris_lease_losses_total" => "Leases lost by this worker (fenced or expired).",
        "aetheris_snapshots_written_total" => "Job snapshots written.",
        "aetheris_replay_events_total" => {
            "Events replayed after the snapshot when job actors load."
        }
        "aetheris_replay_duration_seconds" => "Time to load a job actor's state from storage.",
        "aetheris_store_append_seconds" => "Latency of fenced appends to the store.",
        "aetheris_rate_limit_rejections_total" => "Requests refused by a rate limit.",
        "aetheris_rate_limit_waits_total" => "Calls that waited for a rate limit.",
        "aetheris_rate_limit_wait_seconds_total" => "Time calls waited for a rate limit.",
        "aetheris_live_processes" => {
            "Live processes of this kind; this one takes one over it of each global limit."
        }
        _ => "Aetheris metric.",
    }
}

impl Metrics {
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        self.add(name, l, 1.0)
    }

    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        if let Ok(mut g) = self.inner.lock() {
            *g.counters.entry((name, labels(l))).or_default() += v;
        }
    }

    pub fn gauge_add(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        if let Ok(mut g) = self.inner.lock() {
            *g.gauges.entry((name, labels(l))).or_default() += v;
        }
    }

    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], seconds: f64) {
        if let Ok(mut g) = self.inner.lock() {
            let h = g.histograms.entry((name, labels(l))).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    /// Current value of a counter (for tests and the bench).
    pub fn counter(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        self.inner
            .lock()
            .ok()
            .and_then(|g| g.counters.get(&(name, labels(l))).copied())
            .unwrap_or(0.0)
    }

    /// Renders everything, plus `extra` gauges computed at scrape time (e.g. jobs by state).
    pub fn render(&self, extra: &[ScrapeGauge]) -> String {
        self.render_for(extra, None)
    }

    /// Renders only what `tenant` may see (G6): every series labelled with another
    /// tenant is left out; `None` renders everything (the deployment's operators).
    pub fn render_for(&self, extra: &[ScrapeGauge], tenant: Option<&str>) -> String {
        let visible = |l: &Labels| match tenant {
            None => true,
            Some(t) => l.iter().all(|(k, v)| *k != "tenant" || v == t),
        };
        let mut out = String::new();
        let Ok(g) = self.inner.lock() else { return out };
        let mut last = "";
        let fmt_labels = |l: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = l
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        let header = |out: &mut String, name: &'static str, kind: &str, last: &mut &'static str| {
            if *last != name {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", help(name));
                *last = name;
            }
        };
        for ((name, l), v) in g.counters.iter().filter(|((_, l), _)| visible(l)) {
            header(&mut out, name, "counter", &mut last);
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
        }
        for ((name, l), v) in g.gauges.iter().filter(|((_, l), _)| visible(l)) {
            header(&mut out, name, "gauge", &mut last);
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
        }
        for (name, l, v) in extra.iter().filter(|(_, l, _)| visible(l)) {
            header(&mut out, name, "gauge", &mut last);
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
        }
        for ((name, l), h) in g.histograms.iter().filter(|((_, l), _)| visible(l)) {
            header(&mut out, name, "histogram", &mut last);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(l, Some(("le", b.to_string()))),
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(l, Some(("le", "+Inf".into()))),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc(
            "aetheris_actor_restarts_total",
            &[("kind", "job"), ("reason", "panic")],
        );
        m.observe("aetheris_step_duration_seconds", &[("tool", "echo")], 0.002);
        let t = m.render(&[("aetheris_jobs", vec![("state", "queued".into())], 3.0)]);
        assert!(
            t.contains("aetheris_actor_restarts_total{kind=\"job\",reason=\"panic\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("aetheris_step_duration_seconds_bucket{tool=\"echo\",le=\"0.0025\"} 1"),
            "{t}"
        );
        assert!(t.contains("aetheris_jobs{state=\"queued\"} 3"), "{t}");
    }

    #[test]
    fn a_tenant_sees_only_its_own_series() {
        let m = Metrics::default();
        m.inc("aetheris_jobs_submitted_total", &[("tenant", "acme")]);
        m.inc("aetheris_jobs_submitted_total", &[("tenant", "globex")]);
        m.inc("aetheris_lease_grants_total", &[]);
        let extra = [
            ("aetheris_jobs", vec![("tenant", "acme".into())], 1.0),
            ("aetheris_jobs", vec![("tenant", "globex".into())], 2.0),
        ];
        let t = m.render_for(&extra, Some("acme"));
        assert!(!t.contains("globex"), "{t}");
        assert!(t.contains("aetheris_jobs{tenant=\"acme\"} 1"), "{t}");
        assert!(t.contains("aetheris_lease_grants_total 1"), "{t}");
        assert!(m.render(&extra).contains("globex"));
    }
}
