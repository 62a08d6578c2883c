//! The job log on the embedded store: submissions, appends (planned by
//! `aetheris_runtime::plan_append`, then written, with the transparency leaf of a job they
//! finish), snapshots (a new one prunes the job's older ones) and the reads of jobs, events
//! and the ledger. Writes run on the writer thread (`writer`), reads on the blocking pool,
//! each in one redb transaction; scoped reads answer `NotFound` for another tenant's job.

use super::commands::read_commands;
use super::leases::set_timer;
use super::tables::{
    dec, decode_event, enc, encode_event, fenced_row, idem_key, ledger_key, load_row, read_row,
    save_row, seq_key, summary, JobRow, EVENTS, IDEMPOTENCY, JOBS, LEDGER, SNAPSHOTS,
};
use super::transparency::{next_index, put_leaf};
use super::writer::WriteOp;
use super::{db_err, scope_tenant, RedbStore};
use crate::{
    append_refused, Append, AuditEntry, JobLoad, JobLog, JobSummary, LedgerEntry, ListFilter,
    NewJob, Result, Scope, StatusCount, StoreError,
};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use aetheris_runtime::chain::{event_hash, GENESIS};
use aetheris_runtime::{
    plan_append, EventBody, JobHead, JobId, JobStatus, LedgerRow, RecordedEvent, TimerChange,
};
use async_trait::async_trait;
use std::collections::BTreeMap;

/// `JobLog::read_events` inside the calling thread: one read transaction.
pub(super) fn read_events_in(
    db: &Database,
    tenant: Option<&str>,
    id: JobId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let tx = db.begin_read().map_err(db_err)?;
    let jt = tx.open_table(JOBS).map_err(db_err)?;
    let row: JobRow = match jt.get(id.as_bytes().as_slice()).map_err(db_err)? {
        Some(g) => dec(g.value())?,
        None => return Err(StoreError::job_not_found(id)),
    };
    if tenant.is_some_and(|t| t != row.tenant) {
        return Err(StoreError::job_not_found(id));
    }
    let t = tx.open_table(EVENTS).map_err(db_err)?;
    let lo = seq_key(id, after_seq.saturating_add(1));
    let hi = seq_key(id, u64::MAX);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
    {
        // Fix (found by the conformance suite): the limit is checked before the
        // push, so `limit == 0` returns no events instead of one.
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(db_err)?;
        let mut s = [0u8; 8];
        s.copy_from_slice(&k.value()[16..24]);
        out.push(decode_event(id, u64::from_be_bytes(s), v.value())?);
    }
    Ok(out)
}

/// `JobLog::latest_snapshot` inside the calling thread.
pub(super) fn latest_snapshot_in(
    db: &Database,
    id: JobId,
    max_seq: u64,
) -> Result<Option<(u64, Vec<u8>)>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
    let lo = seq_key(id, 0);
    let hi = seq_key(id, max_seq);
    let last = t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
        .next_back();
    match last {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item.map_err(db_err)?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&k.value()[16..24]);
            Ok(Some((u64::from_be_bytes(s), v.value().to_vec())))
        }
    }
}

pub(super) fn submit_in(
    tx: &WriteTransaction,
    job: NewJob,
    now: i64,
) -> Result<(JobSummary, bool)> {
    if let Some(key) = &job.idempotency_key {
        let idem = tx.open_table(IDEMPOTENCY).map_err(db_err)?;
        let existing = idem
            .get(idem_key(&job.tenant, key).as_slice())
            .map_err(db_err)?;
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
        .map_err(db_err)?
        .insert(
            seq_key(id, 1).as_slice(),
            encode_event(&ev, &payload).as_slice(),
        )
        .map_err(db_err)?;
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
            .map_err(db_err)?
            .insert(
                idem_key(&job.tenant, key).as_slice(),
                id.as_bytes().as_slice(),
            )
            .map_err(db_err)?;
    }
    Ok((summary(id, &row), true))
}

