//! Per-tenant transparency logs: the leaf a finished job adds, signed checkpoints of the
//! log (tree size and RFC 9162 root), the inclusion material an evidence package carries,
//! and the check that a log only grew between two checkpoints.
//!
//! A checkpoint is a C2SP signed note (`tlog-checkpoint` body, `signed-note` signature):
//!
//! ```text
//! aetheris/tenant/acme                       origin: one log per tenant
//! 42                                         tree size, decimal
//! 3W3aeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=   root hash, standard base64
//! time 1764000000123                         store time (ms) when the log reached this size
//!                                            (a blank line ends the signed text)
//! — aetheris-evidence <base64(key hash[4] ‖ Ed25519 signature[64])>
//! ```
//!
//! The signature covers the text before the blank line, newline included; the 4-byte key
//! hash is `SHA-256("aetheris-evidence" ‖ "\n" ‖ 0x01 ‖ public key)[..4]`, as signed notes
//! define it for Ed25519, so a note verifier that knows the key checks it too. Invariant:
//! the same (tenant, size, root, time) signed with the same key gives the same bytes, so a
//! checkpoint of a given size is reproducible when its time is the time of its last leaf.

use crate::error::EvidenceError;
use crate::keys::{keyid, verify_signature, SigningKey};
use crate::merkle::{self, Hash};
use aetheris_runtime::JobId;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

/// The signer name on every checkpoint signature line.
pub const NOTE_KEY_NAME: &str = "aetheris-evidence";
/// Longest checkpoint text read (a real one is under 300 bytes).
pub const MAX_CHECKPOINT_BYTES: usize = 4096;
/// Domain tag that starts a job's leaf data.
pub const JOB_LEAF_TAG: &[u8; 16] = b"aetheris:job:v1\0";

/// The origin line of a tenant's log.
pub fn origin_for(tenant: &str) -> String {
    format!("aetheris/tenant/{tenant}")
}

/// The leaf a finished job adds to its tenant's log, 72 bytes:
/// `"aetheris:job:v1\0"` (16) ‖ job id (16, UUID bytes) ‖ last seq (u64 big-endian) ‖ the
/// chain hash of that last event (32). Appended when the job finishes (its terminal event's
/// transaction), so the leaf pins the job's whole event history.
pub fn job_leaf_data(job: JobId, last_seq: u64, chain_head: &Hash) -> [u8; 72] {
    let mut out = [0u8; 72];
    out[..16].copy_from_slice(JOB_LEAF_TAG);
    out[16..32].copy_from_slice(job.as_bytes());
    out[32..40].copy_from_slice(&last_seq.to_be_bytes());
    out[40..].copy_from_slice(chain_head);
    out
}

/// The RFC 9162 leaf hash of [`job_leaf_data`]: what the store keeps per leaf.
pub fn job_leaf_hash(job: JobId, last_seq: u64, chain_head: &Hash) -> Hash {
    merkle::leaf_hash(&job_leaf_data(job, last_seq, chain_head))
}

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Store time (ms since the epoch) at which the log reached `size`: the time its last
    /// leaf was appended (0 for the empty log).
    pub time_ms: i64,
}

/// A checkpoint whose signature held, and by which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signer_keyid: String,
}

