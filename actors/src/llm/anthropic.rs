//! Anthropic Messages: `POST {base_url}/v1/messages` with `model`, `max_tokens`, a
//! top-level `system`, `messages` of content blocks (`text`, `tool_use`, `tool_result`)
//! that alternate between `user` and `assistant`, and `tools` (`{name, description,
//! input_schema}`); the answer's `content` blocks and `usage` (`input_tokens`,
//! `output_tokens`). Sends `x-api-key` and `anthropic-version`, and `Idempotency-Key`.
//! Tool results are user turns: consecutive ones (and any consecutive messages of one
//! role) are merged into one message, as the protocol requires.

use super::{Call, ModelError};
use aetheris_runtime::agent::{
    parse_arguments, Message, ModelAnswer, ModelRequest, Role, ToolCallRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The protocol version this adapter speaks.
pub const VERSION: &str = "2023-06-01";

fn blocks(m: &Message) -> Vec<Value> {
    match m.role {
        Role::System | Role::User => vec![json!({"type": "text", "text": m.content})],
        Role::Assistant => {
            let mut out = Vec::new();
            if !m.content.is_empty() {
                out.push(json!({"type": "text", "text": m.content}));
            }
            for c in &m.tool_calls {
                // The protocol's input is an object; arguments another model wrote that
                // do not parse (a replay across providers) travel as one string field.
                let input = match parse_arguments(&c.arguments) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"arguments": c.arguments}),
                };
                out.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
            }
            out
        }
        Role::Tool => {
            let mut b = json!({"type": "tool_result",
                "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                "content": m.content});
            if m.is_error {
                b["is_error"] = json!(true);
            }
            vec![b]
        }
    }
}

/// The request body for `req`.
pub fn body(req: &ModelRequest) -> Value {
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let role = if m.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        match messages.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks(m)),
            _ => messages.push((role, blocks(m))),
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Reads a successful answer.
pub fn parse(bytes: &[u8], request_bytes: usize) -> Result<ModelAnswer, ModelError> {
    let a: Answer = serde_json::from_slice(bytes)
        .map_err(|e| ModelError::Retryable(format!("the provider answered malformed JSON: {e}")))?;
    if a.content.is_empty() {
        return Err(ModelError::Retryable(
            "the model answered no content".into(),
        ));
    }
    let mut text = Vec::new();
    let mut tool_calls = Vec::new();
    for b in a.content {
        match b {
            Block::Text { text: t } => text.push(t),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCallRequest {
                id,
                name,
                arguments: input.to_string(),
            }),
            Block::Other => {}
        }
    }
    Ok(super::assistant_answer(
        text.join(""),
        tool_calls,
        a.usage.map(|u| (u.input_tokens, u.output_tokens)),
        request_bytes,
        bytes.len(),
    ))
}

/// One call.
pub async fn chat(
    http: &reqwest::Client,
    call: &Call<'_>,
    req: &ModelRequest,
) -> Result<ModelAnswer, ModelError> {
    let url = format!(
        "{}/v1/messages",
        call.provider.base_url.trim_end_matches('/')
    );
    let (r, request_bytes) = super::json_post(http, call, url, &body(req))?;
    let mut r = r.header("anthropic-version", VERSION);
    if let Some(key) = &call.api_key {
        r = r.header("x-api-key", key);
    }
    let bytes = super::send(r, call.timeout).await?;
    parse(&bytes, request_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::agent::ToolDecl;

    #[test]
    fn the_request_merges_tool_results_into_one_user_turn() {
        let req = ModelRequest {
            provider: "p".into(),
            model: "claude-x".into(),
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: "Looking.".into(),
                    tool_calls: vec![
                        ToolCallRequest {
                            id: "t1".into(),
                            name: "a".into(),
                            arguments: "{\"x\":1}".into(),
                        },
                        ToolCallRequest {
                            id: "t2".into(),
                            name: "b".into(),
                            arguments: "oops".into(),
                        },
                    ],
                    tool_call_id: None,
                    is_error: false,
                },
                Message::tool_result("t1", "1", false),
                Message::tool_result("t2", "unknown tool", true),
            ],
            tools: vec![ToolDecl {
                name: "a".into(),
                description: "A".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: 64,
            temperature: None,
        };
        assert_eq!(
            body(&req),
            json!({"model": "claude-x", "max_tokens": 64, "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "t1", "name": "a", "input": {"x": 1}},
                        {"type": "tool_use", "id": "t2", "name": "b", "input": {"arguments": "oops"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "1"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": "unknown tool", "is_error": true}]}],
                "tools": [{"name": "a", "description": "A", "input_schema": {"type": "object"}}]})
        );
    }

    #[test]
    fn answers_and_faults_are_read() {
        let a = parse(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Sure."},{"type":"tool_use","id":"toolu_1","name":"refund","input":{"amount":3}}],"stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":5}}"#,
            10,
        )
        .unwrap();
        assert_eq!(a.message.content, "Sure.");
        assert_eq!(a.message.tool_calls[0].arguments, "{\"amount\":3}");
        assert_eq!((a.input_tokens, a.output_tokens), (12, 5));
        assert!(matches!(
            parse(br#"{"content": []}"#, 1),
            Err(ModelError::Retryable(_))
        ));
        assert!(matches!(parse(b"<html>", 1), Err(ModelError::Retryable(_))));
        assert_eq!(
            super::super::error_detail(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
    }
}
