//! Offline verification of a package, in this order, stopping at the first failure:
//! 1. the archive, within [`Limits`];
//! 2. `envelope.json`: one signature, by one of the given keys, over the PAE of the
//!    statement; the envelope in its canonical spelling; the statement's types and subjects;
//! 3. `manifest.json`: its digest as signed, equal to the signed predicate;
//! 4. `events.jsonl`: every line canonical, seqs gap-free from 1, each `prev_hash` the hash
//!    before it, each hash recomputed (redacted payloads by their digest), redactions
//!    exactly as the manifest lists them, the head and count as the manifest says; then the
//!    file's digest;
//! 5. `ledger.json`, `approvals.json`, `job.json`: digests as signed, and equal to what the
//!    events imply (entries of redacted events: seq, kind and time);
//! 6. the transparency checkpoint's signature and the job's inclusion proof against it.
//!
//! Errors name the first failing file, or the first failing seq for the chain.

use super::derive::{self, Fold, APPROVAL_KINDS};
use super::lines::{self, Payload};
use super::redact::step_of_path;
use super::zipfmt::{read_package, Limits, PackageFiles};
use super::{
    Approval, JobRecord, LedgerRecord, Manifest, RedactionRecord, APPROVALS, ENVELOPE, EVENTS,
    FORMAT, JOB, LEDGER, MANIFEST, PREDICATE_TYPE, SUBJECTS,
};
use crate::checkpoint::{decode_hashes, job_leaf_hash, origin_for, Checkpoint};
use crate::dsse::{Envelope, Statement, STATEMENT_TYPE};
use crate::error::EvidenceError;
use crate::merkle;
use aetheris_runtime::chain::{canonical_header, link, payload_digest, GENESIS};
use aetheris_runtime::{EventBody, JobId, JobStatus};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr as _;

/// What a valid package shows (the CLI prints [`VerifyReport::summary`] or this as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Always `valid` (an invalid package is an error).
    pub verdict: String,
    pub job_id: String,
    pub tenant: String,
    pub status: JobStatus,
    pub events: u64,
    /// Hex chain hash of the last event.
    pub chain_head: String,
    pub signer_keyid: String,
    pub exporter: String,
    pub export_time_ms: i64,
    pub redactions: Vec<RedactionRecord>,
    pub approvals: usize,
    pub ledger_rows: usize,
    pub checkpoint: Option<CheckpointSummary>,
}

/// The transparency checkpoint a package was proven against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointSummary {
    pub origin: String,
    pub tree_size: u64,
    /// Standard base64, as in the checkpoint text.
    pub root_hash: String,
    pub time_ms: i64,
    pub leaf_index: u64,
    pub signer_keyid: String,
}

impl VerifyReport {
    /// A short human summary, one fact per line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "verdict:     VALID (signature, file digests and hash chain hold)"
        );
        let _ = writeln!(
            s,
            "job:         {} (tenant {}, {})",
            self.job_id,
            self.tenant,
            status_str(self.status)
        );
        let _ = writeln!(s, "events:      {} (seq 1..{})", self.events, self.events);
        let _ = writeln!(s, "chain head:  {}", self.chain_head);
        let _ = writeln!(s, "signed by:   key {}", self.signer_keyid);
        let _ = writeln!(
            s,
            "exported by: {} (as of store time {} ms)",
            self.exporter, self.export_time_ms
        );
        let _ = writeln!(
            s,
            "approvals:   {}; ledger rows: {}",
            self.approvals, self.ledger_rows
        );
        if self.redactions.is_empty() {
            let _ = writeln!(s, "redactions:  none");
        } else {
            let _ = writeln!(s, "redactions:  {}", self.redactions.len());
            for r in &self.redactions {
                let _ = writeln!(s, "  seq {} {} ({}): {}", r.seq, r.path, r.kind, r.reason);
            }
        }
        match &self.checkpoint {
            None => {
                let _ = writeln!(
                    s,
                    "checkpoint:  none (the package carries no transparency proof)"
                );
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "checkpoint:  leaf {} of {} at size {} (root {}), signed by key {}",
                    c.leaf_index, c.origin, c.tree_size, c.root_hash, c.signer_keyid
                );
            }
        }
        s
    }
}

