//! The writer thread of the embedded store: the only writer of the database file.
//!
//! It drains its queue into a single redb write transaction and commits it with
//! `Durability::Immediate` (fsync) before answering anyone (G1): group commit across jobs,
//! each operation keeping its own checks. Answers are deferred until the commit's fate is
//! known. An operation validates everything before it writes, so one refused operation
//! never leaves partial writes in the shared transaction; a store failure inside one fails
//! the whole batch, since nobody may be told "ok" for a commit that did not happen as
//! computed. The queue is served fairly (`crate::fair::FairQueue`): the deployment's
//! operations first, then tenants in turn. Claims run last in their commit, so they can
//! lease jobs submitted in it. The writer's clock is the store clock (monotonic within the
//! process).

use super::audit::audit_in;
use super::commands::{mark_applied_in, put_command_in};
use super::jobs::{append_in, snapshot_in, submit_in};
use super::leases::{claim_in, heartbeat_in, release_in};
use super::tenants::{put_policy_in, put_tenant_in};
use super::users::put_user_in;
use super::{db_err, now_ms};
use crate::fair::{FairQueue, JobTenants};
use crate::{
    Append, AuditEntry, AuditRecord, CommandBody, JobSummary, Lease, NewJob, PolicyRule, Result,
    RetentionPolicy, RunningCaps, StoreError, StoredCommand, Tenant, User,
};
use ::redb::{Database, Durability, WriteTransaction};
use aetheris_runtime::{JobId, RecordedEvent};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

/// Most operations folded into one commit.
const MAX_BATCH: usize = 128;
/// A tenant's operations per commit while other tenants are active too (`FairQueue`). A
/// commit here costs ~0.3-0.5 ms (fsync) plus ~15-20 µs per operation: with 8 per tenant
/// a flood's commits take ~0.6 ms instead of ~4 ms at 128, and that is about what another
/// tenant's write waits for (W6); the flooding tenant pays with smaller commits while it
/// shares the store.
const CONTENDED_QUOTA: usize = 8;

/// A write for the writer thread, with where its answer goes.
pub(super) enum WriteOp {
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
    /// Replace a tenant's evidence redaction policy.
    PutPolicy {
        tenant: String,
        rules: Vec<PolicyRule>,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<Vec<PolicyRule>>>,
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
    /// LLM providers and daily token usage (`llm.rs`).
    Llm(super::llm::LlmOp),
    /// A retention batch (`retention.rs`); `crash` is the tests' failpoint.
    DeleteJobs {
        policy: RetentionPolicy,
        ids: Vec<JobId>,
        crash: bool,
        reply: oneshot::Sender<Result<Vec<JobId>>>,
    },
}

/// A reply that is sent only after the batch's commit succeeded (or failed).
pub(super) type Deferred = Box<dyn FnOnce(Option<&StoreError>) + Send>;

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
        WriteOp::Llm(op) => Some(Arc::from(op.tenant())),
        WriteOp::Claim { .. }
        | WriteOp::Heartbeat { .. }
        | WriteOp::Release { .. }
        | WriteOp::PutTenant { .. }
        | WriteOp::PutPolicy { .. }
        | WriteOp::DeleteJobs { .. } => None,
    }
}

pub(super) fn writer_loop(
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
            let mut tx = db.begin_write().map_err(db_err)?;
            tx.set_durability(Durability::Immediate).map_err(db_err)?;
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
            tx.commit().map_err(db_err)
        })();
        let err = outcome.err();
        for d in deferred {
            d(err.as_ref());
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
pub(super) fn defer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T>>,
    r: Result<T>,
) -> Deferred {
    Box::new(move |commit_err: Option<&StoreError>| {
        let _ = reply.send(match commit_err {
            Some(e) => Err(commit_failed(e)),
            None => r,
        });
    })
}

/// What every operation of a batch whose commit failed is told.
fn commit_failed(e: &StoreError) -> StoreError {
    match e {
        StoreError::Backend(m) => StoreError::Backend(format!("commit failed: {m}")),
        other => other.clone(),
    }
}

/// A store failure (`Backend`, `Unavailable`) inside an operation may leave partial writes in the shared
/// transaction, so it fails the whole batch (nobody is told "ok" for a commit that did not
/// happen as computed); other errors are the operation's own answer, given before it wrote.
pub(super) fn lift<T>(r: Result<T>) -> Result<Result<T>> {
    match r {
        Err(e) if e.is_store_failure() => Err(e),
        other => Ok(other),
    }
}

/// Runs `op` and, if it succeeded, writes its audit row in the same transaction, so the
/// row exists exactly when the change commits.
pub(super) fn audited<T>(
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
            // A store failure inside any append poisons the transaction: fail the batch.
            if let Some(Err(e)) = results
                .iter()
                .find(|r| matches!(r, Err(e) if e.is_store_failure()))
            {
                return Err(e.clone());
            }
            state.job_tenants.finished(&results);
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
        WriteOp::PutPolicy {
            tenant,
            rules,
            audit,
            reply,
        } => {
            let r = audited(
                tx,
                audit,
                now,
                || put_policy_in(tx, &tenant, rules),
                |_, _| {},
            )?;
            defer(reply, r)
        }
        WriteOp::RecordAudit { entry, reply } => defer(reply, Ok(audit_in(tx, entry, now)?)),
        WriteOp::PutUser { user, audit, reply } => {
            let r = audited(tx, audit, now, || put_user_in(tx, user, now), |_, _| {})?;
            defer(reply, r)
        }
        WriteOp::Llm(op) => super::llm::execute(tx, op, now)?,
        WriteOp::DeleteJobs {
            policy,
            ids,
            crash,
            reply,
        } => defer(
            reply,
            lift(super::retention::delete_in(tx, &policy, &ids, now, crash))?,
        ),
    })
}
