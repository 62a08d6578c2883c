//! OpenAI Chat Completions: `POST {base_url}/v1/chat/completions` with `messages`,
//! `tools` (`{"type": "function", "function": {name, description, parameters}}`),
//! `max_tokens` and `temperature`; the answer's `choices[0].message` (`content`,
//! `tool_calls[].function.{name, arguments}`) and `usage` (`prompt_tokens`,
//! `completion_tokens`). Sends `Authorization: Bearer KEY` when the provider has a key and
//! `Idempotency-Key` always (a re-asked call after a crash carries the same one).

use super::{Call, ModelError};
use aetheris_runtime::agent::{Message, ModelAnswer, ModelRequest, Role, ToolCallRequest};
use serde::Deserialize;
use serde_json::{json, Value};

/// The request body for `req`.
pub fn body(req: &ModelRequest) -> Value {
    let messages: Vec<Value> = req.messages.iter().map(message).collect();
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
    }
    body
}

fn message(m: &Message) -> Value {
    match m.role {
        Role::System | Role::User => json!({"role": m.role.as_str(), "content": m.content}),
        Role::Assistant => {
            let mut v = json!({"role": "assistant",
                "content": if m.content.is_empty() { Value::Null } else { json!(m.content) }});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
            }
            v
        }
        Role::Tool => json!({"role": "tool",
            "tool_call_id": m.tool_call_id.clone().unwrap_or_default(),
            "content": m.content}),
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Deserialize)]
struct WireCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Reads a successful answer (`request_bytes`: the body's size, for a usage estimate when
/// the provider reports none).
pub fn parse(bytes: &[u8], request_bytes: usize) -> Result<ModelAnswer, ModelError> {
    let c: Completion = serde_json::from_slice(bytes)
        .map_err(|e| ModelError::Retryable(format!("the provider answered malformed JSON: {e}")))?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::Retryable("the model answered no choices".into()))?;
    let content = choice.message.content.unwrap_or_default();
    let tool_calls: Vec<ToolCallRequest> = choice
        .message
        .tool_calls
        .into_iter()
        .map(|w| ToolCallRequest {
            id: w.id,
            name: w.function.name,
            arguments: w.function.arguments,
        })
        .collect();
    Ok(super::assistant_answer(
        content,
        tool_calls,
        c.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
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
        "{}/v1/chat/completions",
        call.provider.base_url.trim_end_matches('/')
    );
    let (mut r, request_bytes) = super::json_post(http, call, url, &body(req))?;
    if let Some(key) = &call.api_key {
        r = r.bearer_auth(key);
    }
    let bytes = super::send(r, call.timeout).await?;
    parse(&bytes, request_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::agent::ToolDecl;

    #[test]
    fn the_request_has_the_protocols_shape() {
        let req = ModelRequest {
            provider: "p".into(),
            model: "gpt-x".into(),
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCallRequest {
                        id: "call_1".into(),
                        name: "lookup".into(),
                        arguments: "{\"a\":1}".into(),
                    }],
                    tool_call_id: None,
                    is_error: false,
                },
                Message::tool_result("call_1", "{\"ok\":true}", false),
            ],
            tools: vec![ToolDecl {
                name: "lookup".into(),
                description: "find".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: 50,
            temperature: Some(0.5),
        };
        assert_eq!(
            body(&req),
            json!({"model": "gpt-x", "max_tokens": 50, "temperature": 0.5,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "lookup", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\":true}"}],
                "tools": [{"type": "function", "function": {"name": "lookup",
                    "description": "find", "parameters": {"type": "object"}}}]})
        );
    }

    #[test]
    fn answers_and_faults_are_read() {
        let a = parse(
            br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"refund","arguments":"{\"amount\":3}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#,
            100,
        )
        .unwrap();
        assert_eq!(a.message.tool_calls[0].name, "refund");
        assert_eq!((a.input_tokens, a.output_tokens), (11, 7));
        assert!(
            matches!(parse(b"{not json", 1), Err(ModelError::Retryable(m)) if m.contains("malformed JSON"))
        );
        assert!(
            matches!(parse(br#"{"choices":[]}"#, 1), Err(ModelError::Retryable(m)) if m.contains("no choices"))
        );
        assert_eq!(
            super::super::error_detail(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
    }
}