fn status_str(s: JobStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Verifies a package zip against any of `public_keys`, with the default [`Limits`].
pub fn verify(zip: &[u8], public_keys: &[[u8; 32]]) -> Result<VerifyReport, EvidenceError> {
    verify_with_limits(zip, public_keys, &Limits::default())
}

/// [`verify`] with other caps on the archive.
pub fn verify_with_limits(
    zip: &[u8],
    public_keys: &[[u8; 32]],
    limits: &Limits,
) -> Result<VerifyReport, EvidenceError> {
    if public_keys.is_empty() {
        return Err(EvidenceError::Key("no public key to verify with".into()));
    }
    verify_files(&read_package(zip, limits)?, public_keys)
}

fn parse<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, EvidenceError> {
    serde_json::from_slice(bytes).map_err(|e| EvidenceError::file(file, format!("malformed: {e}")))
}

/// The signed statement, checked: our types, our subjects in order.
fn open_statement(
    files: &PackageFiles,
    public_keys: &[[u8; 32]],
) -> Result<(Statement<Manifest>, String), EvidenceError> {
    let bad = |d: String| EvidenceError::file(ENVELOPE, d);
    let opened = Envelope::open(&files.envelope, public_keys)?;
    // The envelope is not covered by a digest: hold it to its one spelling instead, so
    // no byte of it can change unnoticed.
    let env: Envelope = parse(ENVELOPE, &files.envelope)?;
    let mut canonical = serde_json::to_vec_pretty(&env).map_err(|e| bad(e.to_string()))?;
    canonical.push(b'\n');
    if canonical != files.envelope {
        return Err(bad(
            "not in its canonical form (spacing or spelling changed)".into(),
        ));
    }
    let statement: Statement<Manifest> = serde_json::from_slice(&opened.payload)
        .map_err(|e| bad(format!("the signed statement is malformed: {e}")))?;
    if statement.statement_type != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return Err(bad(format!(
            "statement type {:?} / predicate type {:?}, expected {STATEMENT_TYPE:?} / {PREDICATE_TYPE:?}",
            statement.statement_type, statement.predicate_type
        )));
    }
    let names: Vec<&str> = statement.subject.iter().map(|s| s.name.as_str()).collect();
    if names != SUBJECTS {
        return Err(bad(format!(
            "the statement's subjects are {names:?}, expected {SUBJECTS:?}"
        )));
    }
    Ok((statement, opened.signer_keyid))
}

fn check_digest(
    files: &PackageFiles,
    statement: &Statement<Manifest>,
    name: &str,
) -> Result<(), EvidenceError> {
    let bytes = files.get(name).map(Vec::as_slice).unwrap_or_default();
    let actual = hex::encode(digest(&SHA256, bytes));
    let signed = statement
        .subject
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.digest.sha256.as_str());
    if signed != Some(actual.as_str()) {
        return Err(EvidenceError::file(
            name,
            "its SHA-256 differs from the digest in the signed statement (the file was changed)",
        ));
    }
    Ok(())
}

/// What `approvals.json` must hold for one event.
enum ApprovalSlot {
    /// Derived from the (unredacted) event.
    Exact(Approval),
    /// A redacted event: the entry's seq, kind and time are all the chain shows.
    Redacted { seq: u64, at_ms: i64, kind: String },
}

/// What the chain walk yields.
struct Walk {
    fold: Fold,
    head: [u8; 32],
    count: u64,
    first_at: i64,
    last_at: i64,
    submission: Option<EventBody>,
    approvals: Vec<ApprovalSlot>,
}

