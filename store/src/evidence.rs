//! Evidence export at the store level, the same for every backend and every caller (the
//! gateway's `GET /v1/jobs/{id}/evidence`, the benchmark, the conformance suite): gather
//! what the store holds for one finished job ([`JobEvidence::gather`]: async, reads only),
//! then build the signed package from it ([`JobEvidence::build`]: sync, CPU-bound; run it
//! off async threads). Also the tenant's signed checkpoint and consistency proofs.
//!
//! Invariants: a package is built only from what the store recorded (the job's whole log,
//! its ledger rows, the tenant's leaves up to and including the job's), proven against the
//! checkpoint of the log at the size it had right after the job's leaf was appended, with
//! that leaf's time, so every export of the same job with the same redactions and key is
//! byte-identical. Only finished jobs are exported; every read is scoped (G6).

use crate::{LogLeaf, Result, Scope, Store, StoreError};
use aetheris_proof::checkpoint::{prove_job, Checkpoint, ConsistencyProof};
use aetheris_proof::{EvidenceError, EvidenceInput, LedgerRecord, RedactionRule, SigningKey};
use aetheris_runtime::{JobId, RecordedEvent};

/// The reason the manifest gives for a redaction asked for at export (`--redact`).
pub const REQUESTED_REASON: &str = "requested at export";

/// Everything a package of one finished job is built from, as the store holds it.
#[derive(Debug, Clone)]
pub struct JobEvidence {
    pub job_id: JobId,
    pub tenant: String,
    /// The whole log, from seq 1.
    pub events: Vec<RecordedEvent>,
    pub ledger: Vec<LedgerRecord>,
    /// Asked-for rules first (each must match something), then the tenant's policy.
    pub redactions: Vec<RedactionRule>,
    /// The job's leaf in its tenant's log.
    pub leaf: LogLeaf,
    /// The tenant's leaf hashes `0..=leaf.index`.
    pub leaves: Vec<[u8; 32]>,
    /// Goes into the manifest (`aetheris <version>`).
    pub exporter: String,
}

impl JobEvidence {
    /// Reads job `id` (in `scope`) for export, with `requested` redaction paths (reason
    /// [`REQUESTED_REASON`]) and the tenant's policy. `NotFound` outside the scope,
    /// `Conflict` for a job that has not finished, `Rejected` for a malformed path,
    /// `Corrupt` when the store's log lacks the job's leaf.
    pub async fn gather(
        store: &dyn Store,
        scope: Scope<'_>,
        id: JobId,
        requested: &[String],
        exporter: &str,
    ) -> Result<JobEvidence> {
        let mut redactions = requested
            .iter()
            .map(|p| RedactionRule::requested(p, REQUESTED_REASON))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        let job = store
            .get_job(scope, id)
            .await?
            .ok_or(StoreError::job_not_found(id))?;
        if !job.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "job {id} is {}: only a finished job (succeeded, failed or cancelled) can be \
                 exported",
                job.status.as_str()
            )));
        }
        // A finished job's log, ledger and leaf never change again: reading them one after
        // another is as good as one snapshot.
        let events = store
            .read_events(
                scope,
                id,
                0,
                usize::try_from(job.last_seq).unwrap_or(usize::MAX),
            )
            .await?;
        let ledger = store
            .ledger(scope, id)
            .await?
            .iter()
            .map(|l| LedgerRecord {
                step: l.step.clone(),
                invocation_key: l.invocation_key.clone(),
                attempt: l.attempt,
                effect: l.effect,
                status: l.status,
                updated_at_ms: l.updated_at_ms,
            })
            .collect();
        for rule in store.evidence_policy(&job.tenant).await? {
            redactions.push(
                RedactionRule::policy(&rule.path, &rule.reason).map_err(|e| {
                    StoreError::Corrupt(format!("evidence policy of {:?}: {e}", job.tenant))
                })?,
            );
        }
        let leaf = store.job_leaf(scope, id).await?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "job {id} finished but has no leaf in the transparency log of tenant {:?}",
                job.tenant
            ))
        })?;
        let log = store
            .log_leaves(&job.tenant, Some(leaf.index.saturating_add(1)))
            .await?;
        if log.last() != Some(&leaf) || log.len() as u64 != leaf.index + 1 {
            return Err(StoreError::Corrupt(format!(
                "job {id}: leaf {} of tenant {:?}'s transparency log is not this job's",
                leaf.index, job.tenant
            )));
        }
        Ok(JobEvidence {
            job_id: id,
            tenant: job.tenant,
            events,
            ledger,
            redactions,
            leaf,
            leaves: log.iter().map(|l| l.leaf_hash).collect(),
            exporter: exporter.to_string(),
        })
    }

    /// The signed package (deterministic: the same evidence and key give the same bytes).
    /// `Redaction` for an asked-for path that matches nothing; `Input` when the stored data
    /// does not hold together (nothing is signed then).
    pub fn build(&self, key: &SigningKey) -> std::result::Result<Vec<u8>, EvidenceError> {
        let transparency = prove_job(
            &self.tenant,
            &self.leaves,
            self.leaf.index,
            self.leaf.index + 1,
            self.leaf.appended_at_ms,
            key,
        )?;
        aetheris_proof::build(
            &EvidenceInput {
                job_id: self.job_id,
                tenant: &self.tenant,
                events: &self.events,
                ledger: &self.ledger,
                exporter: &self.exporter,
                redactions: &self.redactions,
                transparency: Some(&transparency),
            },
            key,
        )
    }
}

/// Exports job `id` in one call: [`JobEvidence::gather`], then [`JobEvidence::build`] on
/// the blocking pool. For callers without a web framework's own (the benchmark, tests).
pub async fn export_job(
    store: &dyn Store,
    scope: Scope<'_>,
    id: JobId,
    requested: &[String],
    exporter: &str,
    key: std::sync::Arc<SigningKey>,
) -> Result<std::result::Result<Vec<u8>, EvidenceError>> {
    let evidence = JobEvidence::gather(store, scope, id, requested, exporter).await?;
    tokio::task::spawn_blocking(move || evidence.build(&key))
        .await
        .map_err(|e| StoreError::Backend(format!("building the package: {e}")))
}

/// A tenant's whole log as of one read: its leaf hashes and the store time of its last leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLog {
    pub tenant: String,
    pub leaves: Vec<[u8; 32]>,
    /// When the log reached its size (0 for an empty log).
    pub time_ms: i64,
}

impl TenantLog {
    /// Reads `tenant`'s whole log.
    pub async fn read(store: &dyn Store, tenant: &str) -> Result<TenantLog> {
        let leaves = store.log_leaves(tenant, None).await?;
        Ok(TenantLog {
            tenant: tenant.to_string(),
            time_ms: leaves.last().map_or(0, |l| l.appended_at_ms),
            leaves: leaves.iter().map(|l| l.leaf_hash).collect(),
        })
    }

    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The signed checkpoint of the whole log (the same bytes for the same size and key,
    /// since its time is its last leaf's).
    pub fn checkpoint(&self, key: &SigningKey) -> std::result::Result<String, EvidenceError> {
        let root = aetheris_proof::merkle::root(&self.leaves);
        Checkpoint::for_tenant(&self.tenant, self.size(), root, self.time_ms).sign(key)
    }

    /// The proof that the log at `old` leaves is a prefix of the log at `new`; `Merkle`
    /// when a size is beyond the log or `old > new`.
    pub fn consistency(
        &self,
        old: u64,
        new: u64,
    ) -> std::result::Result<ConsistencyProof, EvidenceError> {
        ConsistencyProof::prove(&self.leaves, old, new)
    }
}
