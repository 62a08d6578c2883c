//! The embedded store on redb, for `aetheris dev` and single-machine use.
//!
//! All writes go through one writer thread that drains its queue into a single redb write
//! transaction and commits it with `Durability::Immediate` (fsync) before answering anyone:
//! group commit across jobs, each operation keeping its own fence and seq checks (G1, G3).
//! The writer serves its queue fairly (`crate::fair::FairQueue`): the deployment's
//! operations first, then tenants in turn (each capped per commit while several are
//! active), so one tenant's flood of writes does not queue ahead of another tenant's next
//! write. Claims run last in their commit, so they can lease jobs submitted in it.
//! An operation validates everything before it writes, so one rejected operation never
//! leaves partial writes in the shared transaction. Reads use redb's MVCC read
//! transactions on the blocking pool. The writer's clock is the store clock (monotonic
//! within the process).

use crate::fair::{FairQueue, JobTenants};
use crate::{
    append_refused, backend, Access, Append, AuditEntry, AuditFilter, AuditRecord, CommandBody,
    JobSummary, Lease, LedgerEntry, ListFilter, NewJob, Result, RunningCaps, Scope, StatusCount,
    Store, StoreError, StoredCommand, Tenant, User,
};
use aetheris_runtime::chain::{event_hash, GENESIS};
use aetheris_runtime::codec::{decode_versioned, encode_versioned};
use aetheris_runtime::{
    plan_append, EventBody, JobHead, JobId, JobStatus, LedgerRow, RecordedEvent, TimerChange,
};
use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshots");
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// Claimable jobs by tenant: tenant ‖ 0x00 ‖ job (16) → (). A claim seeks from tenant to
/// tenant and reads only the head of each tenant's range, so its cost does not grow with
/// a tenant's backlog.
const RUNNABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("runnable_by_tenant");
/// The first layout of the claimable set (job → tenant); migrated on open.
const RUNNABLE_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("runnable");
/// Claimable jobs that hold a lease: tenant ‖ 0x00 ‖ job (16) → lease expiry (8, BE).
/// Claims skip the live ones and count them for `RunningCaps`.
const LEASED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leased");
const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
/// Unapplied commands: job (16) ‖ command id (8, BE) → created_at (8, BE) ‖ JSON body.
const COMMANDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("commands");
/// Parked jobs' wake-up times: job (16) → wake_at (8, BE), and the due index
/// wake_at (8, BE, sign bit flipped) ‖ job (16) → () scanned by claims.
const TIMERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("timers");
const DUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("due");
/// Tenants: id → JSON of `Tenant`.
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// The access audit log: tenant ‖ 0x00 ‖ id (8, BE) → JSON of `AuditRecord`, so a
/// tenant's rows are one range in id order (tenant ids never contain 0x00).
const AUDIT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("access_audit_log");
/// Users: tenant ‖ 0x00 ‖ id → JSON of `User` (a tenant's users are one range).
const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
/// Counters: "command_seq", "audit_seq" → u64 (BE).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const ROW_FORMAT_V1: u8 = 1;
/// Most operations folded into one commit.
const MAX_BATCH: usize = 128;
/// A tenant's operations per commit while other tenants are active too (`FairQueue`). A
/// commit here costs ~0.3-0.5 ms (fsync) plus ~15-20 µs per operation: with 8 per tenant
/// a flood's commits take ~0.6 ms instead of ~4 ms at 128, and that is about what another
/// tenant's write waits for (W6); the flooding tenant pays with smaller commits while it
/// shares the store.
const CONTENDED_QUOTA: usize = 8;