/// Verifies the files of a package (already read from the archive).
pub fn verify_files(
    files: &PackageFiles,
    public_keys: &[[u8; 32]],
) -> Result<VerifyReport, EvidenceError> {
    let (statement, signer_keyid) = open_statement(files, public_keys)?;

    check_digest(files, &statement, MANIFEST)?;
    let manifest: Manifest = parse(MANIFEST, &files.manifest)?;
    let bad_manifest = |d: String| EvidenceError::file(MANIFEST, d);
    if manifest != statement.predicate {
        return Err(bad_manifest(
            "differs from the signed statement's predicate".into(),
        ));
    }
    if manifest.format != FORMAT || manifest.first_seq != 1 || manifest.last_seq == 0 {
        return Err(bad_manifest(format!(
            "format {:?} with seqs {}..{}; expected {FORMAT:?} from seq 1",
            manifest.format, manifest.first_seq, manifest.last_seq
        )));
    }
    let job_id = JobId::from_str(&manifest.job_id)
        .map_err(|_| bad_manifest(format!("job id {:?} is not a UUID", manifest.job_id)))?;
    let redactions = redaction_index(&manifest)?;

    let walk = walk_chain(&files.events, job_id, &redactions)?;
    if walk.count != manifest.last_seq {
        return Err(EvidenceError::event(
            walk.count.min(manifest.last_seq) + 1,
            format!(
                "events.jsonl ends at seq {}; the manifest says {} (events removed or added at the end)",
                walk.count, manifest.last_seq
            ),
        ));
    }
    if hex::encode(walk.head) != manifest.chain_head {
        return Err(EvidenceError::event(
            walk.count,
            "the chain's head differs from the manifest's chain_head",
        ));
    }
    check_digest(files, &statement, EVENTS)?;

    check_digest(files, &statement, LEDGER)?;
    let ledger: Vec<LedgerRecord> = parse(LEDGER, &files.ledger)?;
    let implied = walk.fold.ledger();
    if ledger != implied {
        let step = implied
            .iter()
            .zip(&ledger)
            .find(|(a, b)| a != b)
            .map(|(a, _)| a.step.clone())
            .unwrap_or_else(|| format!("(row count {} vs {})", ledger.len(), implied.len()));
        return Err(EvidenceError::file(
            LEDGER,
            format!("the row for step {step} is not what the events imply"),
        ));
    }

    check_digest(files, &statement, APPROVALS)?;
    let approvals: Vec<Approval> = parse(APPROVALS, &files.approvals)?;
    check_approvals(&approvals, &walk.approvals)?;

    check_digest(files, &statement, JOB)?;
    let job: JobRecord = parse(JOB, &files.job)?;
    check_job(&job, &manifest, &walk)?;

    if let Some(EventBody::JobSubmitted { tenant, .. }) = &walk.submission {
        if *tenant != manifest.tenant {
            return Err(bad_manifest(format!(
                "tenant {:?}, but the job was submitted by {tenant:?}",
                manifest.tenant
            )));
        }
    }
    if manifest.status != walk.fold.status() || manifest.export_time_ms != walk.last_at {
        return Err(bad_manifest(
            "status or export time differs from what the events say".into(),
        ));
    }
    let checkpoint = check_transparency(&manifest, job_id, &walk.head, public_keys)?;

    Ok(VerifyReport {
        verdict: "valid".into(),
        job_id: manifest.job_id,
        tenant: manifest.tenant,
        status: manifest.status,
        events: manifest.last_seq,
        chain_head: manifest.chain_head,
        signer_keyid,
        exporter: manifest.exporter,
        export_time_ms: manifest.export_time_ms,
        redactions: manifest.redactions,
        approvals: approvals.len(),
        ledger_rows: ledger.len(),
        checkpoint,
    })
}

