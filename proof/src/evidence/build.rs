//! Export: the store's data for one job → a signed, deterministic package. Nothing is
//! signed unless the data is sound: the stored chain verifies, the first event is the
//! job's submission for this tenant, the store's ledger rows are exactly what the events
//! imply, and the transparency proof (if any) holds against its checkpoint.

use super::derive::{self, Fold};
use super::lines;
use super::redact::{self, Redacted};
use super::zipfmt::{write_package, PackageFiles};
use super::{
    Approval, EvidenceInput, JobRecord, LedgerRecord, Manifest, RedactionRecord,
    TransparencyRecord, FORMAT, PREDICATE_TYPE, SUBJECTS,
};
use crate::checkpoint::{self, job_leaf_hash, origin_for};
use crate::dsse::{Envelope, Statement, Subject, SubjectDigest, STATEMENT_TYPE};
use crate::error::EvidenceError;
use crate::keys::SigningKey;
use crate::merkle;
use aetheris_runtime::{EventBody, RecordedEvent};
use ring::digest::{digest, SHA256};
use serde::Serialize;

/// Builds the package zip for `input`, signed by `key` (see the module docs of
/// `evidence`). The same input and key give the same bytes.
pub fn build(input: &EvidenceInput<'_>, key: &SigningKey) -> Result<Vec<u8>, EvidenceError> {
    write_package(&build_files(input, key)?)
}

fn refuse(d: impl Into<String>) -> EvidenceError {
    EvidenceError::Input(d.into())
}

pub(crate) fn build_files(
    input: &EvidenceInput<'_>,
    key: &SigningKey,
) -> Result<PackageFiles, EvidenceError> {
    let events = input.events;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(refuse("the job has no events"));
    };
    let head = crate::verify_chain(input.job_id, events)
        .map_err(|e| refuse(format!("the stored chain does not verify: {e}")))?;
    let EventBody::JobSubmitted {
        tenant,
        plan,
        input: job_input,
        ..
    } = &first.body
    else {
        return Err(refuse("seq 1 is not job_submitted"));
    };
    if tenant != input.tenant {
        return Err(refuse(format!(
            "the job was submitted by tenant {tenant:?}, not {:?}",
            input.tenant
        )));
    }
    let redactions = redact::plan(events, input.redactions)?;

    let (events_file, redaction_records) = events_file(events, &redactions)?;
    let mut fold = Fold::default();
    for e in events {
        fold.apply(e.recorded_at_ms, &e.body)
            .map_err(|d| refuse(format!("seq {}: {d}", e.seq)))?;
    }
    let ledger = checked_ledger(fold.ledger(), input.ledger)?;
    let approvals: Vec<Approval> = events
        .iter()
        .zip(&redactions)
        .filter_map(|(e, r)| derive::approval_of(e.seq, e.recorded_at_ms, &e.body, r.is_some()))
        .collect();
    let job = JobRecord {
        job_id: input.job_id.to_string(),
        tenant: tenant.clone(),
        status: fold.status(),
        submitted_at_ms: first.recorded_at_ms,
        updated_at_ms: last.recorded_at_ms,
        plan: serde_json::to_value(plan).map_err(|e| refuse(format!("plan: {e}")))?,
        input_digest: derive::input_digest(job_input),
        submission_redacted: redactions[0].is_some(),
    };
    let transparency = input
        .transparency
        .map(|t| transparency_record(input, last.seq, &head, t))
        .transpose()?;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        job_id: input.job_id.to_string(),
        tenant: tenant.clone(),
        status: fold.status(),
        first_seq: 1,
        last_seq: last.seq,
        chain_head: hex::encode(head),
        exporter: input.exporter.to_string(),
        export_time_ms: last.recorded_at_ms,
        redactions: redaction_records,
        transparency,
    };
    let mut files = PackageFiles {
        events: events_file,
        ledger: pretty(&ledger)?,
        approvals: pretty(&approvals)?,
        job: pretty(&job)?,
        manifest: pretty(&manifest)?,
        envelope: Vec::new(),
    };
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject: SUBJECTS
            .iter()
            .map(|name| Subject {
                name: name.to_string(),
                digest: SubjectDigest {
                    sha256: hex::encode(digest(
                        &SHA256,
                        files.get(name).map(Vec::as_slice).unwrap_or_default(),
                    )),
                },
            })
            .collect(),
        predicate_type: PREDICATE_TYPE.to_string(),
        predicate: manifest,
    };
    let payload = serde_json::to_vec(&statement).map_err(|e| refuse(e.to_string()))?;
    files.envelope = pretty(&Envelope::sign(&payload, key))?;
    Ok(files)
}