/// The job row: the projection of a job's events plus its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRow {
    tenant: String,
    status: JobStatus,
    idempotency_key: Option<String>,
    last_seq: u64,
    last_hash: [u8; 32],
    created_at_ms: i64,
    updated_at_ms: i64,
    token: u64,
    lease_owner: Option<String>,
    lease_expires_ms: i64,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    encode_versioned(ROW_FORMAT_V1, v).map_err(|e| StoreError::Corrupt(e.to_string()))
}
fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    decode_versioned(ROW_FORMAT_V1, b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn seq_key(job: JobId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(job.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn ledger_key(job: JobId, step: &str) -> Vec<u8> {
    let mut k = job.as_bytes().to_vec();
    k.extend_from_slice(step.as_bytes());
    k
}

fn idem_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Stored event value: recorded_at (8, BE) ‖ prev_hash (32) ‖ hash (32) ‖ payload JSON.
fn encode_event(e: &RecordedEvent, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(72 + payload.len());
    v.extend_from_slice(&e.recorded_at_ms.to_be_bytes());
    v.extend_from_slice(&e.prev_hash);
    v.extend_from_slice(&e.hash);
    v.extend_from_slice(payload);
    v
}

fn decode_event(job: JobId, seq: u64, v: &[u8]) -> Result<RecordedEvent> {
    if v.len() < 72 {
        return Err(StoreError::Corrupt(format!(
            "event {job}/{seq} is truncated"
        )));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&v[..8]);
    let mut prev_hash = [0u8; 32];
    prev_hash.copy_from_slice(&v[8..40]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[40..72]);
    let body: EventBody = serde_json::from_slice(&v[72..])
        .map_err(|e| StoreError::Corrupt(format!("event {job}/{seq}: {e}")))?;
    Ok(RecordedEvent {
        job_id: job,
        seq,
        recorded_at_ms: i64::from_be_bytes(t),
        body,
        prev_hash,
        hash,
    })
}

fn summary(id: JobId, r: &JobRow) -> JobSummary {
    JobSummary {
        job_id: id,
        tenant: r.tenant.clone(),
        status: r.status,
        idempotency_key: r.idempotency_key.clone(),
        last_seq: r.last_seq,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

enum WriteOp {
    Submit(
        NewJob,
        Option<AuditEntry>,
        oneshot::Sender<Result<(JobSummary, bool)>>,
    ),
    Append(
        Vec<Append>,
        oneshot::Sender<Result<Vec<Result<Vec<RecordedEvent>>>>>,
    ),
    Snapshot {
        id: JobId,
        token: u64,
        seq: u64,
        blob: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Claim {
        worker: String,
        ttl_ms: u64,
        max: usize,
        caps: RunningCaps,
        reply: oneshot::Sender<Result<Vec<Lease>>>,
    },
    Heartbeat {
        worker: String,
        ttl_ms: u64,
        held: Vec<(JobId, u64)>,
        reply: oneshot::Sender<Result<Vec<Lease>>>,
    },
    Release {
        worker: String,
        held: Vec<(JobId, u64)>,
        reply: oneshot::Sender<Result<()>>,
    },
    PutCommand {
        tenant: Option<String>,
        id: JobId,
        body: CommandBody,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<StoredCommand>>,
    },
    MarkApplied {
        id: JobId,
        token: u64,
        ids: Vec<u64>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Create (`create == true`) or update the limits of a tenant.
    PutTenant {
        tenant: Tenant,
        create: bool,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<Tenant>>,
    },
    RecordAudit {
        entry: AuditEntry,
        reply: oneshot::Sender<Result<AuditRecord>>,
    },
    PutUser {
        user: User,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<User>>,
    },
}

/// A reply that is sent only after the batch's commit succeeded.
type Deferred = Box<dyn FnOnce(Option<&str>) + Send>;

pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    /// `None` only while dropping (see `Drop`).
    writer: Option<mpsc::Sender<WriteOp>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    hint: Arc<Notify>,
    commands: tokio::sync::broadcast::Sender<JobId>,
    presence: crate::Presence,
}

/// Fix (found by the conformance suite's reopen test): the writer thread holds its own
/// `Arc<Database>`, and used to outlive the store for a moment after a drop, so reopening
/// the same file right away (a restart in the same process) failed with "Database already
/// open". Dropping the store now closes the queue and waits for the writer to finish its
/// last commit (a few ms at most), so the file lock is released when the drop returns.
impl Drop for RedbStore {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(t) = self.writer_thread.take() {
            if t.join().is_err() {
                tracing::error!("redb writer thread panicked");
            }
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, creating its tables.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
            }
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        {
            let tx = db.begin_write().map_err(backend)?;
            for t in [
                JOBS,
                EVENTS,
                SNAPSHOTS,
                IDEMPOTENCY,
                RUNNABLE,
                LEASED,
                LEDGER,
                COMMANDS,
                TIMERS,
                DUE,
                AUDIT,
                USERS,
            ] {
                tx.open_table(t).map_err(backend)?;
            }
            tx.open_table(META).map_err(backend)?;
            tx.open_table(TENANTS).map_err(backend)?;
            migrate_runnable_v1(&tx)?;
            tx.commit().map_err(backend)?;
        }
        let db = Arc::new(db);
        let hint = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel();
        let wdb = db.clone();
        let whint = hint.clone();
        let (commands, _) = tokio::sync::broadcast::channel(1024);
        let wcommands = commands.clone();
        let writer_thread = std::thread::Builder::new()
            .name("aetheris-redb-writer".into())
            .spawn(move || writer_loop(wdb, rx, whint, wcommands))
            .map_err(backend)?;
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            hint,
            commands,
            presence: crate::Presence::default(),
        })
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closing".into()))?
            .send(make(tx))
            .map_err(|_| StoreError::Backend("writer thread is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("writer thread dropped the request".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the writer thread keeps between batches.
#[derive(Default)]
struct WriterState {
    /// The tenant the last claim served last: the next claim's round robin starts after it.
    claim_cursor: Vec<u8>,
    /// The tenants of jobs leased here, so the queue can place their appends.
    job_tenants: JobTenants,
}

/// The tenant an operation is for (`None` = the deployment's own), for the writer's
/// `FairQueue`.
fn tenant_of(op: &WriteOp, st: &WriterState) -> Option<Arc<str>> {
    let of_job = |id: &JobId| Some(st.job_tenants.of(id));
    match op {
        WriteOp::Submit(job, _, _) => Some(Arc::from(job.tenant.as_str())),
        WriteOp::Append(batch, _) => batch.first().and_then(|a| of_job(&a.job_id)),
        WriteOp::Snapshot { id, .. } | WriteOp::MarkApplied { id, .. } => of_job(id),
        WriteOp::PutCommand { tenant, id, .. } => match tenant {
            Some(t) => Some(Arc::from(t.as_str())),
            None => of_job(id),
        },
        WriteOp::RecordAudit { entry, .. } => Some(Arc::from(entry.tenant.as_str())),
        WriteOp::PutUser { user, .. } => Some(Arc::from(user.tenant.as_str())),
        WriteOp::Claim { .. }
        | WriteOp::Heartbeat { .. }
        | WriteOp::Release { .. }
        | WriteOp::PutTenant { .. } => None,
    }
}

fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<WriteOp>,
    hint: Arc<Notify>,
    commands: tokio::sync::broadcast::Sender<JobId>,
) {
    let mut clock = 0i64;
    let mut state = WriterState::default();
    let mut queue: FairQueue<WriteOp> = FairQueue::new(CONTENDED_QUOTA);
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(op) => queue.push(tenant_of(&op, &state), op),
                Err(_) => break, // the store is closing and everything is written
            }
        }
        while let Ok(op) = rx.try_recv() {
            queue.push(tenant_of(&op, &state), op);
        }
        let ops = queue.next_batch(MAX_BATCH);
        clock = clock.max(now_ms());
        let mut deferred: Vec<Deferred> = Vec::with_capacity(ops.len());
        let mut wake = false;
        let mut commanded: Vec<JobId> = Vec::new();
        let outcome = (|| -> Result<()> {
            let mut tx = db.begin_write().map_err(backend)?;
            tx.set_durability(Durability::Immediate).map_err(backend)?;
            // Claims run last, so they see (and lease) jobs submitted or released in this
            // very batch: a job queued behind a flood starts one commit earlier.
            let (claims, others): (Vec<WriteOp>, Vec<WriteOp>) = ops
                .into_iter()
                .partition(|op| matches!(op, WriteOp::Claim { .. }));
            for op in others.into_iter().chain(claims) {
                deferred.push(execute(
                    &mut tx,
                    op,
                    clock,
                    &mut wake,
                    &mut commanded,
                    &mut state,
                )?);
            }
            tx.commit().map_err(backend)
        })();
        let err = outcome.err().map(|e| e.to_string());
        for d in deferred {
            d(err.as_deref());
        }
        if err.is_none() && wake {
            hint.notify_waiters();
            hint.notify_one();
        }
        if err.is_none() {
            for job in commanded {
                let _ = commands.send(job);
            }
        }
    }
}

/// Wraps a computed result so it is sent only once the commit's fate is known.
fn defer<T: Send + 'static>(reply: oneshot::Sender<Result<T>>, r: Result<T>) -> Deferred {
    Box::new(move |commit_err: Option<&str>| {
        let _ = reply.send(match commit_err {
            Some(e) => Err(StoreError::Backend(format!("commit failed: {e}"))),
            None => r,
        });
    })
}

/// A backend error inside an operation may leave partial writes in the shared
/// transaction, so it fails the whole batch (nobody is told "ok" for a commit that did not
/// happen as computed); other errors are the operation's own answer, given before it wrote.
fn lift<T>(r: Result<T>) -> Result<Result<T>> {
    match r {
        Err(StoreError::Backend(e)) => Err(StoreError::Backend(e)),
        other => Ok(other),
    }
}

/// Runs `op` and, if it succeeded, writes its audit row in the same transaction, so the
/// row exists exactly when the change commits.
fn audited<T>(
    tx: &WriteTransaction,
    audit: Option<AuditEntry>,
    now: i64,
    op: impl FnOnce() -> Result<T>,
    finish: impl FnOnce(&T, &mut AuditEntry),
) -> Result<Result<T>> {
    let r = lift(op())?;
    if let (Ok(v), Some(mut entry)) = (&r, audit) {
        finish(v, &mut entry);
        audit_in(tx, entry, now)?;
    }
    Ok(r)
}

fn execute(
    tx: &mut WriteTransaction,
    op: WriteOp,
    now: i64,
    wake: &mut bool,
    commanded: &mut Vec<JobId>,
    state: &mut WriterState,
) -> Result<Deferred> {
    Ok(match op {
        WriteOp::Submit(job, audit, reply) => {
            let r = audited(
                tx,
                audit,
                now,
                || submit_in(tx, job, now),
                |(s, created), e| {
                    e.target = s.job_id.to_string();
                    e.result = if *created { "ok" } else { "existing" }.into();
                },
            )?;
            if matches!(r, Ok((_, true))) {
                *wake = true;
            }
            defer(reply, r)
        }
        WriteOp::Append(batch, reply) => {
            let results = batch
                .into_iter()
                .map(|a| append_in(tx, a, now))
                .collect::<Vec<_>>();
            // A backend error inside any append poisons the transaction: fail the batch.
            if let Some(Err(StoreError::Backend(e))) = results
                .iter()
                .find(|r| matches!(r, Err(StoreError::Backend(_))))
            {
                return Err(StoreError::Backend(e.clone()));
            }
            defer(reply, Ok(results))
        }
        WriteOp::Snapshot {
            id,
            token,
            seq,
            blob,
            reply,
        } => defer(reply, lift(snapshot_in(tx, id, token, seq, &blob))?),
        WriteOp::Claim {
            worker,
            ttl_ms,
            max,
            caps,
            reply,
        } => {
            let r = lift(claim_in(
                tx,
                &worker,
                ttl_ms,
                max,
                &caps,
                now,
                &mut state.claim_cursor,
            ))?;
            if let Ok(leases) = &r {
                state.job_tenants.leased(leases);
            }
            defer(reply, r)
        }
        WriteOp::Heartbeat {
            worker,
            ttl_ms,
            held,
            reply,
        } => defer(reply, lift(heartbeat_in(tx, &worker, ttl_ms, &held, now))?),
        WriteOp::Release {
            worker,
            held,
            reply,
        } => {
            *wake = true;
            state.job_tenants.released(held.iter().map(|(id, _)| *id));
            defer(reply, lift(release_in(tx, &worker, &held))?)
        }
        WriteOp::PutCommand {
            tenant,
            id,
            body,
            audit,
            reply,
        } => {
            let r = audited(
                tx,
                audit,
                now,
                || put_command_in(tx, tenant.as_deref(), id, body, now),
                |_, _| {},
            )?;
            if r.is_ok() {
                *wake = true;
                commanded.push(id);
            }
            defer(reply, r)
        }
        WriteOp::MarkApplied {
            id,
            token,
            ids,
            reply,
        } => defer(reply, lift(mark_applied_in(tx, id, token, &ids))?),
        WriteOp::PutTenant {
            tenant,
            create,
            audit,
            reply,
        } => {
            let r = audited(
                tx,
                audit,
                now,
                || put_tenant_in(tx, tenant, create, now),
                |_, _| {},
            )?;
            defer(reply, r)
        }
        WriteOp::RecordAudit { entry, reply } => defer(reply, Ok(audit_in(tx, entry, now)?)),
        WriteOp::PutUser { user, audit, reply } => {
            let r = audited(tx, audit, now, || put_user_in(tx, user, now), |_, _| {})?;
            defer(reply, r)
        }
    })
}

/// tenant ‖ 0x00 ‖ rest: the key shape of per-tenant tables (tenant ids never hold 0x00).
fn tenant_key(tenant: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + rest.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn audit_key(tenant: &str, id: u64) -> Vec<u8> {
    tenant_key(tenant, &id.to_be_bytes())
}

fn put_user_in(tx: &WriteTransaction, mut user: User, now: i64) -> Result<User> {
    let exists = tx
        .open_table(TENANTS)
        .map_err(backend)?
        .get(user.tenant.as_str())
        .map_err(backend)?
        .is_some();
    if !exists {
        return Err(StoreError::Rejected(format!(
            "tenant {:?} does not exist",
            user.tenant
        )));
    }
    let key = tenant_key(&user.tenant, user.id.as_bytes());
    let mut t = tx.open_table(USERS).map_err(backend)?;
    let old: Option<User> = t
        .get(key.as_slice())
        .map_err(backend)?
        .map(|g| parse_user(g.value()))
        .transpose()?;
    user.created_at_ms = old.map_or(now, |o| o.created_at_ms);
    user.updated_at_ms = now;
    let json = serde_json::to_vec(&user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    t.insert(key.as_slice(), json.as_slice()).map_err(backend)?;
    Ok(user)
}

fn parse_user(v: &[u8]) -> Result<User> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("user row: {e}")))
}

fn read_users(db: &Database, tenant: &str) -> Result<Vec<User>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(USERS).map_err(backend)?;
    let lo = tenant_key(tenant, b"");
    let mut hi = tenant.as_bytes().to_vec();
    hi.push(1);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..hi.as_slice())
        .map_err(backend)?
    {
        out.push(parse_user(item.map_err(backend)?.1.value())?);
    }
    Ok(out)
}

