//! The hash chain of a job's events (G7), as pure functions: what every store computes when
//! it records an event, and what `aetheris-proof` verifies.
//!
//! Each event stores `hash = SHA-256(prev_hash ‖ canonical(header) ‖ SHA-256(payload))`.
//! The header (job id, seq, time, kind) has a fixed binary layout; the payload enters only
//! as its digest, so a redacted export (payload removed, digest kept) stays verifiable.
//! Invariant: these bytes never change, or every stored chain stops verifying (the golden
//! test below pins them).

use crate::ids::JobId;
use ring::digest::{digest, Context, SHA256};

/// The hash before seq 1.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The canonical header bytes: job id (16) ‖ seq (u64 BE) ‖ recorded_at_ms (i64 BE) ‖
/// kind length (u16 BE) ‖ kind (UTF-8).
pub fn canonical_header(job: JobId, seq: u64, recorded_at_ms: i64, kind: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 + 8 + 2 + kind.len());
    out.extend_from_slice(job.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&recorded_at_ms.to_be_bytes());
    out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    out.extend_from_slice(kind.as_bytes());
    out
}

/// SHA-256 of an event's payload bytes.
pub fn payload_digest(payload: &[u8]) -> [u8; 32] {
    sha256_bytes(digest(&SHA256, payload))
}

/// The bytes `link` hashes, split around the 8 bytes of `recorded_at_ms` (big-endian):
/// `event_hash(prev, job, seq, t, kind, payload)` is `SHA-256(head ‖ t ‖ tail)`. A store
/// whose clock is read where the event is written (PostgreSQL's group submit) hashes
/// there, with these two parts sent along.
pub fn parts_around_time(
    prev: &[u8; 32],
    job: JobId,
    seq: u64,
    kind: &str,
    payload: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(32 + 16 + 8);
    head.extend_from_slice(prev);
    head.extend_from_slice(job.as_bytes());
    head.extend_from_slice(&seq.to_be_bytes());
    let mut tail = Vec::with_capacity(2 + kind.len() + 32);
    tail.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    tail.extend_from_slice(kind.as_bytes());
    tail.extend_from_slice(&payload_digest(payload));
    (head, tail)
}

/// The chain link for one event, given the digest of its payload.
pub fn link(prev: &[u8; 32], header: &[u8], payload_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Context::new(&SHA256);
    h.update(prev);
    h.update(header);
    h.update(payload_digest);
    sha256_bytes(h.finish())
}

/// The 32 bytes of a SHA-256 digest (only ever given `SHA256` digests, which are 32 bytes
/// long, so the copy cannot fail).
fn sha256_bytes(d: ring::digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The hash of an event with these header fields and payload bytes.
pub fn event_hash(
    prev: &[u8; 32],
    job: JobId,
    seq: u64,
    recorded_at_ms: i64,
    kind: &str,
    payload: &[u8],
) -> [u8; 32] {
    link(
        prev,
        &canonical_header(job, seq, recorded_at_ms, kind),
        &payload_digest(payload),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes of fixed inputs, computed before this code moved here from
    /// `aetheris-proof`: stored chains verify only while these stay the same.
    #[test]
    fn event_hashes_are_pinned() {
        let job = JobId::from_bytes(*b"0123456789abcdef");
        let h = event_hash(
            &[7u8; 32],
            job,
            3,
            1_764_000_000_123,
            "step_succeeded",
            b"{\"type\":\"step_succeeded\"}",
        );
        assert_eq!(
            hex::encode(h),
            "7ad6e215b5cc25c8fac7cf23cfb5c21e31789ecace2502358fa6814071436b2c"
        );
        let h = event_hash(&GENESIS, job, 1, -5, "job_submitted", b"");
        assert_eq!(
            hex::encode(h),
            "1189375fe5b6f1b731d5f73835215c1cdb5e1482d442671132104168e8116a39"
        );
    }
}
