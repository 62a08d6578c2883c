//! A finished span as OTLP carries it, and the OTLP/HTTP JSON encoding of a batch
//! (`ExportTraceServiceRequest`, `Content-Type: application/json`): field names in
//! lowerCamelCase, trace and span ids as lowercase hex, 64-bit integers and nanosecond
//! times as decimal strings, enums as their numbers — the OTLP specification's JSON
//! mapping, which the OpenTelemetry Collector, Jaeger and Tempo accept on `/v1/traces`.

use super::{SpanContext, SpanId, TraceId};
use serde_json::{json, Value};

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// The kind an `otel.kind` field names (`server`, `client`, …); others are internal.
    pub fn parse(text: &str) -> SpanKind {
        match text.to_ascii_lowercase().as_str() {
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            _ => SpanKind::Internal,
        }
    }
}

/// OTLP `Status.StatusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl AttrValue {
    fn json(&self) -> Value {
        match self {
            AttrValue::Str(s) => json!({"stringValue": s}),
            AttrValue::Int(i) => json!({"intValue": i.to_string()}),
            AttrValue::Bool(b) => json!({"boolValue": b}),
            AttrValue::Double(d) if d.is_finite() => json!({"doubleValue": d}),
            AttrValue::Double(d) => json!({"stringValue": d.to_string()}),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

pub type Attributes = Vec<(String, AttrValue)>;

/// One closed span, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    pub links: Vec<SpanContext>,
    pub status: StatusCode,
    pub status_message: Option<String>,
}

impl FinishedSpan {
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

fn attributes(attrs: &[(String, AttrValue)]) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v.json()}))
            .collect(),
    )
}

fn span(s: &FinishedSpan) -> Value {
    let mut out = json!({
        "traceId": s.trace_id.to_string(),
        "spanId": s.span_id.to_string(),
        "name": s.name,
        "kind": s.kind as i32,
        "startTimeUnixNano": s.start_unix_ns.to_string(),
        "endTimeUnixNano": s.end_unix_ns.max(s.start_unix_ns).to_string(),
        "attributes": attributes(&s.attributes),
        "status": {"code": s.status as i32},
    });
    if let Some(parent) = s.parent {
        out["parentSpanId"] = json!(parent.to_string());
    }
    if let Some(message) = &s.status_message {
        out["status"]["message"] = json!(message);
    }
    if !s.links.is_empty() {
        out["links"] = Value::Array(
            s.links
                .iter()
                .map(
                    |l| json!({"traceId": l.trace_id.to_string(), "spanId": l.span_id.to_string()}),
                )
                .collect(),
        );
    }
    out
}

/// The body of one `POST /v1/traces`: `spans` of the process `resource` describes.
pub fn encode(resource: &[(String, AttrValue)], spans: &[FinishedSpan]) -> Vec<u8> {
    let request = json!({"resourceSpans": [{
        "resource": {"attributes": attributes(resource)},
        "scopeSpans": [{
            "scope": {"name": "aetheris", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans.iter().map(span).collect::<Vec<_>>(),
        }],
    }]});
    serde_json::to_vec(&request).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_encoded_with_the_otlp_json_mapping() {
        let trace_id = TraceId::parse("0190a0b1c2d37e4f8a9b0c1d2e3f4a5b").unwrap();
        let s = FinishedSpan {
            trace_id,
            span_id: SpanId::parse("00f067aa0ba902b7").unwrap(),
            parent: Some(SpanId::parse("8a9b0c1d2e3f4a5b").unwrap()),
            name: "execute_tool http".into(),
            kind: SpanKind::Internal,
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_500_000_000,
            attributes: vec![
                ("aetheris.attempt".into(), AttrValue::Int(2)),
                ("gen_ai.tool.name".into(), AttrValue::Str("http".into())),
                ("ok".into(), AttrValue::Bool(true)),
            ],
            links: vec![SpanContext {
                trace_id: TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                span_id: SpanId::parse("00f067aa0ba902b7").unwrap(),
                sampled: true,
            }],
            status: StatusCode::Error,
            status_message: Some("boom".into()),
        };
        let body: Value = serde_json::from_slice(&encode(
            &[("service.name".into(), AttrValue::Str("aetheris".into()))],
            &[s],
        ))
        .unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "aetheris"}})
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0190a0b1c2d37e4f8a9b0c1d2e3f4a5b");
        assert_eq!(span["spanId"], "00f067aa0ba902b7");
        assert_eq!(span["parentSpanId"], "8a9b0c1d2e3f4a5b");
        assert_eq!(span["kind"], 1);
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(span["endTimeUnixNano"], "1700000000500000000");
        assert_eq!(
            span["attributes"][0],
            json!({"key": "aetheris.attempt", "value": {"intValue": "2"}})
        );
        assert_eq!(span["attributes"][2]["value"], json!({"boolValue": true}));
        assert_eq!(
            span["links"][0]["traceId"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span["status"], json!({"code": 2, "message": "boom"}));
    }
}