fn read_access(db: &Database, tenant: &str, user: &str) -> Result<Access> {
    let tx = db.begin_read().map_err(backend)?;
    let tenant_exists = tx
        .open_table(TENANTS)
        .map_err(backend)?
        .get(tenant)
        .map_err(backend)?
        .is_some();
    let user = tx
        .open_table(USERS)
        .map_err(backend)?
        .get(tenant_key(tenant, user.as_bytes()).as_slice())
        .map_err(backend)?
        .map(|g| parse_user(g.value()))
        .transpose()?;
    Ok(Access {
        tenant_exists,
        user,
    })
}

/// Bumps and returns the counter `name` in META.
fn next_seq(tx: &WriteTransaction, name: &str) -> Result<u64> {
    let mut meta = tx.open_table(META).map_err(backend)?;
    let cur = match meta.get(name).map_err(backend)? {
        Some(g) => {
            let b: [u8; 8] = g
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt(name.to_string()))?;
            u64::from_be_bytes(b)
        }
        None => 0,
    };
    let next = cur + 1;
    meta.insert(name, next.to_be_bytes().as_slice())
        .map_err(backend)?;
    Ok(next)
}

fn audit_in(tx: &WriteTransaction, entry: AuditEntry, now: i64) -> Result<AuditRecord> {
    let rec = AuditRecord {
        id: next_seq(tx, "audit_seq")?,
        at_ms: now,
        entry,
    };
    let json = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.open_table(AUDIT)
        .map_err(backend)?
        .insert(
            audit_key(&rec.entry.tenant, rec.id).as_slice(),
            json.as_slice(),
        )
        .map_err(backend)?;
    Ok(rec)
}

