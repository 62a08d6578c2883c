//! A fake LLM provider for the tests: a real HTTP server on loopback speaking OpenAI Chat
//! Completions (`POST /v1/chat/completions`) and Anthropic Messages (`POST /v1/messages`)
//! exactly — request shapes checked (a request the real API would refuse is answered 400
//! with that protocol's error body and recorded as a violation), answers, tool calls,
//! usage and error bodies in each protocol's own form.
//!
//! A test scripts it with a function from the request to a [`Reply`]: an answer (text
//! and/or tool calls, with usage), an HTTP error (429 with `Retry-After`, 5xx, 401…),
//! malformed JSON, an answer with no choices, or a hang. Every request is recorded with the
//! SHA-256 of its body (`digest`), its `Idempotency-Key`, its turn (the number of assistant
//! messages it carries) and how often that exact body was seen before, so a crash test can
//! check "each distinct request exactly once, except one re-ask with the same key".

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

impl Protocol {
    pub fn kind(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::Anthropic => "anthropic",
        }
    }
}

/// One tool call of a scripted answer.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub args: Value,
}

pub fn call(name: &str, args: Value) -> Call {
    Call {
        name: name.into(),
        args,
    }
}

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub enum Reply {
    Answer {
        text: String,
        calls: Vec<Call>,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// An HTTP error in the protocol's error form, with an optional `Retry-After`.
    Status(u16, Option<&'static str>),
    /// A 200 whose body is not JSON.
    Malformed,
    /// A 200 with no choices (OpenAI) or no content (Anthropic).
    Empty,
    /// No answer for this long (a client times out first).
    Hang(Duration),
}

pub fn answer(text: &str) -> Reply {
    Reply::Answer {
        text: text.into(),
        calls: Vec::new(),
        input_tokens: 100,
        output_tokens: 20,
    }
}

pub fn tools(calls: Vec<Call>) -> Reply {
    Reply::Answer {
        text: String::new(),
        calls,
        input_tokens: 100,
        output_tokens: 20,
    }
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub protocol: Protocol,
    pub model: String,
    /// Assistant messages in the request: which turn it asks for (0 = the first).
    pub turn: usize,
    /// Hex SHA-256 of the body.
    pub digest: String,
    pub idempotency_key: Option<String>,
    /// The API key it carried (`Authorization: Bearer …` or `x-api-key`).
    pub api_key: Option<String>,
    /// Times this exact body was seen before this one.
    pub repeat: usize,
    pub body: Value,
}

impl Seen {
    /// The tool names offered.
    pub fn tool_names(&self) -> Vec<String> {
        let t = self.body["tools"].as_array().cloned().unwrap_or_default();
        t.iter()
            .filter_map(|t| {
                t["function"]["name"]
                    .as_str()
                    .or(t["name"].as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// The texts of the tool results the request carries, in order.
    pub fn tool_results(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.body["messages"].as_array().into_iter().flatten() {
            if m["role"] == "tool" {
                out.push(m["content"].as_str().unwrap_or("").to_string());
            }
            for b in m["content"].as_array().into_iter().flatten() {
                if b["type"] == "tool_result" {
                    out.push(b["content"].as_str().unwrap_or("").to_string());
                }
            }
        }
        out
    }
}

pub type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
pub struct Record {
    pub seen: Mutex<Vec<Seen>>,
    /// Requests the real API would refuse, with why.
    pub violations: Mutex<Vec<String>>,
    counts: Mutex<HashMap<String, usize>>,
}

pub struct FakeLlm {
    pub url: String,
    pub record: Arc<Record>,
    _server: crate::support::LoopbackServer,
}

struct Shared {
    record: Arc<Record>,
    script: Script,
}

impl FakeLlm {
    pub fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeLlm {
        let record = Arc::new(Record::default());
        let shared = web::Data::new(Shared {
            record: record.clone(),
            script: Arc::new(script),
        });
        let server = crate::support::LoopbackServer::start("fake llm", move || {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(shared.clone())
                    .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                    .route("/v1/chat/completions", web::post().to(openai))
                    .route("/v1/messages", web::post().to(anthropic))
            })
            .workers(2)
            .disable_signals()
            .bind("127.0.0.1:0")?;
            Ok((server.addrs()[0], server.run()))
        });
        FakeLlm {
            url: server.url.clone(),
            record,
            _server: server,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.record.seen.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.record.violations.lock().unwrap().clone()
    }
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(aetheris_runtime::chain::payload_digest(bytes))
}

/// Records the request and asks the script; `Err` is a refusal of a malformed request.
fn take(
    protocol: Protocol,
    req: &HttpRequest,
    bytes: &[u8],
    shared: &Shared,
    check: fn(&HttpRequest, &Value) -> Result<(), String>,
) -> Result<(Seen, Reply), String> {
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    if let Err(why) = check(req, &body) {
        shared
            .record
            .violations
            .lock()
            .unwrap()
            .push(format!("{protocol:?}: {why}: {body}"));
        return Err(why);
    }
    let d = digest(bytes);
    let repeat = {
        let mut counts = shared.record.counts.lock().unwrap();
        let n = counts.entry(d.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let turn = body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "assistant").count())
        .unwrap_or(0);
    let seen = Seen {
        protocol,
        model: body["model"].as_str().unwrap_or("").to_string(),
        turn,
        digest: d,
        idempotency_key: header(req, "idempotency-key"),
        api_key: header(req, "authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
            .or_else(|| header(req, "x-api-key")),
        repeat,
        body,
    };
    shared.record.seen.lock().unwrap().push(seen.clone());
    let reply = (shared.script)(&seen);
    Ok((seen, reply))
}

fn check_openai(_req: &HttpRequest, b: &Value) -> Result<(), String> {
    if !b["model"].is_string() {
        return Err("model must be a string".into());
    }
    if !b["max_tokens"].is_u64() {
        return Err("max_tokens must be an integer".into());
    }
    let msgs = b["messages"]
        .as_array()
        .ok_or("messages must be an array")?;
    if msgs.is_empty() {
        return Err("messages must not be empty".into());
    }
    let mut asked: Vec<String> = Vec::new();
    for m in msgs {
        match m["role"].as_str() {
            Some("system" | "user") if m["content"].is_string() => {}
            Some("assistant") => {
                if !(m["content"].is_string() || m["content"].is_null()) {
                    return Err("assistant content must be a string or null".into());
                }
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let ok = c["id"].is_string()
                        && c["type"] == "function"
                        && c["function"]["name"].is_string()
                        && c["function"]["arguments"].is_string();
                    if !ok {
                        return Err(format!("bad tool call {c}"));
                    }
                    asked.push(c["id"].as_str().unwrap_or("").to_string());
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or("tool message without tool_call_id")?;
                if !asked.iter().any(|a| a == id) || !m["content"].is_string() {
                    return Err(format!("tool message answers no tool call: {m}"));
                }
            }
            _ => return Err(format!("bad message {m}")),
        }
    }
    for t in b["tools"].as_array().into_iter().flatten() {
        if t["type"] != "function"
            || !t["function"]["name"].is_string()
            || !t["function"]["parameters"].is_object()
        {
            return Err(format!("bad tool {t}"));
        }
    }
    Ok(())
}

fn check_anthropic(req: &HttpRequest, b: &Value) -> Result<(), String> {
    if header(req, "anthropic-version").is_none() {
        return Err("missing anthropic-version header".into());
    }
    if !b["model"].is_string() || !b["max_tokens"].is_u64() {
        return Err("model and max_tokens are required".into());
    }
    if !(b["system"].is_null() || b["system"].is_string()) {
        return Err("system must be a string".into());
    }
    let msgs = b["messages"]
        .as_array()
        .ok_or("messages must be an array")?;
    let mut expect = "user";
    let mut uses: Vec<String> = Vec::new();
    for m in msgs {
        if m["role"] != expect {
            return Err(format!(
                "roles must alternate starting with user; got {}",
                m["role"]
            ));
        }
        expect = if expect == "user" {
            "assistant"
        } else {
            "user"
        };
        let blocks = m["content"].as_array().ok_or("content must be blocks")?;
        if blocks.is_empty() {
            return Err("empty content".into());
        }
        for bl in blocks {
            match bl["type"].as_str() {
                Some("text") if bl["text"].is_string() => {}
                Some("tool_use") if m["role"] == "assistant" && bl["input"].is_object() => {
                    uses.push(bl["id"].as_str().unwrap_or("").to_string());
                }
                Some("tool_result") if m["role"] == "user" => {
                    let id = bl["tool_use_id"].as_str().unwrap_or("");
                    if !uses.iter().any(|u| u == id) {
                        return Err(format!("tool_result answers no tool_use: {bl}"));
                    }
                }
                _ => return Err(format!("bad block {bl}")),
            }
        }
    }
    if msgs.is_empty() {
        return Err("messages must not be empty".into());
    }
    for t in b["tools"].as_array().into_iter().flatten() {
        if !t["name"].is_string() || !t["input_schema"].is_object() {
            return Err(format!("bad tool {t}"));
        }
    }
    Ok(())
}

fn error(
    protocol: Protocol,
    status: u16,
    retry_after: Option<&str>,
    message: &str,
) -> HttpResponse {
    let body = match protocol {
        Protocol::OpenAi => {
            json!({"error": {"message": message, "type": "fake_error", "code": status}})
        }
        Protocol::Anthropic => {
            json!({"type": "error", "error": {"type": "fake_error", "message": message}})
        }
    };
    let mut r = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    );
    if let Some(ra) = retry_after {
        r.insert_header(("retry-after", ra));
    }
    r.json(body)
}

async fn reply_to(protocol: Protocol, seen: &Seen, reply: Reply) -> HttpResponse {
    match reply {
        Reply::Status(s, retry_after) => error(protocol, s, retry_after, "scripted failure"),
        Reply::Malformed => HttpResponse::Ok()
            .content_type("application/json")
            .body("{\"choices\": [{\"message\": "),
        Reply::Hang(d) => {
            actix_rt::time::sleep(d).await;
            error(protocol, 504, None, "hung")
        }
        Reply::Empty => match protocol {
            Protocol::OpenAi => HttpResponse::Ok().json(json!({"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}})),
            Protocol::Anthropic => HttpResponse::Ok().json(json!({"id": "x", "type": "message", "role": "assistant", "content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 0}})),
        },
        Reply::Answer {
            text,
            calls,
            input_tokens,
            output_tokens,
        } => match protocol {
            Protocol::OpenAi => {
                let tool_calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| json!({"id": format!("call_{}_{i}", seen.turn), "type": "function",
                        "function": {"name": c.name, "arguments": match &c.args {
                            Value::String(raw) => raw.clone(), other => other.to_string() }}}))
                    .collect();
                let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !tool_calls.is_empty() {
                    message["tool_calls"] = json!(tool_calls);
                }
                HttpResponse::Ok().json(json!({
                    "id": format!("chatcmpl-{}", &seen.digest[..8]), "object": "chat.completion",
                    "model": seen.model,
                    "choices": [{"index": 0, "message": message,
                        "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
                    "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                              "total_tokens": input_tokens + output_tokens}}))
            }
            Protocol::Anthropic => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for (i, c) in calls.iter().enumerate() {
                    content.push(json!({"type": "tool_use", "id": format!("toolu_{}_{i}", seen.turn),
                        "name": c.name, "input": c.args}));
                }
                HttpResponse::Ok().json(json!({
                    "id": format!("msg_{}", &seen.digest[..8]), "type": "message", "role": "assistant",
                    "model": seen.model, "content": content,
                    "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}))
            }
        },
    }
}

async fn openai(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match take(Protocol::OpenAi, &req, &body, &shared, check_openai) {
        Ok((seen, reply)) => reply_to(Protocol::OpenAi, &seen, reply).await,
        Err(why) => error(Protocol::OpenAi, 400, None, &why),
    }
}

async fn anthropic(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match take(Protocol::Anthropic, &req, &body, &shared, check_anthropic) {
        Ok((seen, reply)) => reply_to(Protocol::Anthropic, &seen, reply).await,
        Err(why) => error(Protocol::Anthropic, 400, None, &why),
    }
}
