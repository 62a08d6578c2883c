//! Agent steps: an LLM tool-calling loop as one durable step (user docs: docs/agents.md).
//!
//! - `mod.rs`: the step's spec as submitted (`{"agent": {…}}`), its caps, and the names of
//!   its calls (ledger names, invocation keys, approval signals);
//! - [`message`]: the provider-neutral conversation and its content digests;
//! - [`state`]: the agent's part of the job's fold (`AgentState`), applied by
//!   `JobState::apply` for the agent events;
//! - [`decide`]: what to do next (ask the model, run or refuse tool calls, wait for an
//!   approval or a budget decision, finish), recovery after a crash, and the outcome rules
//!   of model and tool calls — pure, like `crate::decide` and `crate::outcome`;
//! - [`schema`]: the subset of JSON Schema tool arguments are checked against;
//! - [`replay`]: the recorded turns of a step, for asking another model the same questions.
//!
//! Invariants kept here: every model answer is an event before any of its tool calls
//! starts (G2 across turns); tool calls are child invocations with their own ledger rows and
//! keys derived from the step's key, so the G2 rules of plan steps apply to them unchanged;
//! the conversation is rebuilt from events alone (G5), each message stored once by digest.

pub mod decide;
pub mod message;
pub mod replay;
pub mod schema;
pub mod state;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

pub use decide::{
    check_call, decide_agents, model_outcome_event, parse_arguments, recover_agents, request,
    start_event, tool_outcome_event, AgentContext, AgentDecision, AgentRecovery, AgentTools,
    ChildAttempt, ModelAnswer, ModelAttempt, ModelOutcome, ModelRequest, ToolDecl,
};
pub use message::{JournaledMessage, Message, Role, ToolCallRequest};
pub use state::{AgentCall, AgentState, BudgetScope, CallStatus, ModelStatus, Park, TurnRecord};

/// An `agent` step: `{"agent": {"provider", "model", "system", "prompt", "tools",
/// "approve", "max_turns", "budget": {"tokens"}, "max_tokens", "temperature"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// A provider configured for the tenant (or for every tenant).
    pub provider: String,
    /// The model to ask; must be on the provider's allow-list if it has one.
    pub model: String,
    /// The system prompt; may hold `${input…}` / `${steps.ID.output…}` references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The first user message; may hold references.
    pub prompt: String,
    /// The tools the model may call (names of registered tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Tools whose every call waits for a human's approval (signal `approve:<call-id>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approve: Vec<String>,
    /// Model calls at most (default 10): a model still calling tools then fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// The step's token budget (input + output tokens of all its model calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<TokenBudget>,
    /// Output tokens per model call at most (default 1024); reserved before each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// A token budget (a step's or, in the plan, the whole job's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBudget {
    pub tokens: u64,
}

/// `max_turns` when the step gives none.
pub const DEFAULT_MAX_TURNS: u32 = 10;
/// The largest `max_turns`.
pub const MAX_AGENT_TURNS: u32 = 1_000;
/// `max_tokens` when the step gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 1_024;
/// The largest `max_tokens`.
pub const MAX_MAX_TOKENS: u32 = 1_000_000;
/// Tools one agent step may offer.
pub const MAX_AGENT_TOOLS: usize = 64;
/// Characters of a provider name.
pub const MAX_PROVIDER_NAME: usize = 64;
/// Characters of a model name.
pub const MAX_MODEL_NAME: usize = 256;
/// Attempts of one model call when the step gives no `retry` (a model call is idempotent,
/// so a timeout or a 5xx is worth asking again).
pub const DEFAULT_MODEL_ATTEMPTS: u32 = 3;
/// The signal that resolves a budget wait.
pub const BUDGET_SIGNAL: &str = "budget";

impl AgentSpec {
    pub fn max_turns(&self) -> u32 {
        self.max_turns.unwrap_or(DEFAULT_MAX_TURNS)
    }
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }
    pub fn needs_approval(&self, tool: &str) -> bool {
        self.approve.iter().any(|t| t == tool)
    }
}

/// The ledger name of model call `turn` of agent step `step`: `step.turn`. Step ids hold
/// no `.`, so these never collide with plan steps.
pub fn model_call_name(step: &str, turn: u32) -> String {
    format!("{step}.{turn}")
}

/// The id (and ledger name) of tool call `index` of turn `turn`: `step.turn.index`.
pub fn tool_call_name(step: &str, turn: u32, index: u32) -> String {
    format!("{step}.{turn}.{index}")
}

/// The signal that approves or rejects tool call `call`.
pub fn approval_signal(call: &str) -> String {
    format!("approve:{call}")
}

/// The agent step a ledger name (`step.turn` or `step.turn.index`) belongs to, or `None`
/// for a plan step's own name.
pub fn owner_of(name: &str) -> Option<&str> {
    name.split_once('.').map(|(step, _)| step)
}

/// The invocation key of a call of an agent step: hex SHA-256(step key ‖ 0 ‖ part), part
/// being `turn` (the model call) or `turn.index` (a tool call). Stable across retries,
/// restarts and workers, like the step's own key.
pub fn child_key(step_key: &str, part: &str) -> String {
    let mut h = Context::new(&SHA256);
    h.update(step_key.as_bytes());
    h.update(&[0]);
    h.update(part.as_bytes());
    hex::encode(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_names_and_keys() {
        assert_eq!(model_call_name("triage", 3), "triage.3");
        assert_eq!(tool_call_name("triage", 3, 0), "triage.3.0");
        assert_eq!(approval_signal("triage.3.0"), "approve:triage.3.0");
        assert_eq!(owner_of("triage.3.0"), Some("triage"));
        assert_eq!(owner_of("triage"), None);
        assert_ne!(child_key("k", "1"), child_key("k", "1.0"));
        assert_eq!(child_key("k", "1.0"), child_key("k", "1.0"));
        assert_ne!(child_key("k1", "0"), child_key("k", "10"));
    }

    #[test]
    fn the_spec_reads_back_as_written() {
        let text = r#"{"provider":"p","model":"m","prompt":"hi ${input.x}","tools":["echo"],"approve":["echo"],"max_turns":3,"budget":{"tokens":500}}"#;
        let spec: AgentSpec = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&spec).unwrap(), text);
        assert_eq!(spec.max_tokens(), DEFAULT_MAX_TOKENS);
        assert!(spec.needs_approval("echo") && !spec.needs_approval("http"));
        assert!(serde_json::from_str::<AgentSpec>(
            r#"{"provider":"p","model":"m","prompt":"x","nope":1}"#
        )
        .is_err());
    }
}