fn note_key_hash(public_key: &[u8; 32]) -> [u8; 4] {
    let mut material = Vec::with_capacity(NOTE_KEY_NAME.len() + 2 + 32);
    material.extend_from_slice(NOTE_KEY_NAME.as_bytes());
    material.push(b'\n');
    material.push(0x01);
    material.extend_from_slice(public_key);
    let d = digest(&SHA256, &material);
    let mut out = [0u8; 4];
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

impl Checkpoint {
    /// The checkpoint of `tenant`'s log at this size.
    pub fn for_tenant(tenant: &str, size: u64, root: Hash, time_ms: i64) -> Self {
        Checkpoint {
            origin: origin_for(tenant),
            size,
            root,
            time_ms,
        }
    }

    /// The signed text (the note body, ending in a newline).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.time_ms
        )
    }

    /// The signed note: body, blank line, one signature line.
    pub fn sign(&self, key: &SigningKey) -> Result<String, EvidenceError> {
        if self.origin.is_empty() || self.origin.contains(['\n', '\r']) {
            return Err(EvidenceError::Checkpoint(
                "origin must be one non-empty line".into(),
            ));
        }
        let body = self.body();
        let mut sig = note_key_hash(&key.public_key()).to_vec();
        sig.extend_from_slice(&key.sign(body.as_bytes()));
        Ok(format!(
            "{body}\n\u{2014} {NOTE_KEY_NAME} {}\n",
            STANDARD.encode(sig)
        ))
    }

    /// Parses a signed checkpoint and checks its signature against any of `public_keys`.
    pub fn verify(
        text: &str,
        public_keys: &[[u8; 32]],
    ) -> Result<VerifiedCheckpoint, EvidenceError> {
        let bad = |d: &str| EvidenceError::Checkpoint(d.to_string());
        let (body, signatures) = split_note(text)?;
        let checkpoint = parse_body(&body)?;
        if signatures.is_empty() || !signatures.ends_with('\n') {
            return Err(bad(
                "no signature lines (or the last one lacks its newline)",
            ));
        }
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad(
                    "a signature line does not start with an em dash and a space",
                ));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(bad("a signature line has no signature"));
            };
            if name != NOTE_KEY_NAME {
                continue;
            }
            let Ok(sig) = STANDARD.decode(b64) else {
                return Err(bad("a signature is not base64"));
            };
            if sig.len() != 68 {
                return Err(bad("an Ed25519 note signature is 4 + 64 bytes"));
            }
            for pk in public_keys {
                if sig[..4] == note_key_hash(pk) && verify_signature(pk, body.as_bytes(), &sig[4..])
                {
                    return Ok(VerifiedCheckpoint {
                        checkpoint,
                        signer_keyid: keyid(pk),
                    });
                }
            }
        }
        Err(bad(
            "no signature by any of the given public keys verifies (wrong key, or the text was changed)",
        ))
    }
}

/// The signed text (newline included) and the signature lines of a note.
fn split_note(text: &str) -> Result<(String, &str), EvidenceError> {
    if text.len() > MAX_CHECKPOINT_BYTES {
        return Err(EvidenceError::Checkpoint(format!(
            "longer than {MAX_CHECKPOINT_BYTES} bytes"
        )));
    }
    let Some((body, signatures)) = text.split_once("\n\n") else {
        return Err(EvidenceError::Checkpoint(
            "no blank line between the text and its signatures".into(),
        ));
    };
    Ok((format!("{body}\n"), signatures))
}

/// What a checkpoint states, without checking its signature (the exporter checks the
/// proof it is about to sign against it; verifiers use [`Checkpoint::verify`]).
pub(crate) fn parse_note_body(text: &str) -> Result<Checkpoint, EvidenceError> {
    parse_body(&split_note(text)?.0)
}

/// The note body: origin, size, base64 root, `time <ms>`, each on its own line, nothing
/// else; every number in its one canonical spelling.
fn parse_body(body: &str) -> Result<Checkpoint, EvidenceError> {
    let bad = |d: &str| EvidenceError::Checkpoint(d.to_string());
    let lines: Vec<&str> = body
        .strip_suffix('\n')
        .unwrap_or(body)
        .split('\n')
        .collect();
    let [origin, size, root, time] = lines.as_slice() else {
        return Err(bad("expected 4 lines: origin, tree size, root hash, time"));
    };
    if origin.is_empty() {
        return Err(bad("empty origin line"));
    }
    let size: u64 = size
        .parse()
        .ok()
        .filter(|n: &u64| n.to_string() == *size)
        .ok_or_else(|| bad("tree size is not a decimal number"))?;
    let root: Hash = STANDARD
        .decode(root)
        .ok()
        .and_then(|b| b.try_into().ok())
        .filter(|r: &Hash| STANDARD.encode(r) == *root)
        .ok_or_else(|| bad("root hash is not 32 bytes of base64"))?;
    let time_ms: i64 = time
        .strip_prefix("time ")
        .and_then(|t| t.parse().ok().filter(|n: &i64| n.to_string() == t))
        .ok_or_else(|| bad("fourth line is not `time <ms>`"))?;
    Ok(Checkpoint {
        origin: origin.to_string(),
        size,
        root,
        time_ms,
    })
}

/// What an evidence package carries to show its job is in the tenant's log: the job's leaf
/// index, its inclusion proof, and the signed checkpoint it was proven against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparency {
    pub leaf_index: u64,
    pub inclusion_proof: Vec<Hash>,
    /// The signed checkpoint text.
    pub checkpoint: String,
}

