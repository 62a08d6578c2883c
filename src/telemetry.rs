//! The process's `tracing` subscriber, set up once at start by every long-running command
//! (`dev`, `server`, `worker`, and `bench` when asked to export): log lines to stderr
//! through the log filter and, with an OTLP endpoint, the span exporter
//! (`aetheris_actors::trace::export`; docs/operations.md, Tracing).
//!
//! Invariant: the log filter only filters the log, the exporter takes only Aetheris' spans
//! (each through its own per-layer filter), and without an endpoint no span is enabled
//! beyond what the log filter asks, so an unexported span costs a disabled callsite.

use aetheris_actors::trace::export::{self, ExportConfig, ExportHandle};
use aetheris_actors::trace::otlp::AttrValue;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the subscriber: logs through `filter` (checked when resolved; a bad one falls
/// back to `warn`), and spans to `otlp_endpoint` if given, describing this process as
/// `role` (`dev`, `server`, `worker`, `bench`). The handle flushes the spans still queued
/// when dropped: keep it until the command returns.
pub fn init(
    filter: &str,
    otlp_endpoint: Option<&str>,
    role: &str,
) -> Result<Option<ExportHandle>, String> {
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn")));
    let Some(endpoint) = otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(log).try_init();
        return Ok(None);
    };
    export::check_endpoint(endpoint).map_err(|e| format!("--otlp-endpoint: {e}"))?;
    let (layer, handle) = export::start(ExportConfig::new(endpoint, resource(role)))?;
    let spans = layer.with_filter(tracing_subscriber::filter::filter_fn(export::wanted));
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(spans)
        .try_init();
    Ok(Some(handle))
}

/// The OTLP resource of this process (OpenTelemetry semantic conventions): which service,
/// which version, which process; a collector groups and labels spans by it.
fn resource(role: &str) -> Vec<(String, AttrValue)> {
    let text = |k: &str, v: String| (k.to_string(), AttrValue::Str(v));
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    vec![
        text("service.name", "aetheris".into()),
        text("service.version", env!("CARGO_PKG_VERSION").into()),
        text(
            "service.instance.id",
            format!("{host}/{}", std::process::id()),
        ),
        text("host.name", host),
        (
            "process.pid".into(),
            AttrValue::Int(i64::from(std::process::id())),
        ),
        text("aetheris.role", role.into()),
    ]
}
