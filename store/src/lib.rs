//! aetheris-store: the storage contract of Aetheris and its backends.
//!
//! The `Store` trait is the only way the rest of the system touches durable state. Every
//! backend keeps the same invariants, proven by the generic `conformance` suite:
//! - G1: a write is durable (committed and synced) before its future resolves;
//! - gap-free per-job `seq`, each event hash-chained (G7, `aetheris_runtime::chain`);
//! - G3: every append, ledger change and snapshot write for a job is conditional on the
//!   job's current fencing token in the same transaction; stale tokens get `Fenced`;
//! - idempotent submission by (tenant, idempotency_key);
//! - leases: a claim bumps the fencing token; time is the store's clock, never a worker's.
//!
//! Reads that serve a tenant take a `Scope`, so tenant isolation is enforced here and not
//! only in handlers.

pub mod conformance;
mod fair;
pub mod migrate;
pub mod pg_audit;
pub mod pg_commands;
pub mod pg_presence;
pub mod pg_store;
pub mod pg_tenants;
pub mod pg_test;
pub mod pg_users;
pub mod redb_store;

use aetheris_runtime::{EffectClass, JobId, JobStatus, LedgerStatus, Plan, RecordedEvent};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

pub use pg_store::PgStore;
pub use redb_store::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's fencing token is not the job's current one: another worker owns it.
    #[error("fenced: job {job} is held under token {current}, not {presented}")]
    Fenced {
        job: JobId,
        presented: u64,
        current: u64,
    },
    /// The caller's view of the log is stale (expected_last_seq did not match).
    #[error("conflict: job {job} is at seq {actual}, not {expected}")]
    SeqConflict {
        job: JobId,
        expected: u64,
        actual: u64,
    },
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The events would break the ledger state machine or the fold.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The request conflicts with the job's state (e.g. a command for a finished job).
    #[error("conflict: {0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Which tenant a read is for. `System` is for workers and operators of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Tenant(&'a str),
    System,
}

impl Scope<'_> {
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            Scope::System => true,
            Scope::Tenant(t) => *t == tenant,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    pub idempotency_key: Option<String>,
    pub plan: Plan,
    pub input: Value,
}

/// The projection row of a job, kept in the same transaction as its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub tenant: String,
    pub status: JobStatus,
    pub idempotency_key: Option<String>,
    pub last_seq: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    /// Return jobs older than this id (ids are time-ordered; lists are newest first).
    pub before: Option<JobId>,
    pub limit: usize,
}

/// A fenced append: `events` get seqs `expected_last_seq + 1 ..` (planned by
/// `aetheris_runtime::plan_append`, the same in every backend).
pub use aetheris_runtime::Append;

/// The store error for an append the planner refused, as every backend reports it.
pub(crate) fn append_refused<E: Into<StoreError>>(
    job: JobId,
    e: aetheris_runtime::AppendError<E>,
) -> StoreError {
    use aetheris_runtime::AppendError as Refused;
    match e {
        Refused::Fenced { presented, current } => StoreError::Fenced {
            job,
            presented,
            current,
        },
        Refused::SeqConflict { expected, actual } => StoreError::SeqConflict {
            job,
            expected,
            actual,
        },
        Refused::Finished => StoreError::Rejected(format!("job {job} already finished")),
        Refused::SubmittedAgain => StoreError::Rejected("job_submitted cannot be appended".into()),
        Refused::IllegalLedgerMove { step, detail } => {
            StoreError::Rejected(format!("step {step:?}: illegal ledger transition {detail}"))
        }
        Refused::Unencodable { kind } => {
            StoreError::Rejected(format!("{kind} event cannot be serialized"))
        }
        Refused::Lookup(e) => e.into(),
    }
}

