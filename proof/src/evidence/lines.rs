//! `events.jsonl`: one line per event, in one canonical spelling:
//!
//! ```text
//! {"seq":1,"recorded_at_ms":1764000000123,"kind":"job_submitted","prev_hash":"00…","hash":"ab…","payload":{…}}
//! ```
//!
//! `payload` comes last and is the exact payload text the chain hashed, or
//! `{"redacted":"sha256:<hex>"}` carrying only its digest. Because the layout is fixed, the
//! payload's bytes are the slice between the canonical prefix and the closing brace; a line
//! in any other spelling (reordered keys, upper-case hex, spaces, escapes) is refused and
//! located by its position, so no byte of the file can change unnoticed.

use crate::error::EvidenceError;
use aetheris_runtime::RecordedEvent;
use serde::de::IgnoredAny;
use serde::Deserialize;

const REDACTED_PREFIX: &[u8] = b"{\"redacted\":";

/// A payload as a line carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload<'a> {
    /// The exact bytes that were hashed.
    Full(&'a [u8]),
    /// Redacted: only the SHA-256 of those bytes.
    Redacted([u8; 32]),
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub seq: u64,
    pub recorded_at_ms: i64,
    pub kind: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub payload: Payload<'a>,
}

/// The redaction marker for a payload with this digest.
pub(crate) fn redaction_marker(digest: &[u8; 32]) -> String {
    format!("{{\"redacted\":\"sha256:{}\"}}", hex::encode(digest))
}

fn prefix(seq: u64, recorded_at_ms: i64, kind: &str, prev: &[u8; 32], hash: &[u8; 32]) -> String {
    // A kind is a plain snake_case word; serde_json escapes anything else the same way
    // at build and at verify time.
    let kind = serde_json::to_string(kind).unwrap_or_default();
    format!(
        "{{\"seq\":{seq},\"recorded_at_ms\":{recorded_at_ms},\"kind\":{kind},\"prev_hash\":\"{}\",\"hash\":\"{}\",\"payload\":",
        hex::encode(prev),
        hex::encode(hash)
    )
}

/// Appends the line of `event`, whose payload text is `payload` (exact or marker).
pub(crate) fn encode(out: &mut Vec<u8>, event: &RecordedEvent, payload: &[u8]) {
    out.extend_from_slice(
        prefix(
            event.seq,
            event.recorded_at_ms,
            event.body.kind(),
            &event.prev_hash,
            &event.hash,
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out.extend_from_slice(b"}\n");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    recorded_at_ms: i64,
    kind: String,
    prev_hash: String,
    hash: String,
    #[allow(dead_code)]
    payload: IgnoredAny,
}

fn hash32(s: &str) -> Option<[u8; 32]> {
    let b = hex::decode(s).ok()?;
    b.try_into().ok()
}

/// Decodes the line at `position` (1-based; errors are located there).
pub(crate) fn decode(position: u64, line: &[u8]) -> Result<Line<'_>, EvidenceError> {
    let bad = |d: String| EvidenceError::event(position, d);
    if line.is_empty() {
        return Err(bad("empty line".into()));
    }
    let head: Head =
        serde_json::from_slice(line).map_err(|e| bad(format!("not a valid event line: {e}")))?;
    let (Some(prev_hash), Some(hash)) = (hash32(&head.prev_hash), hash32(&head.hash)) else {
        return Err(bad("prev_hash and hash must be 64 hex digits".into()));
    };
    let prefix = prefix(head.seq, head.recorded_at_ms, &head.kind, &prev_hash, &hash);
    let payload = line
        .strip_prefix(prefix.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"}"))
        .ok_or_else(|| {
            bad("line is not in the canonical form (key order, spelling or spacing changed)".into())
        })?;
    let payload = if payload.starts_with(REDACTED_PREFIX) {
        let digest = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.strip_prefix("{\"redacted\":\"sha256:"))
            .and_then(|p| p.strip_suffix("\"}"))
            .and_then(hash32)
            .filter(|d| redaction_marker(d).as_bytes() == payload)
            .ok_or_else(|| {
                bad("malformed redaction marker (expected {\"redacted\":\"sha256:<64 lower-case hex>\"})".into())
            })?;
        Payload::Redacted(digest)
    } else {
        Payload::Full(payload)
    };
    Ok(Line {
        seq: head.seq,
        recorded_at_ms: head.recorded_at_ms,
        kind: head.kind,
        prev_hash,
        hash,
        payload,
    })
}

/// Splits `events.jsonl` into lines, each with whether it ends in a newline (only the last
/// may not, and then the file is malformed there). Lines are checked in order by the
/// caller, so a broken layout is located at the first line it breaks.
pub(crate) fn split(file: &[u8]) -> Vec<(&[u8], bool)> {
    let mut lines: Vec<(&[u8], bool)> = file.split(|b| *b == b'\n').map(|l| (l, true)).collect();
    // What follows the final newline: nothing in a well-formed file.
    if let Some((tail, _)) = lines.pop() {
        if !tail.is_empty() || lines.is_empty() {
            lines.push((tail, false));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::{EventBody, JobId};

    #[test]
    fn lines_decode_to_what_was_encoded_and_nothing_else() {
        let e = RecordedEvent {
            job_id: JobId::new(),
            seq: 3,
            recorded_at_ms: -7,
            body: EventBody::SleepFinished { step: "s".into() },
            prev_hash: [1; 32],
            hash: [2; 32],
        };
        let payload = e.body.payload();
        let mut out = Vec::new();
        encode(&mut out, &e, &payload);
        let lines = split(&out);
        assert_eq!(lines.len(), 1);
        let line = decode(3, lines[0].0).unwrap();
        assert_eq!(line.seq, 3);
        assert_eq!(line.recorded_at_ms, -7);
        assert_eq!(line.kind, "sleep_finished");
        assert_eq!(line.payload, Payload::Full(&payload));

        let mut red = Vec::new();
        encode(&mut red, &e, redaction_marker(&[0xab; 32]).as_bytes());
        assert_eq!(
            decode(3, &red[..red.len() - 1]).unwrap().payload,
            Payload::Redacted([0xab; 32])
        );
        // The same digest in upper case: the same value, not the canonical spelling.
        let upper = String::from_utf8(red.clone())
            .unwrap()
            .replace("sha256:abab", "sha256:ABab");
        assert!(decode(3, upper.trim_end().as_bytes()).is_err());
        let spaced = String::from_utf8(out.clone())
            .unwrap()
            .replacen("\"seq\":3", "\"seq\": 3", 1);
        assert_eq!(
            decode(3, spaced.trim_end().as_bytes())
                .unwrap_err()
                .failing_seq(),
            Some(3)
        );
        assert_eq!(
            split(b"{}\n\n{}\n"),
            vec![(&b"{}"[..], true), (&b""[..], true), (&b"{}"[..], true)]
        );
        assert_eq!(split(b"{}"), vec![(&b"{}"[..], false)]);
        assert_eq!(split(b""), vec![(&b""[..], false)]);
        assert!(decode(1, b"").is_err());
    }
}
