//! The provider-neutral conversation of an agent step and its content addressing.
//!
//! A [`Message`] is what a model was shown or answered, in no provider's wire format (the
//! actors' provider adapters translate). Its digest is SHA-256 of its JSON, which is
//! deterministic (fixed field order, no maps), so the same message always has the same
//! digest. The conversation is a list of digests plus a running prefix digest
//! ([`chain_digest`]): an event names the prefix a request was built from with 64 hex
//! characters however long the conversation is. Invariant kept here: message bodies hold
//! no `serde_json::Value` (tool arguments are JSON text), so they encode with bincode.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of one tool call, answering the assistant's request `tool_call_id`.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One tool call a model asked for, as it asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCallRequest {
    /// The provider's id of the call (`call_…`, `toolu_…`): tool results answer it.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as the model wrote them (they may not parse).
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// For a tool result: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a tool result: the call failed or was refused (the content says why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
        }
    }

    /// The result of call `tool_call_id`.
    pub fn tool_result(tool_call_id: &str, content: impl Into<String>, is_error: bool) -> Message {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.to_string()),
            is_error,
        }
    }

    /// Hex SHA-256 of the message's JSON: its address in the journal.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let mut h = Context::new(&SHA256);
        h.update(&bytes);
        hex::encode(h.finish())
    }

    /// A rough size, for the input-token estimate of a reservation (about 4 bytes a token).
    pub fn size_bytes(&self) -> u64 {
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len() + c.id.len())
            .sum();
        (self.content.len() + calls + 16) as u64
    }
}

/// A message as an event carries it: always its digest; its body only the first time the
/// job's journal sees that digest (a repeat is stored once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JournaledMessage {
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// The digest of an empty conversation.
pub const EMPTY_CONVERSATION: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// The prefix digest of a conversation after `message_digest` is appended to the
/// conversation whose prefix digest is `prev`: hex SHA-256(prev ‖ 0 ‖ message digest).
pub fn chain_digest(prev: &str, message_digest: &str) -> String {
    let mut h = Context::new(&SHA256);
    h.update(prev.as_bytes());
    h.update(&[0]);
    h.update(message_digest.as_bytes());
    hex::encode(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stable_and_distinguish_content() {
        let a = Message::text(Role::User, "hello");
        assert_eq!(a.digest(), Message::text(Role::User, "hello").digest());
        assert_ne!(a.digest(), Message::text(Role::Assistant, "hello").digest());
        assert_ne!(a.digest(), Message::text(Role::User, "hello!").digest());
        // Pinned: a change of the message encoding would orphan every journal.
        assert_eq!(a.digest(), PINNED_HELLO);
        let prefix = chain_digest(EMPTY_CONVERSATION, &a.digest());
        assert_ne!(prefix, chain_digest(EMPTY_CONVERSATION, &a.digest()[1..]));
        assert_eq!(prefix.len(), 64);
    }

    /// SHA-256 of `{"role":"user","content":"hello"}` (checked with sha256sum).
    const PINNED_HELLO: &str = "b5344ebd07750817371cf4670e556b15a4babb975bde955ff4ce24bca09731ef";

    #[test]
    fn the_json_form_is_compact_and_round_trips() {
        let m = Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: vec![ToolCallRequest {
                id: "call_1".into(),
                name: "lookup".into(),
                arguments: "{\"order\":\"A-17\"}".into(),
            }],
            tool_call_id: None,
            is_error: false,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"role":"assistant","tool_calls":[{"id":"call_1","name":"lookup","arguments":"{\"order\":\"A-17\"}"}]}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}