fn read_audit(db: &Database, tenant: Option<&str>, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(AUDIT).map_err(backend)?;
    let parse = |v: &[u8]| -> Result<AuditRecord> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("audit row: {e}")))
    };
    let wanted = |r: &AuditRecord| {
        r.id > f.after_id && f.action.as_ref().is_none_or(|a| *a == r.entry.action)
    };
    let mut out = Vec::new();
    match tenant {
        Some(tenant) => {
            let lo = audit_key(tenant, f.after_id.saturating_add(1));
            let hi = audit_key(tenant, u64::MAX);
            for item in t
                .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                .map_err(backend)?
            {
                let r = parse(item.map_err(backend)?.1.value())?;
                if wanted(&r) {
                    out.push(r);
                    if out.len() >= f.limit {
                        break;
                    }
                }
            }
        }
        None => {
            // All tenants (operators only): keyed by tenant, so merge by id.
            for item in t.iter().map_err(backend)? {
                let r = parse(item.map_err(backend)?.1.value())?;
                if wanted(&r) {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.id);
            out.truncate(f.limit);
        }
    }
    Ok(out)
}

fn load_row(tx: &WriteTransaction, id: JobId) -> Result<Option<JobRow>> {
    let t = tx.open_table(JOBS).map_err(backend)?;
    let v = t.get(id.as_bytes().as_slice()).map_err(backend)?;
    v.map(|g| dec(g.value())).transpose()
}

fn save_row(tx: &WriteTransaction, id: JobId, row: &JobRow) -> Result<()> {
    let mut t = tx.open_table(JOBS).map_err(backend)?;
    t.insert(id.as_bytes().as_slice(), enc(row)?.as_slice())
        .map_err(backend)?;
    // Claimable: runnable by status, or unfinished with commands waiting to be applied
    // (a waiting job must wake up to apply a cancel).
    let claimable =
        row.status.is_runnable() || (!row.status.is_terminal() && has_commands(tx, id)?);
    let key = tenant_key(&row.tenant, id.as_bytes());
    let mut r = tx.open_table(RUNNABLE).map_err(backend)?;
    let mut l = tx.open_table(LEASED).map_err(backend)?;
    if claimable {
        r.insert(key.as_slice(), [].as_slice()).map_err(backend)?;
        if row.lease_owner.is_some() {
            l.insert(
                key.as_slice(),
                row.lease_expires_ms.to_be_bytes().as_slice(),
            )
            .map_err(backend)?;
        } else {
            l.remove(key.as_slice()).map_err(backend)?;
        }
    } else {
        r.remove(key.as_slice()).map_err(backend)?;
        l.remove(key.as_slice()).map_err(backend)?;
    }
    Ok(())
}

/// Moves a store written by an earlier version (claimable set keyed by job) to the
/// per-tenant layout, re-deriving `RUNNABLE` and `LEASED` from each job row.
fn migrate_runnable_v1(tx: &WriteTransaction) -> Result<()> {
    let ids: Vec<[u8; 16]> = {
        let old = tx.open_table(RUNNABLE_V1).map_err(backend)?;
        let mut ids = Vec::new();
        for item in old.iter().map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            ids.push(
                k.value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("runnable key".into()))?,
            );
        }
        ids
    };
    for b in ids {
        let id = JobId::from_bytes(b);
        if let Some(row) = load_row(tx, id)? {
            save_row(tx, id, &row)?;
        }
    }
    tx.delete_table(RUNNABLE_V1).map_err(backend)?;
    Ok(())
}

fn command_key(job: JobId, id: u64) -> Vec<u8> {
    let mut k = job.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn has_commands(tx: &WriteTransaction, id: JobId) -> Result<bool> {
    let t = tx.open_table(COMMANDS).map_err(backend)?;
    let lo = command_key(id, 0);
    let hi = command_key(id, u64::MAX);
    let found = t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(backend)?
        .next()
        .is_some();
    Ok(found)
}

fn put_command_in(
    tx: &WriteTransaction,
    tenant: Option<&str>,
    id: JobId,
    body: CommandBody,
    now: i64,
) -> Result<StoredCommand> {
    let row = load_row(tx, id)?
        .filter(|r| tenant.is_none_or(|t| t == r.tenant))
        .ok_or(StoreError::NotFound(id))?;
    if row.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {id} already finished ({})",
            row.status.as_str()
        )));
    }
    let cmd_id = next_seq(tx, "command_seq")?;
    let json = serde_json::to_vec(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut v = now.to_be_bytes().to_vec();
    v.extend_from_slice(&json);
    tx.open_table(COMMANDS)
        .map_err(backend)?
        .insert(command_key(id, cmd_id).as_slice(), v.as_slice())
        .map_err(backend)?;
    save_row(tx, id, &row)?;
    Ok(StoredCommand {
        id: cmd_id,
        job_id: id,
        body,
        created_at_ms: now,
    })
}

fn mark_applied_in(tx: &WriteTransaction, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
    let row = load_row(tx, id)?.ok_or(StoreError::NotFound(id))?;
    if row.token != token {
        return Err(StoreError::Fenced {
            job: id,
            presented: token,
            current: row.token,
        });
    }
    {
        let mut t = tx.open_table(COMMANDS).map_err(backend)?;
        for c in ids {
            t.remove(command_key(id, *c).as_slice()).map_err(backend)?;
        }
    }
    save_row(tx, id, &row)
}