/// The manifest's redactions by seq: strictly increasing, each within the log.
fn redaction_index(manifest: &Manifest) -> Result<BTreeMap<u64, &RedactionRecord>, EvidenceError> {
    let mut out = BTreeMap::new();
    let mut last = 0;
    for r in &manifest.redactions {
        if r.seq <= last || r.seq > manifest.last_seq {
            return Err(EvidenceError::file(
                MANIFEST,
                format!(
                    "redaction of seq {} is out of order or outside the log",
                    r.seq
                ),
            ));
        }
        last = r.seq;
        out.insert(r.seq, r);
    }
    Ok(out)
}

/// Walks `events.jsonl` from seq 1, checking the chain and folding the events.
fn walk_chain(
    file: &[u8],
    job_id: JobId,
    redactions: &BTreeMap<u64, &RedactionRecord>,
) -> Result<Walk, EvidenceError> {
    let mut walk = Walk {
        fold: Fold::default(),
        head: GENESIS,
        count: 0,
        first_at: 0,
        last_at: 0,
        submission: None,
        approvals: Vec::new(),
    };
    for (i, (raw, terminated)) in lines::split(file).into_iter().enumerate() {
        let pos = i as u64 + 1;
        let bad = |d: String| EvidenceError::event(pos, d);
        let line = lines::decode(pos, raw)?;
        if !terminated {
            return Err(bad("the last line does not end with a newline".into()));
        }
        if line.seq != pos {
            return Err(bad(format!(
                "found seq {} where seq {pos} belongs (an event is missing, inserted or out of order)",
                line.seq
            )));
        }
        if line.prev_hash != walk.head {
            return Err(bad(
                "prev_hash is not the hash of the event before it".into()
            ));
        }
        let digest = match line.payload {
            Payload::Full(bytes) => payload_digest(bytes),
            Payload::Redacted(d) => d,
        };
        let header = canonical_header(job_id, pos, line.recorded_at_ms, &line.kind);
        let hash = link(&walk.head, &header, &digest);
        if hash != line.hash {
            return Err(bad(
                "the event's contents do not match its hash (altered)".into()
            ));
        }
        let listed = redactions.get(&pos);
        let body = match (line.payload, listed) {
            (Payload::Full(bytes), None) => {
                let body: EventBody = serde_json::from_slice(bytes)
                    .map_err(|e| bad(format!("the payload is not a valid event: {e}")))?;
                if body.kind() != line.kind {
                    return Err(bad(format!(
                        "the payload is a {} event, the line says {}",
                        body.kind(),
                        line.kind
                    )));
                }
                body
            }
            (Payload::Redacted(d), Some(r)) => {
                if r.kind != line.kind || r.digest != format!("sha256:{}", hex::encode(d)) {
                    return Err(bad(
                        "the redaction differs from the manifest's entry for it".into(),
                    ));
                }
                derive::placeholder(&line.kind, step_of_path(&r.path))
                    .ok_or_else(|| bad(format!("a {} event cannot be redacted", line.kind)))?
            }
            (Payload::Full(_), Some(_)) => {
                return Err(bad(
                    "the manifest lists it as redacted, but it carries its payload".into(),
                ))
            }
            (Payload::Redacted(_), None) => {
                return Err(bad("redacted, but the manifest does not list it".into()))
            }
        };
        let redacted = listed.is_some();
        if pos == 1 {
            if !matches!(body, EventBody::JobSubmitted { .. }) {
                return Err(bad("seq 1 is not job_submitted".into()));
            }
            walk.first_at = line.recorded_at_ms;
            if !redacted {
                walk.submission = Some(body.clone());
            }
        } else if matches!(body, EventBody::JobSubmitted { .. }) {
            return Err(bad("job_submitted after seq 1".into()));
        }
        walk.fold.apply(line.recorded_at_ms, &body).map_err(bad)?;
        let slot = if !APPROVAL_KINDS.contains(&line.kind.as_str()) {
            None
        } else if redacted {
            Some(ApprovalSlot::Redacted {
                seq: pos,
                at_ms: line.recorded_at_ms,
                kind: line.kind.clone(),
            })
        } else {
            derive::approval_of(pos, line.recorded_at_ms, &body, false).map(ApprovalSlot::Exact)
        };
        walk.approvals.extend(slot);
        walk.head = hash;
        walk.count = pos;
        walk.last_at = line.recorded_at_ms;
    }
    Ok(walk)
}

