//! Replay-diff: the recorded turns of a job's agent steps, each with the exact
//! conversation its model was asked about and the answer it gave, and how another answer
//! to the same question differs from the recorded one (the tool it calls, its arguments,
//! the final answer). Tool results are those recorded in the conversation, so asking
//! another model the recorded questions calls no tool.

use super::decide::parse_arguments;
use super::message::Message;
use crate::state::JobState;
use serde::Serialize;
use serde_json::Value;

/// One answered model call of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedTurn {
    pub step: String,
    pub turn: u32,
    pub provider: String,
    pub model: String,
    /// The conversation the model was asked about, the system prompt first.
    pub request: Vec<Message>,
    /// Its answer (the assistant message).
    pub answer: Message,
}

/// Every recorded turn of every agent step, in plan order then turn order.
pub fn recorded_turns(state: &JobState) -> Vec<RecordedTurn> {
    let mut out = Vec::new();
    for spec in &state.plan.steps {
        let Some(agent) = state.agent(&spec.id) else {
            continue;
        };
        for t in &agent.turns {
            let request: Option<Vec<Message>> = agent
                .conversation
                .iter()
                .take(t.request_len as usize)
                .map(|d| state.messages.get(d).cloned())
                .collect();
            let answer = t.answer.last().and_then(|d| state.messages.get(d)).cloned();
            if let (Some(request), Some(answer)) = (request, answer) {
                out.push(RecordedTurn {
                    step: spec.id.clone(),
                    turn: t.turn,
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    request,
                    answer,
                });
            }
        }
    }
    out
}

/// What an answer decides: the tools it calls with their arguments, or its final answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decided {
    pub tool_calls: Vec<DecidedCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecidedCall {
    pub tool: String,
    /// The arguments as JSON (as text when they do not parse).
    pub args: Value,
}

pub fn decided(m: &Message) -> Decided {
    Decided {
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| DecidedCall {
                tool: c.name.clone(),
                args: parse_arguments(&c.arguments)
                    .unwrap_or_else(|_| Value::String(c.arguments.clone())),
            })
            .collect(),
        answer: m.tool_calls.is_empty().then(|| m.content.clone()),
    }
}

/// Where two answers to one question diverge: `tool` (another tool, another number of
/// calls, or a tool call against a final answer), `args` (the same tools with other
/// arguments), `answer` (two final answers that differ). Empty when they agree.
pub fn divergences(recorded: &Message, replayed: &Message) -> Vec<&'static str> {
    let (a, b) = (decided(recorded), decided(replayed));
    let names = |d: &Decided| {
        d.tool_calls
            .iter()
            .map(|c| c.tool.clone())
            .collect::<Vec<_>>()
    };
    if a.answer.is_some() != b.answer.is_some() || names(&a) != names(&b) {
        return vec!["tool"];
    }
    let mut out = Vec::new();
    if a.tool_calls
        .iter()
        .zip(&b.tool_calls)
        .any(|(x, y)| x.args != y.args)
    {
        out.push("args");
    }
    if a.answer != b.answer {
        out.push("answer");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::message::{Role, ToolCallRequest};

    fn calls(list: &[(&str, &str)]) -> Message {
        Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: list
                .iter()
                .enumerate()
                .map(|(i, (n, a))| ToolCallRequest {
                    id: format!("c{i}"),
                    name: n.to_string(),
                    arguments: a.to_string(),
                })
                .collect(),
            tool_call_id: None,
            is_error: false,
        }
    }

    #[test]
    fn divergences_name_tool_args_and_answer() {
        let a = calls(&[("lookup", r#"{"id": 1}"#)]);
        assert!(divergences(&a, &calls(&[("lookup", r#"{ "id":1 }"#)])).is_empty());
        assert_eq!(
            divergences(&a, &calls(&[("lookup", r#"{"id": 2}"#)])),
            vec!["args"]
        );
        assert_eq!(
            divergences(&a, &calls(&[("refund", r#"{"id": 1}"#)])),
            vec!["tool"]
        );
        assert_eq!(divergences(&a, &calls(&[])), vec!["tool"]);
        let done = Message::text(Role::Assistant, "refunded");
        assert!(divergences(&done, &Message::text(Role::Assistant, "refunded")).is_empty());
        assert_eq!(
            divergences(&done, &Message::text(Role::Assistant, "no")),
            vec!["answer"]
        );
        assert_eq!(divergences(&done, &a), vec!["tool"]);
    }
}