fn put_tenant_in(tx: &WriteTransaction, mut t: Tenant, create: bool, now: i64) -> Result<Tenant> {
    let mut table = tx.open_table(TENANTS).map_err(backend)?;
    let existing: Option<Tenant> = table
        .get(t.id.as_str())
        .map_err(backend)?
        .map(|g| serde_json::from_slice(g.value()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("tenant row: {e}")))?;
    match (existing, create) {
        (Some(_), true) => return Err(StoreError::Conflict(format!("tenant {:?} exists", t.id))),
        (None, false) => {
            return Err(StoreError::Rejected(format!(
                "tenant {:?} does not exist",
                t.id
            )))
        }
        (Some(old), false) => {
            t.name = old.name;
            t.created_at_ms = old.created_at_ms;
        }
        (None, true) => t.created_at_ms = now,
    }
    let json = serde_json::to_vec(&t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    table
        .insert(t.id.as_str(), json.as_slice())
        .map_err(backend)?;
    Ok(t)
}

fn read_tenants(db: &Database, id: Option<&str>) -> Result<Vec<Tenant>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(TENANTS).map_err(backend)?;
    let parse = |v: &[u8]| -> Result<Tenant> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("tenant row: {e}")))
    };
    let mut out = Vec::new();
    match id {
        Some(id) => {
            if let Some(g) = t.get(id).map_err(backend)? {
                out.push(parse(g.value())?);
            }
        }
        None => {
            for item in t.iter().map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                out.push(parse(v.value())?);
            }
        }
    }
    Ok(out)
}

/// `Store::read_events` inside the calling thread: one read transaction.
fn read_events_in(
    db: &Database,
    tenant: Option<&str>,
    id: JobId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let tx = db.begin_read().map_err(backend)?;
    let jt = tx.open_table(JOBS).map_err(backend)?;
    let row: JobRow = match jt.get(id.as_bytes().as_slice()).map_err(backend)? {
        Some(g) => dec(g.value())?,
        None => return Err(StoreError::NotFound(id)),
    };
    if tenant.is_some_and(|t| t != row.tenant) {
        return Err(StoreError::NotFound(id));
    }
    let t = tx.open_table(EVENTS).map_err(backend)?;
    let lo = seq_key(id, after_seq.saturating_add(1));
    let hi = seq_key(id, u64::MAX);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(backend)?
    {
        // Fix (found by the conformance suite): the limit is checked before the
        // push, so `limit == 0` returns no events instead of one.
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(backend)?;
        let mut s = [0u8; 8];
        s.copy_from_slice(&k.value()[16..24]);
        out.push(decode_event(id, u64::from_be_bytes(s), v.value())?);
    }
    Ok(out)
}

/// `Store::latest_snapshot` inside the calling thread.
fn latest_snapshot_in(db: &Database, id: JobId, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(SNAPSHOTS).map_err(backend)?;
    let lo = seq_key(id, 0);
    let hi = seq_key(id, max_seq);
    let last = t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(backend)?
        .next_back();
    match last {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item.map_err(backend)?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&k.value()[16..24]);
            Ok(Some((u64::from_be_bytes(s), v.value().to_vec())))
        }
    }
}

fn read_commands(db: &Database, id: JobId) -> Result<Vec<StoredCommand>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(COMMANDS).map_err(backend)?;
    let lo = command_key(id, 0);
    let hi = command_key(id, u64::MAX);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(backend)?
    {
        let (k, v) = item.map_err(backend)?;
        let (k, v) = (k.value(), v.value());
        if k.len() != 24 || v.len() < 8 {
            return Err(StoreError::Corrupt(format!("command row of job {id}")));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&k[16..24]);
        let mut t8 = [0u8; 8];
        t8.copy_from_slice(&v[..8]);
        let body: CommandBody = serde_json::from_slice(&v[8..])
            .map_err(|e| StoreError::Corrupt(format!("command of job {id}: {e}")))?;
        out.push(StoredCommand {
            id: u64::from_be_bytes(n),
            job_id: id,
            body,
            created_at_ms: i64::from_be_bytes(t8),
        });
    }
    Ok(out)
}

fn submit_in(tx: &WriteTransaction, job: NewJob, now: i64) -> Result<(JobSummary, bool)> {
    if let Some(key) = &job.idempotency_key {
        let idem = tx.open_table(IDEMPOTENCY).map_err(backend)?;
        let existing = idem
            .get(idem_key(&job.tenant, key).as_slice())
            .map_err(backend)?;
        if let Some(g) = existing {
            let b: [u8; 16] = g
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("idempotency row".into()))?;
            let id = JobId::from_bytes(b);
            let row = load_row(tx, id)?.ok_or(StoreError::Corrupt(format!(
                "idempotency key points to missing job {id}"
            )))?;
            return Ok((summary(id, &row), false));
        }
    }
    let id = JobId::new();
    let body = EventBody::JobSubmitted {
        tenant: job.tenant.clone(),
        plan: job.plan,
        input: job.input,
        idempotency_key: job.idempotency_key.clone(),
    };
    let payload = body.payload();
    let hash = event_hash(&GENESIS, id, 1, now, body.kind(), &payload);
    let ev = RecordedEvent {
        job_id: id,
        seq: 1,
        recorded_at_ms: now,
        body,
        prev_hash: GENESIS,
        hash,
    };
    tx.open_table(EVENTS)
        .map_err(backend)?
        .insert(
            seq_key(id, 1).as_slice(),
            encode_event(&ev, &payload).as_slice(),
        )
        .map_err(backend)?;
    let row = JobRow {
        tenant: job.tenant.clone(),
        status: JobStatus::Queued,
        idempotency_key: job.idempotency_key.clone(),
        last_seq: 1,
        last_hash: hash,
        created_at_ms: now,
        updated_at_ms: now,
        token: 0,
        lease_owner: None,
        lease_expires_ms: 0,
    };
    save_row(tx, id, &row)?;
    if let Some(key) = &job.idempotency_key {
        tx.open_table(IDEMPOTENCY)
            .map_err(backend)?
            .insert(
                idem_key(&job.tenant, key).as_slice(),
                id.as_bytes().as_slice(),
            )
            .map_err(backend)?;
    }
    Ok((summary(id, &row), true))
}

