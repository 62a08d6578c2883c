//! Versioned codec for persisted binary blobs (snapshots). Layout: one format-version byte,
//! then bincode 2.0.1 (standard config) of the value. JSON values do not round-trip through
//! bincode (DESIGN §8), so fields holding `serde_json::Value` are carried as JSON text via
//! the `json_text` helpers. Never reorder persisted fields or variants: the golden-bytes
//! test below fails if the encoding of a fixed state changes.

use crate::error::RuntimeError;
use serde::{de::DeserializeOwned, Serialize};

/// Format of snapshot blobs written by this version. History: 1 = core runtime; 2 = adds
/// step deadlines (waits, sleeps) and buffered signals; 3 = adds agent steps (a step's
/// `agent` state, the job's message journal and its raised job budget). A snapshot of
/// another format is not decoded: the job is rebuilt from its events (the log is the
/// source of truth), so old snapshots cost one full replay and nothing else.
pub const SNAPSHOT_FORMAT: u8 = 3;

pub fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, RuntimeError> {
    let mut out = vec![version];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| RuntimeError::Codec(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode_versioned<T: DeserializeOwned>(
    expected: u8,
    bytes: &[u8],
) -> Result<T, RuntimeError> {
    let (&v, body) = bytes
        .split_first()
        .ok_or_else(|| RuntimeError::Codec("empty blob".into()))?;
    if v != expected {
        return Err(RuntimeError::Codec(format!(
            "unknown blob format {v}, this build reads {expected}"
        )));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| RuntimeError::Codec(e.to_string()))?;
    if used != body.len() {
        return Err(RuntimeError::Codec("trailing bytes after blob".into()));
    }
    Ok(value)
}

/// `#[serde(with = "json_text")]`: a `serde_json::Value` carried as its JSON text.
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let s = String::deserialize(d)?;
        serde_json::from_str(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
            v.as_ref().map(|x| x.to_string()).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| serde_json::from_str(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    /// The agents' message journal: each message as its JSON text (its fields are skipped
    /// when empty, which only a self-describing format can read back).
    pub mod messages {
        use crate::agent::Message;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::collections::BTreeMap;

        pub fn serialize<S: Serializer>(
            m: &BTreeMap<String, Message>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let mut text = BTreeMap::new();
            for (digest, message) in m {
                text.insert(
                    digest.as_str(),
                    serde_json::to_string(message).map_err(serde::ser::Error::custom)?,
                );
            }
            text.serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BTreeMap<String, Message>, D::Error> {
            BTreeMap::<String, String>::deserialize(d)?
                .into_iter()
                .map(|(digest, text)| {
                    serde_json::from_str(&text)
                        .map(|m| (digest, m))
                        .map_err(serde::de::Error::custom)
                })
                .collect()
        }
    }

    /// A plan holds JSON `args`, so it travels as JSON text too.
    pub mod plan {
        use super::*;
        use crate::plan::Plan;
        use std::sync::Arc;
        pub fn serialize<S: Serializer>(p: &Arc<Plan>, s: S) -> Result<S::Ok, S::Error> {
            serde_json::to_string(&**p)
                .map_err(serde::ser::Error::custom)?
                .serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Plan>, D::Error> {
            let s = String::deserialize(d)?;
            serde_json::from_str(&s)
                .map(Arc::new)
                .map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, RecordedEvent};
    use crate::ids::JobId;
    use crate::state::JobState;
    use serde_json::json;

    fn fixed_state() -> JobState {
        let body = EventBody::JobSubmitted {
            tenant: "t".into(),
            plan: serde_json::from_value(
                json!({"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]}),
            )
            .unwrap(),
            input: json!({"k": "v"}),
            idempotency_key: None,
        };
        let e = RecordedEvent {
            job_id: JobId(uuid::Uuid::nil()),
            seq: 1,
            recorded_at_ms: 1_700_000_000_000,
            body,
            prev_hash: [0; 32],
            hash: [7; 32],
        };
        JobState::genesis(&e).unwrap()
    }

    #[test]
    fn snapshot_round_trips() {
        let s = fixed_state();
        let b = encode_versioned(SNAPSHOT_FORMAT, &s).unwrap();
        let back: JobState = decode_versioned(SNAPSHOT_FORMAT, &b).unwrap();
        assert_eq!(s, back);
        assert!(decode_versioned::<JobState>(9, &b).is_err());
        assert!(decode_versioned::<JobState>(SNAPSHOT_FORMAT, &b[..b.len() - 1]).is_err());
    }

    /// Golden bytes: if this fails, a persisted layout changed and old snapshots would no
    /// longer decode. Add a new format version instead of changing V1.
    #[test]
    fn snapshot_golden_bytes() {
        let b = encode_versioned(SNAPSHOT_FORMAT, &fixed_state()).unwrap();
        assert_eq!(
            hex::encode(&b),
            GOLDEN,
            "snapshot encoding changed: bump SNAPSHOT_FORMAT instead"
        );
    }

    /// A job with an agent step mid-turn: the journal, the conversation, a turn record, a
    /// running tool call.
    fn fixed_agent_state() -> JobState {
        use crate::agent::{JournaledMessage, Message, Role, ToolCallRequest};
        let plan = json!({"steps": [{"id": "a", "agent": {"provider": "p", "model": "m",
            "prompt": "hi", "tools": ["echo"]}}]});
        let mut state = JobState::genesis(&RecordedEvent {
            job_id: JobId(uuid::Uuid::nil()),
            seq: 1,
            recorded_at_ms: 1_700_000_000_000,
            body: EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).unwrap(),
                input: json!(null),
                idempotency_key: None,
            },
            prev_hash: [0; 32],
            hash: [7; 32],
        })
        .unwrap();
        let journal = |m: Message| JournaledMessage {
            digest: m.digest(),
            message: Some(m),
        };
        let answer = Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: vec![ToolCallRequest {
                id: "c1".into(),
                name: "echo".into(),
                arguments: "{}".into(),
            }],
            tool_call_id: None,
            is_error: false,
        };
        let user = Message::text(Role::User, "hi");
        let prefix = crate::agent::message::chain_digest(
            crate::agent::message::EMPTY_CONVERSATION,
            &user.digest(),
        );
        let bodies = [
            EventBody::AgentStarted {
                step: "a".into(),
                provider: "p".into(),
                model: "m".into(),
                messages: vec![journal(user)],
                error: None,
            },
            EventBody::AgentModelStarted {
                step: "a".into(),
                call: "a.1".into(),
                turn: 1,
                attempt: 1,
                invocation_key: "k1".into(),
                provider: "p".into(),
                model: "m".into(),
                reserved_tokens: 10,
                request_digest: prefix,
                fencing_token: 1,
            },
            EventBody::AgentModelAnswered {
                step: "a".into(),
                call: "a.1".into(),
                turn: 1,
                attempt: 1,
                messages: vec![journal(answer)],
                input_tokens: 3,
                output_tokens: 4,
            },
            EventBody::AgentToolStarted {
                step: "a".into(),
                call: "a.1.0".into(),
                attempt: 1,
                invocation_key: "k2".into(),
                tool: "echo".into(),
                effect: crate::EffectClass::Pure,
                fencing_token: 1,
            },
        ];
        state = state.projected(&bodies, 1_700_000_000_001).unwrap();
        state
    }

    #[test]
    fn agent_snapshots_round_trip_and_keep_their_bytes() {
        let s = fixed_agent_state();
        let b = encode_versioned(SNAPSHOT_FORMAT, &s).unwrap();
        let back: JobState = decode_versioned(SNAPSHOT_FORMAT, &b).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            hex::encode(&b),
            GOLDEN_AGENT,
            "agent snapshot encoding changed: bump SNAPSHOT_FORMAT instead"
        );
    }

    /// A format-2 snapshot (before agents) is not read: the job is replayed from its log.
    #[test]
    fn format_2_snapshots_are_refused() {
        let v2 = hex::decode(GOLDEN_V2).unwrap();
        assert!(decode_versioned::<JobState>(SNAPSHOT_FORMAT, &v2).is_err());
    }

    const GOLDEN_V2: &str = "0210000000000000000000000000000000000174337b227374657073223a5b7b226964223a2261222c22746f6f6c223a226563686f222c2261726773223a7b2278223a317d7d5d7d097b226b223a2276227d000001016100000000000000000000000107070707070707070707070707070707070707070707070707070707070707070000fd00d0ca9f17030000fd00d0ca9f170300000000";

    const GOLDEN_AGENT: &str = "03100000000000000000000000000000000001745a7b227374657073223a5b7b226964223a2261222c226167656e74223a7b2270726f7669646572223a2270222c226d6f64656c223a226d222c2270726f6d7074223a226869222c22746f6f6c73223a5b226563686f225d7d7d5d7d046e756c6c0001010161010100000000000001fd02d0ca9f170300000000010170016d024061653736306635626130336333316163333063326161363736386366656466366336633836336237323165333035333035613736323661376330653064306437403538613062373365393561326535613864656137346439363933303831376630646332356630303739326632306163663433636435396235326239613539616340353666346364646538633063336333373763343634633464343633306164666165353336313238663634333730333661616139663030623631663363373966372a01000001026b310000000001010170016d0140653366333136323565646465326431663930366461373866333938303738313664313661313139353966303566303537623338393564653262636430346133630140353861306237336539356132653561386465613734643936393330383137663064633235663030373932663230616366343363643539623532623961353961630304010105612e312e300100026331046563686f027b7d0000010101026b320100010000000003040000000500000000000000000000000000000000000000000000000000000000000000000000fd00d0ca9f17030000fd02d0ca9f1703000000000240353861306237336539356132653561386465613734643936393330383137663064633235663030373932663230616366343363643539623532623961353961634e7b22726f6c65223a22617373697374616e74222c22746f6f6c5f63616c6c73223a5b7b226964223a226331222c226e616d65223a226563686f222c22617267756d656e7473223a227b7d227d5d7d40616537363066356261303363333161633330633261613637363863666564663663366338363362373231653330353330356137363236613763306530643064371e7b22726f6c65223a2275736572222c22636f6e74656e74223a226869227d00";

    const GOLDEN: &str = "0310000000000000000000000000000000000174337b227374657073223a5b7b226964223a2261222c22746f6f6c223a226563686f222c2261726773223a7b2278223a317d7d5d7d097b226b223a2276227d00000101610000000000000000000000000107070707070707070707070707070707070707070707070707070707070707070000fd00d0ca9f17030000fd00d0ca9f1703000000000000";
}
