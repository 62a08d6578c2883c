//! Versioned codec for persisted binary blobs (snapshots). Layout: one format-version byte,
//! then bincode 2.0.1 (standard config) of the value. JSON values do not round-trip through
//! bincode (DESIGN §8), so fields holding `serde_json::Value` are carried as JSON text via
//! the `json_text` helpers. Never reorder persisted fields or variants: the golden-bytes
//! test below fails if the encoding of a fixed state changes.

use crate::error::RuntimeError;
use serde::{de::DeserializeOwned, Serialize};

/// Format of snapshot blobs written by this version. History: 1 = core runtime; 2 = adds
/// step deadlines (waits, sleeps) and buffered signals. A snapshot of another format is
/// not decoded: the job is rebuilt from its events (the log is the source of truth).
pub const SNAPSHOT_FORMAT: u8 = 2;

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

    /// A plan holds JSON `args`, so it travels as JSON text too.
    pub mod plan {
        use super::*;
        use crate::plan::Plan;
        pub fn serialize<S: Serializer>(p: &Plan, s: S) -> Result<S::Ok, S::Error> {
            serde_json::to_string(p)
                .map_err(serde::ser::Error::custom)?
                .serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Plan, D::Error> {
            let s = String::deserialize(d)?;
            serde_json::from_str(&s).map_err(serde::de::Error::custom)
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

    const GOLDEN: &str = "0210000000000000000000000000000000000174337b227374657073223a5b7b226964223a2261222c22746f6f6c223a226563686f222c2261726773223a7b2278223a317d7d5d7d097b226b223a2276227d000001016100000000000000000000000107070707070707070707070707070707070707070707070707070707070707070000fd00d0ca9f17030000fd00d0ca9f170300000000";
}