/// Plans the append against the job's row and ledger rows (`aetheris_runtime::plan_append`,
/// which writes nothing and reads ledger rows lazily), then writes what it planned.
pub(super) fn append_in(tx: &WriteTransaction, a: Append, now: i64) -> Result<Vec<RecordedEvent>> {
    let job = a.job_id;
    let mut row = load_row(tx, job)?.ok_or(StoreError::job_not_found(job))?;
    let head = JobHead {
        status: row.status,
        last_seq: row.last_seq,
        last_hash: row.last_hash,
        token: row.token,
        updated_at_ms: row.updated_at_ms,
    };
    let planned = {
        let lt = tx.open_table(LEDGER).map_err(db_err)?;
        let lookup = |step: &str| -> Result<Option<LedgerRow>> {
            let cur = lt.get(ledger_key(job, step).as_slice()).map_err(db_err)?;
            cur.map(|g| dec::<LedgerRow>(g.value())).transpose()
        };
        plan_append(&head, a, now, lookup).map_err(|e| append_refused(job, e))?
    };
    // The finishing append's leaf, with its index read before anything is written (a
    // refused operation must leave nothing in the shared transaction).
    let leaf = match crate::transparency::leaf_of(job, &head, &planned) {
        Some(leaf) => Some((next_index(tx, &row.tenant)?, leaf)),
        None => None,
    };
    {
        let mut et = tx.open_table(EVENTS).map_err(db_err)?;
        for (ev, payload) in planned.events.iter().zip(&planned.payloads) {
            et.insert(
                seq_key(job, ev.seq).as_slice(),
                encode_event(ev, payload.as_bytes()).as_slice(),
            )
            .map_err(db_err)?;
        }
    }
    {
        let mut lt = tx.open_table(LEDGER).map_err(db_err)?;
        for (step, r) in &planned.ledger {
            lt.insert(ledger_key(job, step).as_slice(), enc(r)?.as_slice())
                .map_err(db_err)?;
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
    if row.status.is_terminal() {
        // The finishing append gives the lease back (contract: `JobLog::append_many`).
        row.lease_owner = None;
        row.lease_expires_ms = 0;
    }
    save_row(tx, job, &row)?;
    if let Some((index, leaf)) = leaf {
        put_leaf(tx, &row.tenant, index, &leaf)?;
    }
    Ok(planned.events)
}

pub(super) fn snapshot_in(
    tx: &WriteTransaction,
    id: JobId,
    token: u64,
    seq: u64,
    blob: &[u8],
) -> Result<()> {
    let row = fenced_row(tx, id, token)?;
    if seq > row.last_seq {
        return Err(StoreError::Rejected(format!(
            "snapshot at seq {seq} is beyond the log (seq {})",
            row.last_seq
        )));
    }
    let mut t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
    t.insert(seq_key(id, seq).as_slice(), blob)
        .map_err(db_err)?;
    // Only the newest snapshot is ever read: the older ones go in the same commit.
    let (lo, below) = (seq_key(id, 0), seq_key(id, seq));
    t.retain_in::<&[u8], _>(lo.as_slice()..below.as_slice(), |_, _| false)
        .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl JobLog for RedbStore {
    async fn submit(&self, job: NewJob, audit: Option<&AuditEntry>) -> Result<(JobSummary, bool)> {
        let audit = audit.cloned();
        self.send(|reply| WriteOp::Submit(job, audit, reply)).await
    }

    async fn get_job(&self, scope: Scope<'_>, id: JobId) -> Result<Option<JobSummary>> {
        let tenant = scope_tenant(scope);
        self.read(move |db| {
            Ok(read_row(db, id)?
                .filter(|r| tenant.as_deref().is_none_or(|t| t == r.tenant))
                .map(|r| summary(id, &r)))
        })
        .await
    }

    async fn list_jobs(&self, scope: Scope<'_>, filter: ListFilter) -> Result<Vec<JobSummary>> {
        let tenant = scope_tenant(scope);
        self.read(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(JOBS).map_err(db_err)?;
            let upper = filter.before.map(|b| *b.as_bytes());
            let iter = match &upper {
                Some(u) => t.range::<&[u8]>(..u.as_slice()).map_err(db_err)?,
                None => t.range::<&[u8]>(..).map_err(db_err)?,
            };
            let mut out = Vec::new();
            for item in iter.rev() {
                let (k, v) = item.map_err(db_err)?;
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
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(JOBS).map_err(db_err)?;
            let mut counts: BTreeMap<(String, &'static str), (JobStatus, u64)> = BTreeMap::new();
            for item in t.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
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
        let tenant = scope_tenant(scope);
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

    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>> {
        let tenant = scope_tenant(scope);
        self.read(move |db| {
            match read_row(db, id)? {
                Some(r) if tenant.as_deref().is_none_or(|t| t == r.tenant) => {}
                _ => return Err(StoreError::job_not_found(id)),
            }
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LEDGER).map_err(db_err)?;
            let lo = id.as_bytes().to_vec();
            let mut hi = lo.clone();
            hi.push(0xff);
            let mut out = Vec::new();
            for item in t
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(db_err)?
            {
                let (k, v) = item.map_err(db_err)?;
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

    /// The three reads on one blocking-pool hop (the writer commits between them at most,
    /// and only this job's lease holder writes its events and snapshots).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<JobLoad> {
        self.read(move |db| {
            let snapshot = latest_snapshot_in(db, id, u64::MAX)?;
            let after = snapshot.as_ref().map(|(seq, _)| *seq).unwrap_or(0);
            Ok(JobLoad {
                events: read_events_in(db, None, id, after, event_limit)?,
                commands: read_commands(db, id)?,
                snapshot,
            })
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(db_err)
    }
}
