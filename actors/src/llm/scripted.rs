//! The `scripted` provider: answers offline and deterministically, so an agent runs on a
//! laptop without a model (`aetheris dev` has one named `scripted`; examples/agent.json
//! uses it). Its answer depends only on the request, so a re-asked call gets the same one.
//!
//! - With no script (`base_url` empty): turn k (the number of assistant messages so far)
//!   calls the k-th offered tool, once each in order, with arguments made from the tool's
//!   schema — the user's prompt when it is a JSON object, else each required property
//!   filled in (strings with the prompt); once every tool was called, it answers with what
//!   the tools returned.
//! - With a script file (`base_url` is its path): `{"turns": [{"content": "…",
//!   "tool_calls": [{"name": "…", "arguments": {…}}]}, …]}`, turn k answered by entry k (the
//!   last entry again past the end).

use super::{estimate_tokens, Call, ModelError};
use aetheris_runtime::agent::{
    Message, ModelAnswer, ModelRequest, Role, ToolCallRequest, ToolDecl,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    turns: Vec<Turn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Turn {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// One answer.
pub fn chat(call: &Call<'_>, req: &ModelRequest) -> Result<ModelAnswer, ModelError> {
    let turn = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    let message = match call.provider.base_url.trim() {
        "" => builtin(req, turn),
        path => scripted(path, turn)?,
    };
    let input: usize = req.messages.iter().map(|m| m.size_bytes() as usize).sum();
    let output = message.size_bytes() as usize;
    Ok(ModelAnswer {
        message,
        input_tokens: estimate_tokens(input),
        output_tokens: estimate_tokens(output),
    })
}

fn assistant(content: String, tool_calls: Vec<ToolCallRequest>) -> Message {
    Message {
        role: Role::Assistant,
        content,
        tool_calls,
        tool_call_id: None,
        is_error: false,
    }
}

fn scripted(path: &str, turn: usize) -> Result<Message, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Permanent(format!("scripted provider: reading {path}: {e}")))?;
    let script: Script = serde_json::from_str(&text)
        .map_err(|e| ModelError::Permanent(format!("scripted provider: {path}: {e}")))?;
    let t = script
        .turns
        .get(turn)
        .or(script.turns.last())
        .ok_or_else(|| ModelError::Permanent(format!("scripted provider: {path} has no turns")))?;
    Ok(assistant(
        t.content.clone(),
        t.tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCallRequest {
                id: format!("call_{turn}_{i}"),
                name: c.name.clone(),
                arguments: c.arguments.to_string(),
            })
            .collect(),
    ))
}

fn builtin(req: &ModelRequest, turn: usize) -> Message {
    let prompt = req
        .messages
        .iter()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default();
    if let Some(tool) = req.tools.get(turn) {
        let args = arguments_for(tool, &prompt);
        return assistant(
            format!("Calling {}.", tool.name),
            vec![ToolCallRequest {
                id: format!("call_{turn}_0"),
                name: tool.name.clone(),
                arguments: args.to_string(),
            }],
        );
    }
    let results: Vec<String> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.clone())
        .collect();
    let answer = if results.is_empty() {
        format!("You said: {prompt}")
    } else {
        format!(
            "Done. I called {} tool(s) for \"{prompt}\"; they returned: {}",
            results.len(),
            results.join("; ")
        )
    };
    assistant(answer, Vec::new())
}

/// Arguments for `tool` from its schema: the prompt itself when it is a JSON object, else
/// every required property with a value of its type (strings: the prompt).
fn arguments_for(tool: &ToolDecl, prompt: &str) -> Value {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(prompt) {
        return v;
    }
    let props = tool.parameters.get("properties").and_then(Value::as_object);
    let mut out = Map::new();
    let required = tool
        .parameters
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        let kind = props
            .and_then(|p| p.get(name))
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let v = match kind {
            "integer" | "number" => json!(1),
            "boolean" => json!(true),
            "object" => json!({}),
            "array" => json!([]),
            _ => json!(prompt),
        };
        out.insert(name.to_string(), v);
    }
    if out.is_empty() {
        out.insert("text".into(), json!(prompt));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{LlmProvider, LlmProviderKind};
    use std::time::Duration;

    fn call(p: &LlmProvider) -> Call<'_> {
        Call {
            provider: p,
            api_key: None,
            idempotency_key: "k",
            timeout: Duration::from_secs(1),
        }
    }

    fn provider(base: &str) -> LlmProvider {
        LlmProvider {
            name: "s".into(),
            kind: LlmProviderKind::Scripted,
            base_url: base.into(),
            models: vec![],
            api_key_env: None,
            api_key_file: None,
        }
    }

    #[test]
    fn the_builtin_script_calls_each_tool_once_then_answers() {
        let p = provider("");
        let mut req = ModelRequest {
            provider: "s".into(),
            model: "any".into(),
            messages: vec![Message::text(Role::User, "order A-17")],
            tools: vec![
                ToolDecl {
                    name: "echo".into(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                },
                ToolDecl {
                    name: "lookup".into(),
                    description: String::new(),
                    parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}, "order": {"type": "string"}}, "required": ["order", "n"]}),
                },
            ],
            max_tokens: 10,
            temperature: None,
        };
        let a = chat(&call(&p), &req).unwrap();
        assert_eq!(a.message.tool_calls[0].name, "echo");
        assert_eq!(
            a.message.tool_calls[0].arguments,
            r#"{"text":"order A-17"}"#
        );
        assert_eq!(
            chat(&call(&p), &req).unwrap(),
            a,
            "the same request, the same answer"
        );
        req.messages.push(a.message);
        req.messages.push(Message::tool_result(
            "call_0_0",
            "{\"text\":\"order A-17\"}",
            false,
        ));
        let b = chat(&call(&p), &req).unwrap();
        assert_eq!(
            b.message.tool_calls[0].arguments,
            r#"{"n":1,"order":"order A-17"}"#
        );
        req.messages.push(b.message);
        req.messages
            .push(Message::tool_result("call_1_0", "{\"found\":true}", false));
        let c = chat(&call(&p), &req).unwrap();
        assert!(c.message.tool_calls.is_empty());
        assert!(
            c.message.content.contains("{\"found\":true}"),
            "{}",
            c.message.content
        );
        assert!(c.input_tokens > 0 && c.output_tokens > 0);
    }

    #[test]
    fn a_script_file_is_played_turn_by_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"turns": [{"tool_calls": [{"name": "echo", "arguments": {"x": 1}}]}, {"content": "bye"}]}"#).unwrap();
        let p = provider(path.to_str().unwrap());
        let mut req = ModelRequest {
            provider: "s".into(),
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hi")],
            tools: vec![],
            max_tokens: 10,
            temperature: None,
        };
        let a = chat(&call(&p), &req).unwrap();
        assert_eq!(a.message.tool_calls[0].arguments, r#"{"x":1}"#);
        req.messages.push(a.message);
        assert_eq!(chat(&call(&p), &req).unwrap().message.content, "bye");
        assert!(matches!(
            chat(&call(&provider("/nonexistent")), &req),
            Err(ModelError::Permanent(_))
        ));
    }
}
