//! The `llm` tool: one model call as a plan step (`{"tool": "llm", "args": {"provider",
//! "model", "messages", "system", "temperature", "max_tokens"}}`), with the tenant's daily
//! and per-minute token budgets like an agent's calls. Declared `idempotent`: asking again
//! costs tokens and changes nothing outside. Its output: `{"content", "tool_calls",
//! "model", "usage": {"input_tokens", "output_tokens"}}`.

use super::LlmRuntime;
use crate::tools::{Invocation, Tool, ToolError};
use aetheris_runtime::agent::{Message, ModelOutcome, ModelRequest, Role, DEFAULT_MAX_TOKENS};
use aetheris_runtime::{EffectClass, ToolOutcome};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where the process's `LlmRuntime` is put once the worker starts (the tool registry is
/// built before the store is open).
pub type LlmSlot = Arc<OnceLock<LlmRuntime>>;

/// The longest one call may take inside the tool (the step's own `timeout` cuts it first).
const CALL_LIMIT: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    provider: String,
    model: String,
    messages: Vec<ArgMessage>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgMessage {
    role: Role,
    content: String,
}

pub struct LlmTool {
    slot: LlmSlot,
}

impl LlmTool {
    pub fn new(slot: LlmSlot) -> Self {
        LlmTool { slot }
    }
}

/// The JSON Schema of the tool's arguments.
pub fn parameters() -> Value {
    json!({"type": "object", "properties": {
        "provider": {"type": "string", "description": "an LLM provider of the tenant"},
        "model": {"type": "string"},
        "system": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object",
            "properties": {"role": {"enum": ["system", "user", "assistant"]},
                           "content": {"type": "string"}},
            "required": ["role", "content"], "additionalProperties": false}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000}},
        "required": ["provider", "model", "messages"], "additionalProperties": false})
}

#[async_trait]
impl Tool for LlmTool {
    fn effect(&self) -> EffectClass {
        EffectClass::Idempotent
    }

    fn description(&self) -> String {
        "Asks a language model once: messages in, the model's answer out.".into()
    }

    fn parameters(&self) -> Value {
        parameters()
    }

    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let runtime = self
            .slot
            .get()
            .ok_or_else(|| ToolError::permanent("llm: this worker has no LLM providers"))?;
        aetheris_runtime::agent::schema::validate(&call.args, &parameters())
            .map_err(|e| ToolError::permanent(format!("llm: arguments: {e}")))?;
        let args: Args = serde_json::from_value(call.args.clone())
            .map_err(|e| ToolError::permanent(format!("llm: arguments: {e}")))?;
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(Message::text(Role::System, system));
        }
        messages.extend(
            args.messages
                .into_iter()
                .map(|m| Message::text(m.role, m.content)),
        );
        let req = ModelRequest {
            provider: args.provider,
            model: args.model,
            messages,
            tools: Vec::new(),
            max_tokens: args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            temperature: args.temperature,
        };
        let input: u64 = req.messages.iter().map(Message::size_bytes).sum();
        let reserve = u64::from(req.max_tokens) + input / 4;
        let outcome = runtime
            .chat_budgeted(
                &call.tenant,
                &req,
                &call.invocation_key,
                CALL_LIMIT,
                reserve,
            )
            .await;
        match outcome {
            ModelOutcome::Answered(a) => Ok(json!({
                "content": a.message.content,
                "tool_calls": a.message.tool_calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect::<Vec<_>>(),
                "model": req.model,
                "usage": {"input_tokens": a.input_tokens, "output_tokens": a.output_tokens},
            })),
            ModelOutcome::Budget(_, why) => Err(ToolError::permanent(format!("llm: {why}"))),
            ModelOutcome::RetryAfter(m, _) => Err(ToolError::retryable(format!("llm: {m}"))),
            ModelOutcome::Failed(ToolOutcome::Permanent(m)) => {
                Err(ToolError::permanent(format!("llm: {m}")))
            }
            ModelOutcome::Failed(ToolOutcome::Unknown(m)) => {
                Err(ToolError::outcome_unknown(format!("llm: {m}")))
            }
            ModelOutcome::Failed(other) => Err(ToolError::retryable(format!("llm: {other:?}"))),
        }
    }
}