fn check_approvals(found: &[Approval], expected: &[ApprovalSlot]) -> Result<(), EvidenceError> {
    for (i, slot) in expected.iter().enumerate() {
        let entry = found.get(i);
        let ok = match (slot, entry) {
            (ApprovalSlot::Exact(a), Some(e)) => a == e,
            (ApprovalSlot::Redacted { seq, at_ms, kind }, Some(e)) => {
                e.seq == *seq && e.at_ms == *at_ms && e.kind == *kind && e.redacted
            }
            (_, None) => false,
        };
        if !ok {
            let seq = match slot {
                ApprovalSlot::Exact(a) => a.seq,
                ApprovalSlot::Redacted { seq, .. } => *seq,
            };
            return Err(EvidenceError::file(
                APPROVALS,
                format!("entry {i} is not what the event at seq {seq} says"),
            ));
        }
    }
    if found.len() != expected.len() {
        return Err(EvidenceError::file(
            APPROVALS,
            format!(
                "{} entries; the events have {}",
                found.len(),
                expected.len()
            ),
        ));
    }
    Ok(())
}

fn check_job(job: &JobRecord, manifest: &Manifest, walk: &Walk) -> Result<(), EvidenceError> {
    let bad =
        |what: &str| EvidenceError::file(JOB, format!("{what} differs from what the events say"));
    if job.job_id != manifest.job_id || job.tenant != manifest.tenant {
        return Err(bad("job id or tenant"));
    }
    if job.status != walk.fold.status() {
        return Err(bad("status"));
    }
    if job.submitted_at_ms != walk.first_at || job.updated_at_ms != walk.last_at {
        return Err(bad("a time"));
    }
    match &walk.submission {
        Some(EventBody::JobSubmitted { plan, input, .. }) => {
            let plan = serde_json::to_value(plan).map_err(|_| bad("plan"))?;
            if job.plan != plan
                || job.input_digest != derive::input_digest(input)
                || job.submission_redacted
            {
                return Err(bad("plan or input digest"));
            }
        }
        _ if !job.submission_redacted => return Err(bad("submission_redacted")),
        _ => {}
    }
    Ok(())
}

fn check_transparency(
    manifest: &Manifest,
    job_id: JobId,
    head: &[u8; 32],
    public_keys: &[[u8; 32]],
) -> Result<Option<CheckpointSummary>, EvidenceError> {
    let Some(t) = &manifest.transparency else {
        return Ok(None);
    };
    let bad = |d: String| EvidenceError::file(MANIFEST, format!("transparency: {d}"));
    let verified =
        Checkpoint::verify(&t.checkpoint, public_keys).map_err(|e| bad(e.to_string()))?;
    let cp = &verified.checkpoint;
    if cp.origin != origin_for(&manifest.tenant) {
        return Err(bad(format!(
            "the checkpoint is of log {:?}, not this tenant's",
            cp.origin
        )));
    }
    let leaf = job_leaf_hash(job_id, manifest.last_seq, head);
    if hex::encode(leaf) != t.leaf_hash {
        return Err(bad("leaf_hash is not the hash of this job's leaf".into()));
    }
    let proof = decode_hashes(&t.inclusion_proof).map_err(bad)?;
    if !merkle::verify_inclusion(&leaf, t.leaf_index, cp.size, &proof, &cp.root) {
        return Err(bad(format!(
            "the inclusion proof of leaf {} does not hold against the checkpoint of size {}",
            t.leaf_index, cp.size
        )));
    }
    Ok(Some(CheckpointSummary {
        origin: cp.origin.clone(),
        tree_size: cp.size,
        root_hash: STANDARD.encode(cp.root),
        time_ms: cp.time_ms,
        leaf_index: t.leaf_index,
        signer_keyid: verified.signer_keyid,
    }))
}