/// Plans the append against the job's row and ledger rows (`aetheris_runtime::plan_append`,
/// which writes nothing and reads ledger rows lazily), then writes what it planned.
fn append_in(tx: &WriteTransaction, a: Append, now: i64) -> Result<Vec<RecordedEvent>> {
    let job = a.job_id;
    let mut row = load_row(tx, job)?.ok_or(StoreError::NotFound(job))?;
    let head = JobHead {
        status: row.status,
        last_seq: row.last_seq,
        last_hash: row.last_hash,
        token: row.token,
        updated_at_ms: row.updated_at_ms,
    };
    let planned = {
        let lt = tx.open_table(LEDGER).map_err(backend)?;
        let lookup = |step: &str| -> Result<Option<LedgerRow>> {
            let cur = lt.get(ledger_key(job, step).as_slice()).map_err(backend)?;
            cur.map(|g| dec::<LedgerRow>(g.value())).transpose()
        };
        plan_append(&head, a, now, lookup).map_err(|e| append_refused(job, e))?
    };
    {
        let mut et = tx.open_table(EVENTS).map_err(backend)?;
        for (ev, payload) in planned.events.iter().zip(&planned.payloads) {
            et.insert(
                seq_key(job, ev.seq).as_slice(),
                encode_event(ev, payload.as_bytes()).as_slice(),
            )
            .map_err(backend)?;
        }
    }
    {
        let mut lt = tx.open_table(LEDGER).map_err(backend)?;
        for (step, r) in &planned.ledger {
            lt.insert(ledger_key(job, step).as_slice(), enc(r)?.as_slice())
                .map_err(backend)?;
        }
    }
    match planned.timer {
        TimerChange::Keep => {}
        TimerChange::Set(at) => set_timer(tx, job, Some(at))?,
        TimerChange::Clear => set_timer(tx, job, None)?,
    }
    row.status = planned.head.status;
    row.last_seq = planned.head.last_seq;
    row.last_hash = planned.head.last_hash;
    row.updated_at_ms = planned.head.updated_at_ms;
    save_row(tx, job, &row)?;
    Ok(planned.events)
}

fn snapshot_in(tx: &WriteTransaction, id: JobId, token: u64, seq: u64, blob: &[u8]) -> Result<()> {
    let row = load_row(tx, id)?.ok_or(StoreError::NotFound(id))?;
    if row.token != token {
        return Err(StoreError::Fenced {
            job: id,
            presented: token,
            current: row.token,
        });
    }
    if seq > row.last_seq {
        return Err(StoreError::Rejected(format!(
            "snapshot at seq {seq} is beyond the log (seq {})",
            row.last_seq
        )));
    }
    tx.open_table(SNAPSHOTS)
        .map_err(backend)?
        .insert(seq_key(id, seq).as_slice(), blob)
        .map_err(backend)?;
    Ok(())
}

fn due_key(at: i64, job: JobId) -> Vec<u8> {
    let mut k = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(job.as_bytes());
    k
}

/// Sets (or clears) a parked job's wake-up time.
fn set_timer(tx: &WriteTransaction, job: JobId, at: Option<i64>) -> Result<()> {
    let mut timers = tx.open_table(TIMERS).map_err(backend)?;
    let mut due = tx.open_table(DUE).map_err(backend)?;
    let old = timers
        .remove(job.as_bytes().as_slice())
        .map_err(backend)?
        .map(|g| g.value().to_vec());
    if let Some(old) = old {
        let b: [u8; 8] = old
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("timer".into()))?;
        due.remove(due_key(i64::from_be_bytes(b), job).as_slice())
            .map_err(backend)?;
    }
    if let Some(at) = at {
        timers
            .insert(job.as_bytes().as_slice(), at.to_be_bytes().as_slice())
            .map_err(backend)?;
        due.insert(due_key(at, job).as_slice(), [].as_slice())
            .map_err(backend)?;
    }
    Ok(())
}

/// The tenant of a `tenant ‖ 0x00 ‖ …` key.
fn key_tenant(k: &[u8]) -> Result<&[u8]> {
    let n = k
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StoreError::Corrupt("per-tenant key without a tenant".into()))?;
    Ok(&k[..n])
}

fn lease_live(v: &[u8], now: i64) -> Result<bool> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt("lease expiry".into()))?;
    Ok(i64::from_be_bytes(b) > now)
}

/// Claims up to `max` jobs: parked jobs whose timer is due, then claimable ones, round
/// robin across tenants starting after `cursor` (the tenant the previous claim served
/// last), so a claim with room for one job does not always serve the same tenant. Each
/// tenant offers at most what its cap leaves. Cost: one seek per tenant with work plus
/// the heads of their ranges (live leases are skipped), never a tenant's whole backlog.
fn claim_in(
    tx: &WriteTransaction,
    worker: &str,
    ttl_ms: u64,
    max: usize,
    caps: &RunningCaps,
    now: i64,
    cursor: &mut Vec<u8>,
) -> Result<Vec<Lease>> {
    if max == 0 {
        return Ok(vec![]);
    }
    // Parked jobs whose timer is due, per tenant (their rows say whether they are leased).
    let mut due_by_tenant: BTreeMap<Vec<u8>, Vec<JobId>> = BTreeMap::new();
    {
        let due = tx.open_table(DUE).map_err(backend)?;
        let jt = tx.open_table(JOBS).map_err(backend)?;
        let upto = due_key(now, JobId::from_bytes([0xff; 16]));
        for item in due.range::<&[u8]>(..=upto.as_slice()).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let b: [u8; 16] = k.value()[8..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("due key".into()))?;
            let Some(g) = jt.get(b.as_slice()).map_err(backend)? else {
                continue;
            };
            let row: JobRow = dec(g.value())?;
            if row.lease_owner.is_some() && row.lease_expires_ms > now {
                continue;
            }
            due_by_tenant
                .entry(row.tenant.into_bytes())
                .or_default()
                .push(JobId::from_bytes(b));
        }
    }
    let rt = tx.open_table(RUNNABLE).map_err(backend)?;
    let lt = tx.open_table(LEASED).map_err(backend)?;
    // Every tenant with claimable work: one seek each.
    let mut tenants: Vec<Vec<u8>> = due_by_tenant.keys().cloned().collect();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let next = rt
            .range::<&[u8]>(from.as_slice()..)
            .map_err(backend)?
            .next();
        let Some(item) = next else { break };
        let (k, _) = item.map_err(backend)?;
        let t = key_tenant(k.value())?.to_vec();
        from = t.clone();
        from.push(1); // past every `t ‖ 0x00 ‖ …` key
        tenants.push(t);
    }
    tenants.sort();
    tenants.dedup();
    // Rotate: tenants after the cursor first, then the rest.
    let split = tenants.partition_point(|t| t.as_slice() <= cursor.as_slice());
    tenants.rotate_left(split);

    let mut queues: Vec<(Vec<u8>, VecDeque<JobId>)> = Vec::with_capacity(tenants.len());
    for t in tenants {
        let name = String::from_utf8_lossy(&t).into_owned();
        let lo = tenant_key(&name, b"");
        let mut hi = t.clone();
        hi.push(1);
        let mut budget = max;
        if let Some(limit) = caps.claim_limit(&name) {
            budget = budget.min(usize::try_from(limit).unwrap_or(max));
            if budget == 0 {
                continue; // the worker's share of this tenant is used up
            }
        }
        if let Some(cap) = caps.cap(&name) {
            let mut running = 0u64;
            for item in lt
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(backend)?
            {
                let (_, v) = item.map_err(backend)?;
                running += u64::from(lease_live(v.value(), now)?);
            }
            budget = budget.min(usize::try_from(cap.saturating_sub(running)).unwrap_or(max));
        }
        let mut q: VecDeque<JobId> = due_by_tenant.remove(&t).unwrap_or_default().into();
        q.truncate(budget);
        let due: std::collections::HashSet<JobId> = q.iter().copied().collect();
        if q.len() < budget {
            for item in rt
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(backend)?
            {
                let (k, _) = item.map_err(backend)?;
                let k = k.value();
                if let Some(v) = lt.get(k).map_err(backend)? {
                    if lease_live(v.value(), now)? {
                        continue;
                    }
                }
                let b: [u8; 16] = k[k.len().saturating_sub(16)..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("runnable key".into()))?;
                let id = JobId::from_bytes(b);
                if !due.contains(&id) {
                    q.push_back(id);
                }
                if q.len() >= budget {
                    break;
                }
            }
        }
        if !q.is_empty() {
            queues.push((t, q));
        }
    }
    drop((rt, lt));
    // Round robin in rotated tenant order.
    let mut picked: Vec<JobId> = Vec::new();
    while picked.len() < max && queues.iter().any(|(_, q)| !q.is_empty()) {
        for (t, q) in queues.iter_mut() {
            if picked.len() >= max {
                break;
            }
            if let Some(id) = q.pop_front() {
                picked.push(id);
                cursor.clone_from(t);
            }
        }
    }
    let mut out = Vec::with_capacity(picked.len());
    for id in picked {
        let Some(mut row) = load_row(tx, id)? else {
            continue;
        };
        if row.lease_owner.is_some() && row.lease_expires_ms > now {
            continue; // defensive: the indexes said unleased
        }
        row.token += 1;
        row.lease_owner = Some(worker.to_string());
        row.lease_expires_ms = now + ttl_ms as i64;
        save_row(tx, id, &row)?;
        out.push(Lease {
            job_id: id,
            tenant: row.tenant.clone(),
            token: row.token,
            expires_at_ms: row.lease_expires_ms,
        });
    }
    Ok(out)
}