/// Pretty JSON and a final newline: readable by an auditor, deterministic for us.
fn pretty<T: Serialize>(value: &T) -> Result<Vec<u8>, EvidenceError> {
    let mut out = serde_json::to_vec_pretty(value).map_err(|e| refuse(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// `events.jsonl` and the manifest's redaction list.
fn events_file(
    events: &[RecordedEvent],
    redactions: &[Option<Redacted>],
) -> Result<(Vec<u8>, Vec<RedactionRecord>), EvidenceError> {
    let mut out = Vec::with_capacity(events.len() * 400);
    let mut records = Vec::new();
    for (e, r) in events.iter().zip(redactions) {
        let payload = e.body.payload();
        if payload.is_empty() {
            return Err(refuse(format!(
                "seq {}: the payload cannot be encoded",
                e.seq
            )));
        }
        match r {
            None => lines::encode(&mut out, e, &payload),
            Some(r) => {
                let d = aetheris_runtime::chain::payload_digest(&payload);
                lines::encode(&mut out, e, lines::redaction_marker(&d).as_bytes());
                records.push(RedactionRecord {
                    seq: e.seq,
                    kind: e.body.kind().to_string(),
                    path: r.path.clone(),
                    reason: r.reason.clone(),
                    digest: format!("sha256:{}", hex::encode(d)),
                });
            }
        }
    }
    Ok((out, records))
}

/// The ledger the events imply, which must be exactly the store's rows.
fn checked_ledger(
    implied: Vec<LedgerRecord>,
    stored: &[LedgerRecord],
) -> Result<Vec<LedgerRecord>, EvidenceError> {
    let mut stored = stored.to_vec();
    stored.sort_by(|a, b| a.step.cmp(&b.step));
    if let Some(step) = implied
        .iter()
        .zip(&stored)
        .find(|(a, b)| a != b)
        .map(|(a, _)| a.step.clone())
        .or_else(|| {
            (implied.len() != stored.len()).then(|| {
                let longer = if implied.len() > stored.len() {
                    &implied
                } else {
                    &stored
                };
                longer[implied.len().min(stored.len())].step.clone()
            })
        })
    {
        return Err(refuse(format!(
            "the store's ledger row for step {step:?} is not what the job's events imply"
        )));
    }
    Ok(implied)
}

fn transparency_record(
    input: &EvidenceInput<'_>,
    last_seq: u64,
    head: &[u8; 32],
    t: &checkpoint::Transparency,
) -> Result<TransparencyRecord, EvidenceError> {
    let cp = checkpoint::parse_note_body(&t.checkpoint)?;
    if cp.origin != origin_for(input.tenant) {
        return Err(refuse(format!(
            "the checkpoint is of log {:?}, not this tenant's",
            cp.origin
        )));
    }
    let leaf = job_leaf_hash(input.job_id, last_seq, head);
    if !merkle::verify_inclusion(&leaf, t.leaf_index, cp.size, &t.inclusion_proof, &cp.root) {
        return Err(refuse(format!(
            "the inclusion proof of leaf {} does not hold against the checkpoint of size {}",
            t.leaf_index, cp.size
        )));
    }
    Ok(TransparencyRecord {
        leaf_index: t.leaf_index,
        leaf_hash: hex::encode(leaf),
        inclusion_proof: t.inclusion_proof.iter().map(hex::encode).collect(),
        checkpoint: t.checkpoint.clone(),
    })
}
