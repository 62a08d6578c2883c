//! Retention: finished jobs past their tenant's retention are deleted in bounded batches
//! (docs/operations.md, "Retention"). The policy comes from the caller (the workers build
//! it from the tenants' limits); the store finds due jobs and deletes them.
//!
//! Invariants every backend keeps (conformance: `retention_*`):
//! - only finished jobs whose terminal event is older than their tenant's retention at the
//!   store clock are deleted, checked again inside the deleting transaction: a queued,
//!   running or waiting job is never touched;
//! - a batch is one transaction: each job's events, ledger rows, snapshots, commands,
//!   idempotency key and job row go together or not at all, also across a crash;
//! - the job's transparency leaf stays, so the tenant's log keeps every leaf and every
//!   older checkpoint stays consistent with the newer ones (a deletion is visible, not
//!   silent); every read of a deleted job answers as for a job that never existed, and its
//!   idempotency key is free again;
//! - deleting is idempotent and safe from several processes at once: a job is deleted
//!   once, by one of them, and the others skip it.

use crate::{DueJob, Result, RetentionPolicy};
use aetheris_runtime::JobId;
use async_trait::async_trait;

#[async_trait]
pub trait Retention: Send + Sync {
    /// Up to `limit` finished jobs past their tenant's retention under `policy`, the most
    /// overdue first, at the store clock. Reads only.
    async fn due_jobs(&self, policy: &RetentionPolicy, limit: usize) -> Result<Vec<DueJob>>;

    /// Deletes, in one transaction, those of `ids` that are finished and past their
    /// tenant's retention under `policy` now; skips the others (gone, unfinished, not due,
    /// or being deleted by another process). Returns the ids it deleted.
    async fn delete_jobs(&self, policy: &RetentionPolicy, ids: &[JobId]) -> Result<Vec<JobId>>;
}
