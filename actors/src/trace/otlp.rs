//! A finished span as OTLP carries it, and the OTLP/HTTP JSON encoding of a batch
//! (`ExportTraceServiceRequest`, `Content-Type: application/json`): field names in
//! lowerCamelCase, trace and span ids as lowercase hex, 64-bit integers and nanosecond
//! times as decimal strings, enums as their numbers — the OTLP specification's JSON
//! mapping, which the OpenTelemetry Collector, Jaeger and Tempo accept on `/v1/traces`.

use super::{SpanContext, SpanId, TraceId};
use std::io::Write;

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
    /// Writes the OTLP `AnyValue` of this value.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            AttrValue::Str(s) => {
                out.extend_from_slice(b"{\"stringValue\":");
                string(out, s);
            }
            AttrValue::Int(i) => {
                let _ = write!(out, "{{\"intValue\":\"{i}\"");
            }
            AttrValue::Bool(b) => {
                let _ = write!(out, "{{\"boolValue\":{b}");
            }
            AttrValue::Double(d) if d.is_finite() => {
                out.extend_from_slice(b"{\"doubleValue\":");
                let _ = serde_json::to_writer(&mut *out, d);
            }
            AttrValue::Double(d) => {
                out.extend_from_slice(b"{\"stringValue\":");
                string(out, &d.to_string());
            }
        }
        out.push(b'}');
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

// The encoding is written straight into the body (no `serde_json::Value` tree): it runs
// on the exporter's thread for every span, and a tree of maps costs several times more.

/// A JSON string, escaped.
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn attributes(out: &mut Vec<u8>, attrs: &[(String, AttrValue)]) {
    out.push(b'[');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        string(out, k);
        out.extend_from_slice(b",\"value\":");
        v.write(out);
        out.push(b'}');
    }
    out.push(b']');
}

fn span(out: &mut Vec<u8>, s: &FinishedSpan) {
    let _ = write!(
        out,
        "{{\"traceId\":\"{}\",\"spanId\":\"{}\",",
        s.trace_id, s.span_id
    );
    if let Some(parent) = s.parent {
        let _ = write!(out, "\"parentSpanId\":\"{parent}\",");
    }
    out.extend_from_slice(b"\"name\":");
    string(out, &s.name);
    let _ = write!(
        out,
        ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":",
        s.kind as i32,
        s.start_unix_ns,
        s.end_unix_ns.max(s.start_unix_ns)
    );
    attributes(out, &s.attributes);
    if !s.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (i, l) in s.links.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(
                out,
                "{{\"traceId\":\"{}\",\"spanId\":\"{}\"}}",
                l.trace_id, l.span_id
            );
        }
        out.push(b']');
    }
    let _ = write!(out, ",\"status\":{{\"code\":{}", s.status as i32);
    if let Some(message) = &s.status_message {
        out.extend_from_slice(b",\"message\":");
        string(out, message);
    }
    out.extend_from_slice(b"}}");
}

/// The body of one `POST /v1/traces`: `spans` of the process `resource` describes.
pub fn encode(resource: &[(String, AttrValue)], spans: &[FinishedSpan]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + spans.len() * 768);
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    attributes(&mut out, resource);
    out.extend_from_slice(b"},\"scopeSpans\":[{\"scope\":{\"name\":\"aetheris\",\"version\":");
    string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        span(&mut out, s);
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn bare(name: &str, attributes: Attributes) -> FinishedSpan {
        FinishedSpan {
            trace_id: TraceId::parse("0190a0b1c2d37e4f8a9b0c1d2e3f4a5b").unwrap(),
            span_id: SpanId::parse("8a9b0c1d2e3f4a5b").unwrap(),
            parent: None,
            name: name.into(),
            kind: SpanKind::Client,
            start_unix_ns: 5,
            end_unix_ns: 3,
            attributes,
            links: vec![],
            status: StatusCode::Unset,
            status_message: None,
        }
    }

    #[test]
    fn text_is_escaped_numbers_keep_their_type_and_absent_fields_stay_absent() {
        let nasty = "a \"quoted\"\nline \\ \u{1} é 🚀";
        let spans = [
            bare(
                nasty,
                vec![
                    (nasty.into(), AttrValue::Str(nasty.into())),
                    ("neg".into(), AttrValue::Int(-7)),
                    ("d".into(), AttrValue::Double(0.25)),
                    ("nan".into(), AttrValue::Double(f64::NAN)),
                    ("off".into(), AttrValue::Bool(false)),
                ],
            ),
            bare("second", vec![]),
        ];
        let body: Value = serde_json::from_slice(&encode(&[], &spans)).expect("valid JSON");
        let out = &body["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(out.as_array().unwrap().len(), 2);
        let span = &out[0];
        assert_eq!(span["name"], nasty);
        assert_eq!(span["kind"], 3);
        assert_eq!(
            span["attributes"][0],
            json!({"key": nasty, "value": {"stringValue": nasty}})
        );
        assert_eq!(span["attributes"][1]["value"], json!({"intValue": "-7"}));
        assert_eq!(span["attributes"][2]["value"], json!({"doubleValue": 0.25}));
        assert_eq!(
            span["attributes"][3]["value"],
            json!({"stringValue": "NaN"})
        );
        assert_eq!(span["attributes"][4]["value"], json!({"boolValue": false}));
        assert_eq!(
            span["endTimeUnixNano"], "5",
            "an end never before the start"
        );
        for absent in ["parentSpanId", "links"] {
            assert!(span.get(absent).is_none(), "{absent}: {span}");
        }
        assert_eq!(span["status"], json!({"code": 0}));
        assert_eq!(out[1]["attributes"], json!([]));
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"],
            json!([])
        );
        let empty: Value = serde_json::from_slice(&encode(&[], &[])).unwrap();
        assert_eq!(
            empty["resourceSpans"][0]["scopeSpans"][0]["spans"],
            json!([])
        );
    }

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
