//! Retention on the embedded store: finding finished jobs past their tenant's retention in
//! `FINISHED` (read transactions on the blocking pool) and deleting them on the writer
//! thread (`Retention`).
//!
//! Invariants kept here:
//! - Only finished jobs whose terminal event is older than their tenant's retention at the
//!   writer's clock are deleted, checked on the job row inside the writer's transaction: a
//!   queued, running or waiting job is never touched.
//! - A batch is one operation of the writer, so it commits with its batch or not at all; a
//!   failure inside it (a store failure, the test failpoint) fails the whole commit, so a
//!   job is never left half deleted.
//! - A deleted job leaves nothing behind but its transparency leaf (`TLOG`): events, ledger
//!   rows, snapshots, commands, timer, claim indexes, idempotency key, `TLOG_JOBS` entry,
//!   `FINISHED` entry and job row go together.
//! - Finding due jobs reads only `FINISHED` (tenant by tenant, in id order, below the
//!   UUIDv7 id stamped with the retention's cutoff), never the jobs a tenant keeps.

use super::leases::set_timer;
use super::tables::{
    command_key, dec, idem_key, key_tenant, load_row, seq_key, tenant_key, JobRow, COMMANDS,
    EVENTS, FINISHED, IDEMPOTENCY, JOBS, LEASED, LEDGER, META, RUNNABLE, SNAPSHOTS, TLOG_JOBS,
};
use super::writer::WriteOp;
use super::{db_err, now_ms, RedbStore};
use crate::{DueJob, Result, Retention, RetentionPolicy, StoreError};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use aetheris_runtime::JobId;
use async_trait::async_trait;

/// `META` marker: the jobs finished before this store kept `FINISHED` are in it.
const BACKFILLED: &str = "finished_backfilled";