/// The transparency material for leaf `leaf_index` of `tenant`'s log, proven against the
/// log at `tree_size` (`leaves`: the log's leaf hashes in order, at least `tree_size`),
/// with a checkpoint stamped `time_ms` and signed by `key`.
///
/// For byte-identical re-exports, prove against `tree_size = leaf_index + 1` with the
/// time that leaf was appended: that checkpoint never changes, and any later checkpoint
/// can be shown consistent with it.
pub fn prove_job(
    tenant: &str,
    leaves: &[Hash],
    leaf_index: u64,
    tree_size: u64,
    time_ms: i64,
    key: &SigningKey,
) -> Result<Transparency, EvidenceError> {
    let inclusion_proof = merkle::inclusion_proof(leaves, leaf_index, tree_size)?;
    let root = merkle::root_at(leaves, tree_size)?;
    let checkpoint = Checkpoint::for_tenant(tenant, tree_size, root, time_ms).sign(key)?;
    Ok(Transparency {
        leaf_index,
        inclusion_proof,
        checkpoint,
    })
}

/// A consistency proof between two sizes of a log, as a server hands it out (hex hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<String>,
}

impl ConsistencyProof {
    /// The proof that the log's first `old_size` leaves are a prefix of its first `new_size`.
    pub fn prove(leaves: &[Hash], old_size: u64, new_size: u64) -> Result<Self, EvidenceError> {
        Ok(ConsistencyProof {
            old_size,
            new_size,
            proof: merkle::consistency_proof(leaves, old_size, new_size)?
                .iter()
                .map(hex::encode)
                .collect(),
        })
    }
}

/// Two checkpoints shown to be of one log that only grew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyReport {
    pub origin: String,
    pub old_size: u64,
    pub new_size: u64,
    pub old_root: String,
    pub new_root: String,
    pub signer_keyid: String,
}

/// Checks both checkpoints' signatures, that they are of the same log, and that `proof`
/// shows the old tree is a prefix of the new one: nothing in the old log was removed or
/// rewritten. A checkpoint kept by an auditor and a later one that disagree fail here.
pub fn verify_consistency(
    old: &str,
    new: &str,
    proof: &ConsistencyProof,
    public_keys: &[[u8; 32]],
) -> Result<ConsistencyReport, EvidenceError> {
    let bad = |d: String| EvidenceError::Checkpoint(d);
    let old = Checkpoint::verify(old, public_keys).map_err(|e| bad(format!("old: {e}")))?;
    let new = Checkpoint::verify(new, public_keys).map_err(|e| bad(format!("new: {e}")))?;
    let (o, n) = (&old.checkpoint, &new.checkpoint);
    if o.origin != n.origin {
        return Err(bad(format!(
            "the checkpoints are of different logs ({:?} and {:?})",
            o.origin, n.origin
        )));
    }
    if proof.old_size != o.size || proof.new_size != n.size {
        return Err(bad(format!(
            "the proof is between sizes {} and {}, the checkpoints are {} and {}",
            proof.old_size, proof.new_size, o.size, n.size
        )));
    }
    if o.size > n.size {
        return Err(bad(format!(
            "the old checkpoint ({}) is larger than the new one ({}): the log shrank",
            o.size, n.size
        )));
    }
    let hashes = decode_hashes(&proof.proof).map_err(bad)?;
    if !merkle::verify_consistency(o.size, n.size, &o.root, &n.root, &hashes) {
        return Err(bad(format!(
            "the log at size {} is not a prefix of the log at size {}: entries were removed or rewritten",
            o.size, n.size
        )));
    }
    Ok(ConsistencyReport {
        origin: o.origin.clone(),
        old_size: o.size,
        new_size: n.size,
        old_root: STANDARD.encode(o.root),
        new_root: STANDARD.encode(n.root),
        signer_keyid: new.signer_keyid,
    })
}

/// Decodes lower-case hex hashes (at most 64 of them: a proof in a log of 2^64 leaves).
pub(crate) fn decode_hashes(hashes: &[String]) -> Result<Vec<Hash>, String> {
    if hashes.len() > 64 {
        return Err(format!(
            "a proof of {} hashes is longer than any tree needs",
            hashes.len()
        ));
    }
    hashes
        .iter()
        .map(|s| {
            hex::decode(s)
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .filter(|h| hex::encode(h) == *s)
                .ok_or_else(|| format!("{s:?} is not a lower-case hex SHA-256"))
        })
        .collect()
}
