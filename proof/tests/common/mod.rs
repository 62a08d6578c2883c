//! Shared fixtures of the evidence tests: keys, a realistic finished job with its
//! transparency material, packages built from it, and re-signing of altered files (to
//! test what verify does with content a signer vouched for).
#![allow(dead_code)]

use aetheris_proof::checkpoint::{job_leaf_hash, prove_job, Transparency};
use aetheris_proof::dsse::{Envelope, Statement};
use aetheris_proof::evidence::{self, Manifest, PackageFiles, SUBJECTS};
use aetheris_proof::merkle::Hash;
use aetheris_proof::testkit::{realistic_job, JobLog, T0};
use aetheris_proof::{EvidenceInput, LedgerRecord, RedactionRule, SigningKey};
use aetheris_runtime::JobId;
use ring::digest::{digest, SHA256};
use std::str::FromStr;

pub const TENANT: &str = "acme";
pub const EXPORTER: &str = "aetheris 0.1.0";

pub fn key() -> SigningKey {
    SigningKey::from_seed([0x11; 32]).unwrap()
}

pub fn other_key() -> SigningKey {
    SigningKey::from_seed([0x22; 32]).unwrap()
}

pub fn job_id() -> JobId {
    JobId::from_str("0193a5c0-7e11-7cc1-9d2e-5b4f3a2e1d0c").unwrap()
}

/// A finished realistic job, its ledger, and its leaf (index 3) in a tenant log of 6.
pub struct Fixture {
    pub log: JobLog,
    pub ledger: Vec<LedgerRecord>,
    pub leaves: Vec<Hash>,
    pub transparency: Transparency,
}

pub const LEAF_INDEX: u64 = 3;

pub fn fixture() -> Fixture {
    fixture_for(job_id())
}

pub fn fixture_for(id: JobId) -> Fixture {
    let log = realistic_job(id, TENANT).unwrap();
    let ledger = log.ledger();
    let last = log.events.last().unwrap();
    let mut leaves: Vec<Hash> = (0..6u8)
        .map(|i| job_leaf_hash(JobId::from_bytes([i; 16]), 10 + i as u64, &[i; 32]))
        .collect();
    leaves[LEAF_INDEX as usize] = job_leaf_hash(id, last.seq, &last.hash);
    let transparency = prove_job(
        TENANT,
        &leaves,
        LEAF_INDEX,
        LEAF_INDEX + 1,
        last.recorded_at_ms,
        &key(),
    )
    .unwrap();
    Fixture {
        log,
        ledger,
        leaves,
        transparency,
    }
}

impl Fixture {
    pub fn input<'a>(&'a self, rules: &'a [RedactionRule]) -> EvidenceInput<'a> {
        EvidenceInput {
            job_id: self.log.job_id,
            tenant: TENANT,
            events: &self.log.events,
            ledger: &self.ledger,
            exporter: EXPORTER,
            redactions: rules,
            transparency: Some(&self.transparency),
        }
    }

    pub fn package(&self, rules: &[RedactionRule]) -> Vec<u8> {
        aetheris_proof::build(&self.input(rules), &key()).unwrap()
    }
}

pub fn files_of(zip: &[u8]) -> PackageFiles {
    evidence::read_package(zip, &evidence::Limits::default()).unwrap()
}

pub fn zip_of(files: &PackageFiles) -> Vec<u8> {
    evidence::write_package(files).unwrap()
}

/// Re-signs `files` as they are now with `key`: new subject digests, the manifest as the
/// predicate. What a signer would produce if it vouched for these exact bytes.
pub fn resign(files: &mut PackageFiles, key: &SigningKey) {
    let env: Envelope = serde_json::from_slice(&files.envelope).unwrap();
    let payload = base64_decode(&env.payload);
    let mut statement: Statement<serde_json::Value> = serde_json::from_slice(&payload).unwrap();
    for (subject, name) in statement.subject.iter_mut().zip(SUBJECTS) {
        subject.digest.sha256 = hex::encode(digest(&SHA256, files.get(name).unwrap()));
    }
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(&files.manifest) {
        statement.predicate = serde_json::to_value(manifest).unwrap();
    }
    let payload = serde_json::to_vec(&statement).unwrap();
    let mut out = serde_json::to_vec_pretty(&Envelope::sign(&payload, key)).unwrap();
    out.push(b'\n');
    files.envelope = out;
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The line (1-based) of `events.jsonl` that byte `pos` belongs to.
pub fn line_of(events: &[u8], pos: usize) -> u64 {
    events[..pos].iter().filter(|b| **b == b'\n').count() as u64 + 1
}

pub const FINISHED_AT: i64 = T0 + 122_500;
