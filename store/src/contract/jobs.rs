//! The job log: submission, the projection row, events, snapshots and the ledger.

use crate::{
    Append, AuditEntry, JobLoad, JobSummary, LedgerEntry, ListFilter, NewJob, Result, Scope,
    StatusCount, StoreError,
};
use aetheris_runtime::{JobId, RecordedEvent};
use async_trait::async_trait;

#[async_trait]
pub trait JobLog: Send + Sync {
    /// Stores a new job (seq 1 = `job_submitted`) durably, or returns the existing job for
    /// a repeated (tenant, idempotency_key) with `created == false`. With `audit`, an
    /// audit row is written in the same transaction, its `target` set to the job id and
    /// its `result` to `ok` (created) or `existing`.
    async fn submit(&self, job: NewJob, audit: Option<&AuditEntry>) -> Result<(JobSummary, bool)>;

    async fn get_job(&self, scope: Scope<'_>, id: JobId) -> Result<Option<JobSummary>>;
    async fn list_jobs(&self, scope: Scope<'_>, filter: ListFilter) -> Result<Vec<JobSummary>>;
    async fn count_by_status(&self) -> Result<Vec<StatusCount>>;

    /// Events with `seq > after_seq`, at most `limit`, in order. Scoped: another tenant's
    /// job reads as `NotFound`.
    async fn read_events(
        &self,
        scope: Scope<'_>,
        id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Fenced appends from many jobs, committed together (group commit) with one durable
    /// sync; each keeps its own fence and seq check, and fails alone. Every backend plans
    /// each append with `aetheris_runtime::plan_append`. An append that leaves its job
    /// finished (succeeded, failed or cancelled) also gives the job's lease back in the
    /// same transaction, so its holder need not release it (one write per job fewer); the
    /// token stays, and the holder's heartbeat reports the job as finished (`Leases`).
    async fn append_many(&self, batch: Vec<Append>) -> Result<Vec<Result<Vec<RecordedEvent>>>>;

    async fn append(&self, a: Append) -> Result<Vec<RecordedEvent>> {
        let mut r = self.append_many(vec![a]).await?;
        r.pop()
            .unwrap_or_else(|| Err(StoreError::Backend("empty batch result".into())))
    }

    /// Stores a snapshot of the state at `seq`, fenced.
    async fn put_snapshot(&self, id: JobId, token: u64, seq: u64, blob: Vec<u8>) -> Result<()>;
    /// The newest snapshot at or below `max_seq`.
    async fn latest_snapshot(&self, id: JobId, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>>;

    /// A job's starting point in one call ([`JobLoad`]): its newest snapshot, up to
    /// `event_limit` events after it and its pending commands, as of one point in time.
    /// `NotFound` for an unknown job. Unscoped (workers only). A store whose reads are
    /// round trips (PostgreSQL) answers with one, since a job cannot start before this
    /// returns (W6: every round trip queues on a loaded database).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<JobLoad>;

    /// The job's ledger rows. Scoped like `read_events`.
    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>>;

    /// Bytes used on disk (for the benchmark's W7).
    async fn size_bytes(&self) -> Result<u64>;
}