/// Once per store file: every finished job enters `FINISHED` (files written before it).
pub(super) fn backfill_once(tx: &WriteTransaction) -> Result<()> {
    if tx
        .open_table(META)
        .map_err(db_err)?
        .get(BACKFILLED)
        .map_err(db_err)?
        .is_some()
    {
        return Ok(());
    }
    let mut finished: Vec<(Vec<u8>, i64)> = Vec::new();
    for item in tx
        .open_table(JOBS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = item.map_err(db_err)?;
        let row: JobRow = dec(v.value())?;
        if row.status.is_terminal() {
            finished.push((tenant_key(&row.tenant, k.value()), row.updated_at_ms));
        }
    }
    let mut t = tx.open_table(FINISHED).map_err(db_err)?;
    for (key, at) in finished {
        t.insert(key.as_slice(), at.to_be_bytes().as_slice())
            .map_err(db_err)?;
    }
    tx.open_table(META)
        .map_err(db_err)?
        .insert(BACKFILLED, [1u8].as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// The smallest UUIDv7 stamped `ms` (ids below it were minted before `ms`).
fn first_id_at(ms: i64) -> [u8; 16] {
    let mut id = [0u8; 16];
    let ms = u64::try_from(ms).unwrap_or(0);
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id
}

fn job_of(key: &[u8]) -> Result<JobId> {
    key.get(key.len().saturating_sub(16)..)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(JobId::from_bytes)
        .ok_or_else(|| StoreError::Corrupt("finished-job key".into()))
}

fn finished_at(v: &[u8]) -> Result<i64> {
    <[u8; 8]>::try_from(v)
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("finished-job time".into()))
}

/// Up to `limit` due jobs of each tenant, then the `limit` most overdue of all.
fn due_in(db: &Database, policy: &RetentionPolicy, limit: usize, now: i64) -> Result<Vec<DueJob>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(FINISHED).map_err(db_err)?;
    let mut out = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let first = t
            .range::<&[u8]>(from.as_slice()..)
            .map_err(db_err)?
            .next()
            .transpose()
            .map_err(db_err)?;
        let Some((k, _)) = first else { break };
        let tenant_bytes = key_tenant(k.value())?.to_vec();
        drop(k);
        let tenant = String::from_utf8(tenant_bytes.clone())
            .map_err(|_| StoreError::Corrupt("finished-job tenant".into()))?;
        // Past every key of this tenant (tenant ‖ 0x00 ‖ …).
        from = tenant_bytes;
        from.push(1);
        let Some(keep) = policy.keep_ms(&tenant) else {
            continue;
        };
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let before = now.saturating_sub(keep);
        let lo = tenant_key(&tenant, &[]);
        let hi = tenant_key(
            &tenant,
            &first_id_at(before.saturating_add(keep.min(1_000))),
        );
        let mut taken = 0;
        for item in t
            .range::<&[u8]>(lo.as_slice()..hi.as_slice())
            .map_err(db_err)?
        {
            if taken >= limit {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            let at = finished_at(v.value())?;
            if at < before {
                taken += 1;
                out.push(DueJob {
                    job_id: job_of(k.value())?,
                    tenant: tenant.clone(),
                    finished_at_ms: at,
                    overdue_ms: u64::try_from(before - at).unwrap_or(0),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (b.overdue_ms, a.job_id.as_bytes()).cmp(&(a.overdue_ms, b.job_id.as_bytes()))
    });
    out.truncate(limit);
    Ok(out)
}

/// Whether `row` may be deleted now: finished, and past its tenant's retention.
fn due_now(row: &JobRow, policy: &RetentionPolicy, now: i64) -> bool {
    row.status.is_terminal()
        && policy.keep_ms(&row.tenant).is_some_and(|keep| {
            row.updated_at_ms < now.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX))
        })
}

/// Removes every row of job `id` but its transparency leaf.
fn delete_job(tx: &WriteTransaction, id: JobId, row: &JobRow) -> Result<()> {
    let job = id.as_bytes().as_slice();
    let nothing = |_: &[u8], _: &[u8]| false;
    let (lo, hi) = (seq_key(id, 0), seq_key(id, u64::MAX));
    for table in [EVENTS, SNAPSHOTS] {
        tx.open_table(table)
            .map_err(db_err)?
            .retain_in::<&[u8], _>(lo.as_slice()..=hi.as_slice(), nothing)
            .map_err(db_err)?;
    }
    let mut past_job = job.to_vec();
    past_job.push(0xff);
    tx.open_table(LEDGER)
        .map_err(db_err)?
        .retain_in::<&[u8], _>(job..past_job.as_slice(), nothing)
        .map_err(db_err)?;
    let (lo, hi) = (command_key(id, 0), command_key(id, u64::MAX));
    tx.open_table(COMMANDS)
        .map_err(db_err)?
        .retain_in::<&[u8], _>(lo.as_slice()..=hi.as_slice(), nothing)
        .map_err(db_err)?;
    set_timer(tx, id, None)?;
    let key = tenant_key(&row.tenant, job);
    for table in [RUNNABLE, LEASED, FINISHED] {
        tx.open_table(table)
            .map_err(db_err)?
            .remove(key.as_slice())
            .map_err(db_err)?;
    }
    if let Some(k) = &row.idempotency_key {
        tx.open_table(IDEMPOTENCY)
            .map_err(db_err)?
            .remove(idem_key(&row.tenant, k).as_slice())
            .map_err(db_err)?;
    }
    tx.open_table(TLOG_JOBS)
        .map_err(db_err)?
        .remove(job)
        .map_err(db_err)?;
    tx.open_table(JOBS)
        .map_err(db_err)?
        .remove(job)
        .map_err(db_err)?;
    Ok(())
}

/// One batch on the writer thread (module docs). `crash` fails it once half of its jobs
/// are deleted (tests): the whole commit fails, so nothing of it is stored.
pub(super) fn delete_in(
    tx: &WriteTransaction,
    policy: &RetentionPolicy,
    ids: &[JobId],
    now: i64,
    crash: bool,
) -> Result<Vec<JobId>> {
    let mut deleted = Vec::new();
    for id in ids {
        // A job listed twice is gone the second time.
        let Some(row) = load_row(tx, *id)? else {
            continue;
        };
        if !due_now(&row, policy, now) {
            continue;
        }
        delete_job(tx, *id, &row)?;
        deleted.push(*id);
        if crash && deleted.len() >= (ids.len() / 2).max(1) {
            return Err(StoreError::Backend(
                "failpoint: retention batch stopped before its commit".into(),
            ));
        }
    }
    Ok(deleted)
}

#[async_trait]
impl Retention for RedbStore {
    async fn due_jobs(&self, policy: &RetentionPolicy, limit: usize) -> Result<Vec<DueJob>> {
        if limit == 0 || policy.keeps_everything() {
            return Ok(Vec::new());
        }
        let policy = policy.clone();
        self.read(move |db| due_in(db, &policy, limit, now_ms()))
            .await
    }

    async fn delete_jobs(&self, policy: &RetentionPolicy, ids: &[JobId]) -> Result<Vec<JobId>> {
        self.delete(policy, ids, false).await
    }
}

impl RedbStore {
    async fn delete(
        &self,
        policy: &RetentionPolicy,
        ids: &[JobId],
        crash: bool,
    ) -> Result<Vec<JobId>> {
        if ids.is_empty() || policy.keeps_everything() {
            return Ok(Vec::new());
        }
        let (policy, ids) = (policy.clone(), ids.to_vec());
        self.send(|reply| WriteOp::DeleteJobs {
            policy,
            ids,
            crash,
            reply,
        })
        .await
    }

    /// `delete_jobs` that fails midway through its commit, after deleting half of the
    /// batch's jobs in it: the crash the conformance suite checks leaves every job whole.
    /// For tests only.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn delete_jobs_crashing_midway(
        &self,
        policy: &RetentionPolicy,
        ids: &[JobId],
    ) -> Result<Vec<JobId>> {
        self.delete(policy, ids, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Append, JobLog, Leases, NewJob};
    use aetheris_runtime::EventBody;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// A store file written before `FINISHED` existed gets its finished jobs entered on
    /// open (once), so retention finds them; unfinished ones are not entered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_without_the_finished_index_is_backfilled_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let plan: aetheris_runtime::Plan =
            serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap();
        let job = || NewJob {
            tenant: "acme".into(),
            idempotency_key: None,
            plan: plan.clone(),
            input: json!({}),
        };
        let (done, running) = {
            let store = RedbStore::open(&path).unwrap();
            for _ in 0..2 {
                store.submit(job(), None).await.unwrap();
            }
            let leases = store.claim("w", 60_000, 10).await.unwrap();
            store
                .append(Append {
                    job_id: leases[0].job_id,
                    token: leases[0].token,
                    expected_last_seq: 1,
                    events: vec![EventBody::JobSucceeded { output: json!(1) }],
                })
                .await
                .unwrap();
            (leases[0].job_id, leases[1].job_id)
        };
        // The file as an earlier version left it: no FINISHED table, no marker.
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(FINISHED).unwrap();
            tx.open_table(META).unwrap().remove(BACKFILLED).unwrap();
            tx.commit().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let store = RedbStore::open(&path).unwrap();
        let policy = RetentionPolicy {
            default_ms: None,
            tenants: BTreeMap::from([("acme".to_string(), Some(1))]),
        };
        let due = store.due_jobs(&policy, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.job_id).collect::<Vec<_>>(), vec![done]);
        assert_eq!(
            store.delete_jobs(&policy, &[done, running]).await.unwrap(),
            vec![done]
        );
        assert!(store.due_jobs(&policy, 10).await.unwrap().is_empty());
    }
}