impl From<std::convert::Infallible> for StoreError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// What a job actor starts from (`Store::load_job`): the newest snapshot, the events after
/// it (at most the limit asked for, oldest first) and the commands not yet applied, all as
/// of one point in time, so the events continue the snapshot without a gap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobLoad {
    /// `(seq, blob)` of the newest snapshot, if any.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Events with `seq >` the snapshot's seq (or from seq 1 without one).
    pub events: Vec<RecordedEvent>,
    pub commands: Vec<StoredCommand>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub job_id: JobId,
    pub tenant: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEntry {
    pub invocation_key: String,
    pub job_id: JobId,
    pub step: String,
    pub attempt: u32,
    pub effect: EffectClass,
    pub status: LedgerStatus,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCount {
    pub tenant: String,
    pub status: JobStatus,
    pub count: u64,
}

/// A command for a job, stored durably before the gateway answers (G1), then applied by
/// the worker holding the job's lease, which turns it into an event under its fencing
/// token. Serialized as JSON in both stores.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandBody {
    Cancel {
        by: String,
        reason: String,
    },
    /// A signal (e.g. an approval) for `wait` steps named `signal`; applied once per
    /// `signal_id`.
    Signal {
        signal: String,
        signal_id: String,
        payload: serde_json::Value,
        by: Option<String>,
    },
    /// A human's answer for an `outcome_unknown` step.
    Confirm {
        step: String,
        outcome: aetheris_runtime::ConfirmOutcome,
        output: Option<serde_json::Value>,
        by: String,
        note: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredCommand {
    /// Unique per store, increasing.
    pub id: u64,
    pub job_id: JobId,
    pub body: CommandBody,
    pub created_at_ms: i64,
}

/// A tenant as data: its id (the `tenant` claim of tokens), a display name, and its rate
/// limits (a JSON object in the shape of `TenantLimits`, applied without restart).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub limits: serde_json::Value,
    pub created_at_ms: i64,
}

/// A user of a tenant as data: the token `sub` it matches, the roles it may hold, and
/// whether it is disabled. A token for a user with a row acts with the roles it carries
/// that the row also grants, and not at all while the row is disabled; a token for a
/// user without a row acts with its own roles (the issuer vouches for them).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct User {
    pub tenant: String,
    pub id: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What a request's credentials meet in the store: whether the token's tenant exists and
/// the user row of its `sub`, if any. Read in one round trip per request.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub tenant_exists: bool,
    pub user: Option<User>,
}

/// One row of the access audit log, as the caller describes it: who (`actor`, the token's
/// `sub`) did what (`action`, e.g. `job.cancel`) to which `target` in which `tenant`, and
/// the `result` (`ok`, `existing` for an idempotent repeat, `denied` for a refused
/// permission). The store adds the id and the time (its own clock).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

impl AuditEntry {
    /// An entry with result `ok` (the store writes it only if the change commits).
    pub fn ok(tenant: &str, actor: &str, action: &str, target: impl Into<String>) -> Self {
        AuditEntry {
            tenant: tenant.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.into(),
            result: "ok".into(),
        }
    }
}

/// A stored audit row: ids increase in commit order within a store.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which audit rows to read: oldest first, after `after_id`, at most `limit`, optionally
/// of one `action` only.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after_id: u64,
    pub limit: usize,
    pub action: Option<String>,
}

/// Caps on the number of running jobs per tenant, held across all workers: a job counts
/// as running while it is claimable (queued, running, or woken to apply a command) and
/// holds a live lease. `claim_within` never grants a lease that would take a tenant past
/// its cap. `default` applies to tenants without an entry in `tenants`; `None` = no cap.
///
/// `this_claim` (`this_claim_default` for tenants without an entry) limits one claim
/// only: at most that many jobs of the tenant, whatever the caps allow. A worker passes
/// what is left of its own per-tenant share there (it knows its leases, so the store
/// counts nothing), so one tenant's backlog cannot take every slot of a worker and leave
/// another tenant's new job waiting for one (W6).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunningCaps {
    pub default: Option<u64>,
    pub tenants: std::collections::BTreeMap<String, u64>,
    pub this_claim: std::collections::BTreeMap<String, u64>,
    pub this_claim_default: Option<u64>,
}

impl RunningCaps {
    pub fn cap(&self, tenant: &str) -> Option<u64> {
        self.tenants.get(tenant).copied().or(self.default)
    }

    /// The most jobs of `tenant` this claim may lease, caps aside (`None` = no limit).
    pub fn claim_limit(&self, tenant: &str) -> Option<u64> {
        self.this_claim
            .get(tenant)
            .copied()
            .or(self.this_claim_default)
    }

