//! aetheris-proof: tamper evidence for job event logs (G7).
//!
//! Each event stores `hash = SHA-256(prev_hash ‖ canonical(header) ‖ SHA-256(payload))`.
//! The header (job id, seq, time, kind) has a fixed binary layout; the payload enters only
//! as its digest, so a redacted export (payload removed, digest kept) stays verifiable.
//! `verify_chain` detects any change, insertion, deletion or reordering and names the first
//! seq where the chain breaks. Sync code only.

use aetheris_runtime::{JobId, RecordedEvent};

pub mod checkpoint;
pub mod dsse;
mod error;
pub mod evidence;
pub mod keys;
pub mod merkle;
#[doc(hidden)]
pub mod testkit;

pub use checkpoint::{Checkpoint, ConsistencyProof, Transparency};
pub use error::EvidenceError;
pub use evidence::{build, verify, EvidenceInput, LedgerRecord, RedactionRule, VerifyReport};
pub use keys::SigningKey;

/// The chain's hashing lives in the pure core (`aetheris_runtime::chain`), where the stores
/// compute it when they record events; it is re-exported here, beside its verifier.
pub use aetheris_runtime::chain::{
    canonical_header, event_hash, link, parts_around_time, payload_digest, GENESIS,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {seq}: expected seq {expected} (event missing, inserted or reordered)")]
    Sequence { seq: u64, expected: u64 },
    #[error("seq {seq}: prev_hash does not match the hash of the event before it")]
    BrokenLink { seq: u64 },
    #[error("seq {seq}: stored hash does not match the event's contents (altered)")]
    Altered { seq: u64 },
    #[error("seq {seq}: belongs to job {found}, not {expected}")]
    WrongJob {
        seq: u64,
        expected: JobId,
        found: JobId,
    },
}

impl ChainError {
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Sequence { seq, .. }
            | ChainError::BrokenLink { seq }
            | ChainError::Altered { seq }
            | ChainError::WrongJob { seq, .. } => *seq,
        }
    }
}

/// Verifies a job's full log from seq 1. Returns the head hash.
pub fn verify_chain(job: JobId, events: &[RecordedEvent]) -> Result<[u8; 32], ChainError> {
    let mut prev = GENESIS;
    for (i, e) in events.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.job_id != job {
            return Err(ChainError::WrongJob {
                seq: e.seq,
                expected: job,
                found: e.job_id,
            });
        }
        if e.seq != expected {
            return Err(ChainError::Sequence {
                seq: e.seq,
                expected,
            });
        }
        if e.prev_hash != prev {
            return Err(ChainError::BrokenLink { seq: e.seq });
        }
        let h = event_hash(
            &prev,
            job,
            e.seq,
            e.recorded_at_ms,
            e.body.kind(),
            &e.body.payload(),
        );
        if h != e.hash {
            return Err(ChainError::Altered { seq: e.seq });
        }
        prev = h;
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::EventBody;
    use ring::digest::{Context, SHA256};
    use serde_json::json;

    fn chain(n: u64) -> (JobId, Vec<RecordedEvent>) {
        let job = JobId::new();
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = EventBody::StepSucceeded {
                step: format!("s{seq}"),
                attempt: 1,
                output: json!({"n": seq}),
            };
            let hash = event_hash(
                &prev,
                job,
                seq,
                1000 + seq as i64,
                body.kind(),
                &body.payload(),
            );
            out.push(RecordedEvent {
                job_id: job,
                seq,
                recorded_at_ms: 1000 + seq as i64,
                body,
                prev_hash: prev,
                hash,
            });
            prev = hash;
        }
        (job, out)
    }

    #[test]
    fn parts_around_time_hash_to_the_event_hash() {
        let job = JobId::from_bytes(*b"0123456789abcdef");
        let prev = [7u8; 32];
        for t in [0i64, 1_764_000_000_123, -5] {
            let (head, tail) = parts_around_time(&prev, job, 3, "job_submitted", b"{\"x\":1}");
            let mut h = Context::new(&SHA256);
            h.update(&head);
            h.update(&t.to_be_bytes());
            h.update(&tail);
            let split = h.finish();
            assert_eq!(
                split.as_ref(),
                event_hash(&prev, job, 3, t, "job_submitted", b"{\"x\":1}")
            );
        }
    }

    #[test]
    fn intact_chain_verifies() {
        let (job, ev) = chain(20);
        assert_eq!(verify_chain(job, &ev).unwrap(), ev[19].hash);
    }

    #[test]
    fn every_kind_of_tampering_is_located() {
        let (job, ev) = chain(10);
        let mut altered = ev.clone();
        altered[4].body = EventBody::StepSucceeded {
            step: "s5".into(),
            attempt: 1,
            output: json!({"n": 999}),
        };
        assert_eq!(
            verify_chain(job, &altered).unwrap_err(),
            ChainError::Altered { seq: 5 }
        );

        let mut time = ev.clone();
        time[6].recorded_at_ms += 1;
        assert_eq!(verify_chain(job, &time).unwrap_err().seq(), 7);

        let mut deleted = ev.clone();
        deleted.remove(3);
        assert_eq!(verify_chain(job, &deleted).unwrap_err().seq(), 5);

        let mut swapped = ev.clone();
        swapped.swap(2, 3);
        assert_eq!(verify_chain(job, &swapped).unwrap_err().seq(), 4);

        let mut inserted = ev.clone();
        inserted.insert(2, ev[2].clone());
        assert_eq!(verify_chain(job, &inserted).unwrap_err().seq(), 3);
    }
}