fn heartbeat_in(
    tx: &WriteTransaction,
    worker: &str,
    ttl_ms: u64,
    held: &[(JobId, u64)],
    now: i64,
) -> Result<Vec<Lease>> {
    let mut kept = Vec::new();
    for (id, token) in held {
        let Some(mut row) = load_row(tx, *id)? else {
            continue;
        };
        if row.token == *token && row.lease_owner.as_deref() == Some(worker) {
            row.lease_expires_ms = now + ttl_ms as i64;
            save_row(tx, *id, &row)?;
            kept.push(Lease {
                job_id: *id,
                tenant: row.tenant.clone(),
                token: *token,
                expires_at_ms: row.lease_expires_ms,
            });
        }
    }
    Ok(kept)
}

fn release_in(tx: &WriteTransaction, worker: &str, held: &[(JobId, u64)]) -> Result<()> {
    for (id, token) in held {
        let Some(mut row) = load_row(tx, *id)? else {
            continue;
        };
        if row.token == *token && row.lease_owner.as_deref() == Some(worker) {
            row.lease_owner = None;
            row.lease_expires_ms = 0;
            save_row(tx, *id, &row)?;
        }
    }
    Ok(())
}

fn read_row(db: &Database, id: JobId) -> Result<Option<JobRow>> {
    let tx = db.begin_read().map_err(backend)?;
    let t = tx.open_table(JOBS).map_err(backend)?;
    let v = t.get(id.as_bytes().as_slice()).map_err(backend)?;
    v.map(|g| dec(g.value())).transpose()
}

#[async_trait]
impl Store for RedbStore {
    async fn submit(&self, job: NewJob, audit: Option<&AuditEntry>) -> Result<(JobSummary, bool)> {
        let audit = audit.cloned();
        self.send(|reply| WriteOp::Submit(job, audit, reply)).await
    }