    /// No cap across workers (`this_claim` aside): a claim needs no running count.
    pub fn is_unlimited(&self) -> bool {
        self.default.is_none() && self.tenants.is_empty()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    /// sync; each keeps its own fence and seq check, and fails alone.
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

    /// Claims up to `max` runnable, unleased (or lease-expired) jobs for `worker`, round
    /// robin across tenants, bumping each job's fencing token, and never taking a tenant
    /// past its cap in `caps` (counted across every worker of the store).
    async fn claim_within(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<Lease>>;

    /// `claim_within`, and with each lease its job's [`JobLoad`] when the store could read
    /// it in the same round trip (`None`: the worker calls `load_job`). A load is as of
    /// the claim: the job's whole log (no snapshot) and no pending commands. The default
    /// loads nothing; PostgreSQL preloads short logs (W6: a job then starts after two
    /// round trips, the claim and its first append, instead of three).
    async fn claim_and_load(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<(Lease, Option<JobLoad>)>> {
        let leases = self.claim_within(worker, ttl_ms, max, caps).await?;
        Ok(leases.into_iter().map(|l| (l, None)).collect())
    }

    /// `claim_within` without caps.
    async fn claim(&self, worker: &str, ttl_ms: u64, max: usize) -> Result<Vec<Lease>> {
        self.claim_within(worker, ttl_ms, max, &RunningCaps::default())
            .await
    }
    /// Renews the given leases in one round trip; returns the ones still held.
    async fn heartbeat(
        &self,
        worker: &str,
        ttl_ms: u64,
        held: &[(JobId, u64)],
    ) -> Result<Vec<Lease>>;
    /// Gives leases back so another worker can claim at once (drain, passivation).
    async fn release(&self, worker: &str, held: &[(JobId, u64)]) -> Result<()>;

    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>>;

    /// The store's clock (ms since epoch): the only time source of the system.
    async fn now_ms(&self) -> Result<i64>;

    /// A wake-up hint fired when new work may be claimable (submit, lease release).
    fn work_hint(&self) -> Arc<tokio::sync::Notify>;

    /// Stores a command for a job, durably. A job that is not finished becomes claimable
    /// (even if waiting) until the command is applied, and the command hint fires.
    /// `Conflict` if the job already finished; `NotFound` outside the scope.
    /// With `audit`, its row is written in the same transaction as the command.
    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<StoredCommand>;
    /// The job's commands not yet applied, oldest first.
    async fn pending_commands(&self, id: JobId) -> Result<Vec<StoredCommand>>;

    /// A job's starting point in one call ([`JobLoad`]): its newest snapshot, up to
    /// `event_limit` events after it and its pending commands. `NotFound` for an unknown
    /// job. Unscoped (workers only). The default makes the three reads in turn; a store
    /// whose reads are round trips (PostgreSQL) answers with one, since a job cannot
    /// start before this returns (W6: every round trip queues on a loaded database).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<JobLoad> {
        let snapshot = self.latest_snapshot(id, u64::MAX).await?;
        let after = snapshot.as_ref().map(|(seq, _)| *seq).unwrap_or(0);
        let events = self
            .read_events(Scope::System, id, after, event_limit)
            .await?;
        let commands = self.pending_commands(id).await?;
        Ok(JobLoad {
            snapshot,
            events,
            commands,
        })
    }
    /// Marks commands applied (their events are already appended), fenced.
    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()>;
    /// Job ids that just received a command (a hint: lost while disconnected; workers
    /// also re-check).
    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId>;

    /// Creates a tenant; `Conflict` if the id exists. With `audit`, its row is written in
    /// the same transaction.
    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant>;
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    /// Replaces a tenant's limits; `NotFound`-like `Rejected` if it does not exist.
    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant>;

    /// Creates or replaces the user `id` of `tenant` (keeping its creation time), with
    /// `audit` in the same transaction. `Rejected` if the tenant does not exist.
    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<User>;
    /// The tenant's users, by id.
    async fn list_users(&self, tenant: &str) -> Result<Vec<User>>;
    /// The tenant and user a request's token names (see `Access`).
    async fn access(&self, tenant: &str, user: &str) -> Result<Access>;

    /// Writes an audit row on its own (an attempt that changed nothing, e.g. `denied`).
    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord>;
    /// Audit rows of the scope's tenant (all tenants for `System`), oldest first.
    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Announces the process `id` as a live `kind` until `ttl_ms` from now (the store's
    /// clock) and returns how many processes of that kind are live, itself included
    /// (never 0). Each process takes `1/that` of every tenant's global rate limits.
    async fn announce_process(&self, kind: ProcessKind, id: &str, ttl_ms: u64) -> Result<u32>;
    /// Withdraws the announcement of `id` at once (a draining process), so the others'
    /// shares grow on their next announcement instead of after the TTL.
    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()>;

    /// Bytes used on disk (for the benchmark's W7).
    async fn size_bytes(&self) -> Result<u64>;
}

/// What a live process does, for sharing a tenant's global limits among the processes
/// that enforce them: gateways share admission limits, workers tool-call and LLM limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcessKind {
    Gateway,
    Worker,
}

impl ProcessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Gateway => "gateway",
            ProcessKind::Worker => "worker",
        }
    }
}

/// Live processes kept in memory, for a store that only one OS process can open (the
/// embedded store): announcements expire `ttl_ms` after they were made.
#[derive(Debug, Default)]
pub struct Presence(std::sync::Mutex<std::collections::HashMap<(ProcessKind, String), i64>>);

impl Presence {
    pub fn announce(&self, kind: ProcessKind, id: &str, ttl_ms: u64, now_ms: i64) -> u32 {
        let Ok(mut live) = self.0.lock() else {
            return 1;
        };
        live.retain(|_, expires| *expires > now_ms);
        live.insert(
            (kind, id.to_string()),
            now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
        );
        let n = live.keys().filter(|(k, _)| *k == kind).count();
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    pub fn retire(&self, kind: ProcessKind, id: &str) {
        if let Ok(mut live) = self.0.lock() {
            live.remove(&(kind, id.to_string()));
        }
    }
}

pub type DynStore = Arc<dyn Store>;
