//! Evidence packages: a job's signed, deterministic, offline-verifiable record.
//!
//! [`build`] turns what the store has for a job (its recorded events, ledger rows, the
//! redaction rules and, for a finished job, its transparency material) into one zip:
//! `events.jsonl`, `ledger.json`, `approvals.json`, `job.json`, `manifest.json` and
//! `envelope.json` (a DSSE envelope over an in-toto Statement whose subjects are the other
//! five files and whose predicate is the manifest). [`verify`] checks such a zip with
//! nothing but public keys. User-facing reference: docs/evidence.md.
//!
//! Invariants:
//! - Determinism: the same input gives the same bytes (fixed file order and time, no host
//!   data, no wall clock: the export time is the store time of the last event).
//! - Every event line carries the exact payload bytes the chain hashed, or for a redacted
//!   payload only `{"redacted":"sha256:<digest>"}`, so the whole chain verifies either way.
//! - `ledger.json`, `approvals.json` and `job.json` are derived from the events by the same
//!   functions at build and at verify time ([`derive`]), so verify can recompute them.
//! - Verify reads a hostile zip with bounded memory ([`Limits`]) and never panics; every
//!   failure names the first failing file, or for the chain the first failing seq.

mod build;
mod derive;
mod lines;
mod redact;
mod verify;
mod zipfmt;

pub use build::build;
pub use redact::{RedactPath, RedactionRule, Selector};
pub use verify::{verify, verify_files, verify_with_limits, CheckpointSummary, VerifyReport};
pub use zipfmt::{read_package, write_package, Limits, PackageFiles};

use aetheris_runtime::{
    ConfirmOutcome, EffectClass, JobId, JobStatus, LedgerRow, LedgerStatus, RecordedEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::checkpoint::Transparency;

/// The files of a package, in archive order (the envelope last).
pub const EVENTS: &str = "events.jsonl";
pub const LEDGER: &str = "ledger.json";
pub const APPROVALS: &str = "approvals.json";
pub const JOB: &str = "job.json";
pub const MANIFEST: &str = "manifest.json";
pub const ENVELOPE: &str = "envelope.json";
pub const FILES: [&str; 6] = [EVENTS, LEDGER, APPROVALS, JOB, MANIFEST, ENVELOPE];
/// The files the signed statement lists as subjects (all but the envelope), in order.
pub const SUBJECTS: [&str; 5] = [EVENTS, LEDGER, APPROVALS, JOB, MANIFEST];

/// The manifest's `format` value.
pub const FORMAT: &str = "aetheris-evidence/1";
/// The statement's predicate type.
pub const PREDICATE_TYPE: &str = "https://aetheris.dev/evidence/v1";

/// What the store hands the exporter for one job.
#[derive(Debug, Clone, Copy)]
pub struct EvidenceInput<'a> {
    pub job_id: JobId,
    pub tenant: &'a str,
    /// The job's whole log from seq 1, as recorded (chain hashes included).
    pub events: &'a [RecordedEvent],
    /// The job's ledger rows as the store keeps them (any order): cross-checked against the
    /// rows the events imply before anything is signed.
    pub ledger: &'a [LedgerRecord],
    /// Who exported: e.g. `aetheris 0.3.0` (goes into the manifest).
    pub exporter: &'a str,
    /// Redaction rules, first match wins: `--redact` options and tenant policy.
    pub redactions: &'a [RedactionRule],
    /// The job's place in its tenant's transparency log (finished jobs only).
    pub transparency: Option<&'a Transparency>,
}

/// One ledger row of `ledger.json`: the store's row for a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    pub step: String,
    pub invocation_key: String,
    pub attempt: u32,
    pub effect: EffectClass,
    pub status: LedgerStatus,
    pub updated_at_ms: i64,
}

impl LedgerRecord {
    pub fn new(step: impl Into<String>, row: &LedgerRow) -> Self {
        LedgerRecord {
            step: step.into(),
            invocation_key: row.invocation_key.clone(),
            attempt: row.attempt,
            effect: row.effect,
            status: row.status,
            updated_at_ms: row.updated_at_ms,
        }
    }
}

/// One entry of `approvals.json`: a human decision or a signal, with who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub seq: u64,
    /// Store time of the event (ms since the epoch).
    pub at_ms: i64,
    /// `signal_received`, `wait_completed`, `step_confirmed` or `job_cancelled`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ConfirmOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<u64>,
    /// The event's payload is redacted: this entry is attested by the signer only (the
    /// chain proves the event's seq, kind and time, not these fields).
    #[serde(default, skip_serializing_if = "is_false")]
    pub redacted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `job.json`: the job as its events define it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub job_id: String,
    pub tenant: String,
    /// Status after the last event.
    pub status: JobStatus,
    pub submitted_at_ms: i64,
    /// Store time of the last event.
    pub updated_at_ms: i64,
    /// The submitted plan (chain-verified unless `input` is redacted).
    pub plan: Value,
    /// `sha256:<hex>` of the job input's JSON text.
    pub input_digest: String,
    /// The submitted `job_submitted` payload is redacted: `plan` and `input_digest` are
    /// attested by the signer only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub submission_redacted: bool,
}

/// `manifest.json`, also the signed statement's predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub job_id: String,
    pub tenant: String,
    pub status: JobStatus,
    /// Always 1: a package holds the whole log.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hex chain hash of the last event.
    pub chain_head: String,
    pub exporter: String,
    /// Store time of the last event: the package states the log as of then (no wall clock,
    /// so every export of the same log is byte-identical).
    pub export_time_ms: i64,
    /// Every redacted event, in seq order.
    pub redactions: Vec<RedactionRecord>,
    /// The job's leaf in its tenant's transparency log, when the job is finished and the
    /// store keeps a log.
    pub transparency: Option<TransparencyRecord>,
}

/// One redacted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionRecord {
    pub seq: u64,
    pub kind: String,
    /// What was redacted: `input`, `output`, `steps.<id>.output` or `signals.<name>.payload`.
    pub path: String,
    pub reason: String,
    /// `sha256:<hex>` of the payload bytes as the chain hashed them.
    pub digest: String,
}

/// The transparency material in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparencyRecord {
    pub leaf_index: u64,
    /// Hex RFC 9162 leaf hash of the job's leaf (see `checkpoint::job_leaf_data`).
    pub leaf_hash: String,
    /// Hex hashes of the inclusion proof, leaf to root.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint text the proof is against.
    pub checkpoint: String,
}