    async fn get_job(&self, scope: Scope<'_>, id: JobId) -> Result<Option<JobSummary>> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        self.read(move |db| {
            Ok(read_row(db, id)?
                .filter(|r| tenant.as_deref().is_none_or(|t| t == r.tenant))
                .map(|r| summary(id, &r)))
        })
        .await
    }

    async fn list_jobs(&self, scope: Scope<'_>, filter: ListFilter) -> Result<Vec<JobSummary>> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        self.read(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(JOBS).map_err(backend)?;
            let upper = filter.before.map(|b| *b.as_bytes());
            let iter = match &upper {
                Some(u) => t.range::<&[u8]>(..u.as_slice()).map_err(backend)?,
                None => t.range::<&[u8]>(..).map_err(backend)?,
            };
            let mut out = Vec::new();
            for item in iter.rev() {
                let (k, v) = item.map_err(backend)?;
                let row: JobRow = dec(v.value())?;
                if tenant.as_deref().is_some_and(|t| t != row.tenant) {
                    continue;
                }
                if filter.status.is_some_and(|s| s != row.status) {
                    continue;
                }
                let b: [u8; 16] = k
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("job key".into()))?;
                out.push(summary(JobId::from_bytes(b), &row));
                if out.len() >= filter.limit.max(1) {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>> {
        self.read(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(JOBS).map_err(backend)?;
            let mut counts: BTreeMap<(String, &'static str), (JobStatus, u64)> = BTreeMap::new();
            for item in t.iter().map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                let row: JobRow = dec(v.value())?;
                counts
                    .entry((row.tenant.clone(), row.status.as_str()))
                    .or_insert((row.status, 0))
                    .1 += 1;
            }
            Ok(counts
                .into_iter()
                .map(|((tenant, _), (status, count))| StatusCount {
                    tenant,
                    status,
                    count,
                })
                .collect())
        })
        .await
    }

    async fn read_events(
        &self,
        scope: Scope<'_>,
        id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        self.read(move |db| read_events_in(db, tenant.as_deref(), id, after_seq, limit))
            .await
    }

    async fn append_many(&self, batch: Vec<Append>) -> Result<Vec<Result<Vec<RecordedEvent>>>> {
        self.send(|reply| WriteOp::Append(batch, reply)).await
    }

    async fn put_snapshot(&self, id: JobId, token: u64, seq: u64, blob: Vec<u8>) -> Result<()> {
        self.send(|reply| WriteOp::Snapshot {
            id,
            token,
            seq,
            blob,
            reply,
        })
        .await
    }

    async fn latest_snapshot(&self, id: JobId, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        self.read(move |db| latest_snapshot_in(db, id, max_seq))
            .await
    }

    async fn claim_within(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<Lease>> {
        let worker = worker.to_string();
        let caps = caps.clone();
        self.send(|reply| WriteOp::Claim {
            worker,
            ttl_ms,
            max,
            caps,
            reply,
        })
        .await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ttl_ms: u64,
        held: &[(JobId, u64)],
    ) -> Result<Vec<Lease>> {
        let (worker, held) = (worker.to_string(), held.to_vec());
        self.send(|reply| WriteOp::Heartbeat {
            worker,
            ttl_ms,
            held,
            reply,
        })
        .await
    }

    async fn release(&self, worker: &str, held: &[(JobId, u64)]) -> Result<()> {
        let (worker, held) = (worker.to_string(), held.to_vec());
        self.send(|reply| WriteOp::Release {
            worker,
            held,
            reply,
        })
        .await
    }

    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        self.read(move |db| {
            match read_row(db, id)? {
                Some(r) if tenant.as_deref().is_none_or(|t| t == r.tenant) => {}
                _ => return Err(StoreError::NotFound(id)),
            }
            let tx = db.begin_read().map_err(backend)?;
            let t = tx.open_table(LEDGER).map_err(backend)?;
            let lo = id.as_bytes().to_vec();
            let mut hi = lo.clone();
            hi.push(0xff);
            let mut out = Vec::new();
            for item in t
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(backend)?
            {
                let (k, v) = item.map_err(backend)?;
                let r: LedgerRow = dec(v.value())?;
                out.push(LedgerEntry {
                    invocation_key: r.invocation_key,
                    job_id: id,
                    step: String::from_utf8_lossy(&k.value()[16..]).into_owned(),
                    attempt: r.attempt,
                    effect: r.effect,
                    status: r.status,
                    updated_at_ms: r.updated_at_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn now_ms(&self) -> Result<i64> {
        Ok(now_ms())
    }

    fn work_hint(&self) -> Arc<Notify> {
        self.hint.clone()
    }

    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<StoredCommand> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutCommand {
            tenant,
            id,
            body,
            audit,
            reply,
        })
        .await
    }

    async fn pending_commands(&self, id: JobId) -> Result<Vec<StoredCommand>> {
        self.read(move |db| read_commands(db, id)).await
    }

    /// The three reads on one blocking-pool hop (the writer commits between them at most,
    /// and only this job's lease holder writes its events and snapshots).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<crate::JobLoad> {
        self.read(move |db| {
            let snapshot = latest_snapshot_in(db, id, u64::MAX)?;
            let after = snapshot.as_ref().map(|(seq, _)| *seq).unwrap_or(0);
            Ok(crate::JobLoad {
                events: read_events_in(db, None, id, after, event_limit)?,
                commands: read_commands(db, id)?,
                snapshot,
            })
        })
        .await
    }

    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
        let ids = ids.to_vec();
        self.send(|reply| WriteOp::MarkApplied {
            id,
            token,
            ids,
            reply,
        })
        .await
    }

    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.commands.subscribe()
    }

    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        let tenant = Tenant {
            id: id.to_string(),
            name: name.to_string(),
            limits,
            created_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutTenant {
            tenant,
            create: true,
            audit,
            reply,
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let id = id.to_string();
        self.read(move |db| Ok(read_tenants(db, Some(&id))?.pop()))
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|db| read_tenants(db, None)).await
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        let tenant = Tenant {
            id: id.to_string(),
            name: String::new(),
            limits,
            created_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutTenant {
            tenant,
            create: false,
            audit,
            reply,
        })
        .await
    }

    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<User> {
        let user = User {
            tenant: tenant.to_string(),
            id: id.to_string(),
            roles,
            disabled,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutUser { user, audit, reply })
            .await
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<User>> {
        let tenant = tenant.to_string();
        self.read(move |db| read_users(db, &tenant)).await
    }

    async fn access(&self, tenant: &str, user: &str) -> Result<Access> {
        let (tenant, user) = (tenant.to_string(), user.to_string());
        self.read(move |db| read_access(db, &tenant, &user)).await
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        let entry = entry.clone();
        self.send(|reply| WriteOp::RecordAudit { entry, reply })
            .await
    }

    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
        let tenant = match scope {
            Scope::Tenant(t) => Some(t.to_string()),
            Scope::System => None,
        };
        self.read(move |db| read_audit(db, tenant.as_deref(), &filter))
            .await
    }

    /// One OS process opens a redb file, so its live processes are kept in memory.
    async fn announce_process(
        &self,
        kind: crate::ProcessKind,
        id: &str,
        ttl_ms: u64,
    ) -> Result<u32> {
        Ok(self.presence.announce(kind, id, ttl_ms, now_ms()))
    }

    async fn retire_process(&self, kind: crate::ProcessKind, id: &str) -> Result<()> {
        self.presence.retire(kind, id);
        Ok(())
    }

    async fn size_bytes(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableHandle;
    use serde_json::json;

    /// A file written with the first claimable-set layout (job → tenant, no `leased`)
    /// opens with its queued and leased jobs in the per-tenant layout: the queued job is
    /// claimable, the leased one is not until its lease expires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_v1_runnable_table_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let plan: aetheris_runtime::Plan =
            serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap();
        let job = |t: &str| NewJob {
            tenant: t.into(),
            idempotency_key: None,
            plan: plan.clone(),
            input: json!({}),
        };
        let (queued, leased) = {
            let store = RedbStore::open(&path).unwrap();
            let (q, _) = store.submit(job("acme"), None).await.unwrap();
            let (l, _) = store.submit(job("globex"), None).await.unwrap();
            let got = store.claim("w", 60_000, 10).await.unwrap();
            let held: Vec<(JobId, u64)> = got
                .iter()
                .filter(|x| x.job_id != l.job_id)
                .map(|x| (x.job_id, x.token))
                .collect();
            store.release("w", &held).await.unwrap();
            (q.job_id, l.job_id)
        };
        // Rewrite the claimable set in the old layout.
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(RUNNABLE).unwrap();
            tx.delete_table(LEASED).unwrap();
            {
                let mut old = tx.open_table(RUNNABLE_V1).unwrap();
                for (id, t) in [(queued, "acme"), (leased, "globex")] {
                    old.insert(id.as_bytes().as_slice(), t.as_bytes()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let got = store.claim("w2", 60_000, 10).await.unwrap();
        let ids: Vec<JobId> = got.iter().map(|l| l.job_id).collect();
        assert_eq!(
            ids,
            vec![queued],
            "the leased job stays leased after migration"
        );
        let tables: Vec<String> = {
            let tx = store.db.begin_read().unwrap();
            tx.list_tables()
                .unwrap()
                .map(|h| h.name().to_string())
                .collect()
        };
        assert!(!tables.contains(&"runnable".to_string()), "{tables:?}");
    }
}
