//! Leases on the embedded store: claims (due timers first, then claimable jobs, round
//! robin across tenants within their caps), heartbeats, release, and parked jobs' timers.
//!
//! Invariants kept here: a claim bumps each granted job's fencing token (G3) and never
//! grants a job with a live lease; its cost is one seek per tenant with work plus the heads
//! of their ranges, never a tenant's whole backlog; a parked job's timer lives in `TIMERS`
//! and the `DUE` index together. Time is the writer's clock (the store clock).

use super::tables::{
    dec, due_key, key_tenant, load_row, save_row, JobRow, DUE, JOBS, LEASED, RUNNABLE, TIMERS,
};
use super::writer::WriteOp;
use super::{db_err, now_ms, RedbStore};
use crate::{Lease, Leases, Result, RunningCaps, StoreError};
use ::redb::{ReadableTable, WriteTransaction};
use aetheris_runtime::JobId;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

/// Sets (or clears) a parked job's wake-up time.
pub(super) fn set_timer(tx: &WriteTransaction, job: JobId, at: Option<i64>) -> Result<()> {
    let mut timers = tx.open_table(TIMERS).map_err(db_err)?;
    let mut due = tx.open_table(DUE).map_err(db_err)?;
    let old = timers
        .remove(job.as_bytes().as_slice())
        .map_err(db_err)?
        .map(|g| g.value().to_vec());
    if let Some(old) = old {
        let b: [u8; 8] = old
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("timer".into()))?;
        due.remove(due_key(i64::from_be_bytes(b), job).as_slice())
            .map_err(db_err)?;
    }
    if let Some(at) = at {
        timers
            .insert(job.as_bytes().as_slice(), at.to_be_bytes().as_slice())
            .map_err(db_err)?;
        due.insert(due_key(at, job).as_slice(), [].as_slice())
            .map_err(db_err)?;
    }
    Ok(())
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
pub(super) fn claim_in(
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
    let mut due = due_by_tenant(tx, now)?;
    let queues = {
        let rt = tx.open_table(RUNNABLE).map_err(db_err)?;
        let lt = tx.open_table(LEASED).map_err(db_err)?;
        let tenants = rotated(tenants_with_work(&rt, due.keys().cloned())?, cursor);
        let mut queues = Vec::with_capacity(tenants.len());
        for t in tenants {
            let budget = budget(&lt, caps, &t, max, now)?;
            if budget == 0 {
                continue;
            }
            let q = candidates(
                &rt,
                &lt,
                &t,
                due.remove(&t).unwrap_or_default(),
                budget,
                now,
            )?;
            if !q.is_empty() {
                queues.push((t, q));
            }
        }
        queues
    };
    let picked = round_robin(queues, max, cursor);
    grant(tx, picked, worker, ttl_ms, now)
}

/// Parked jobs whose timer is due and that hold no live lease, by tenant.
fn due_by_tenant(tx: &WriteTransaction, now: i64) -> Result<BTreeMap<Vec<u8>, Vec<JobId>>> {
    let mut by_tenant: BTreeMap<Vec<u8>, Vec<JobId>> = BTreeMap::new();
    let due = tx.open_table(DUE).map_err(db_err)?;
    let jt = tx.open_table(JOBS).map_err(db_err)?;
    let upto = due_key(now, JobId::from_bytes([0xff; 16]));
    for item in due.range::<&[u8]>(..=upto.as_slice()).map_err(db_err)? {
        let (k, _) = item.map_err(db_err)?;
        let b: [u8; 16] = k.value()[8..]
            .try_into()
            .map_err(|_| StoreError::Corrupt("due key".into()))?;
        let Some(g) = jt.get(b.as_slice()).map_err(db_err)? else {
            continue;
        };
        let row: JobRow = dec(g.value())?;
        if row.lease_owner.is_some() && row.lease_expires_ms > now {
            continue;
        }
        by_tenant
            .entry(row.tenant.into_bytes())
            .or_default()
            .push(JobId::from_bytes(b));
    }
    Ok(by_tenant)
}

/// Every tenant with claimable work (`also`: the tenants with due timers), sorted: one seek
/// per tenant in `RUNNABLE`.
fn tenants_with_work(
    rt: &impl ReadableTable<&'static [u8], &'static [u8]>,
    also: impl Iterator<Item = Vec<u8>>,
) -> Result<Vec<Vec<u8>>> {
    let mut tenants: Vec<Vec<u8>> = also.collect();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let next = rt.range::<&[u8]>(from.as_slice()..).map_err(db_err)?.next();
        let Some(item) = next else { break };
        let (k, _) = item.map_err(db_err)?;
        let t = key_tenant(k.value())?.to_vec();
        from = t.clone();
        from.push(1); // past every `t ‖ 0x00 ‖ …` key
        tenants.push(t);
    }
    tenants.sort();
    tenants.dedup();
    Ok(tenants)
}

/// `tenants` (sorted) starting after `cursor`, then the rest.
fn rotated(mut tenants: Vec<Vec<u8>>, cursor: &[u8]) -> Vec<Vec<u8>> {
    let split = tenants.partition_point(|t| t.as_slice() <= cursor);
    tenants.rotate_left(split);
    tenants
}

/// How many jobs `tenant` may get in this claim: at most `max`, its limit for this claim,
/// and what its cap leaves after its live leases (counted only when it has a cap).
fn budget(
    lt: &impl ReadableTable<&'static [u8], &'static [u8]>,
    caps: &RunningCaps,
    tenant: &[u8],
    max: usize,
    now: i64,
) -> Result<usize> {
    let name = String::from_utf8_lossy(tenant);
    let mut budget = max;
    if let Some(limit) = caps.claim_limit(&name) {
        budget = budget.min(usize::try_from(limit).unwrap_or(max));
        if budget == 0 {
            return Ok(0); // the worker's share of this tenant is used up
        }
    }
    if let Some(cap) = caps.cap(&name) {
        let (lo, hi) = tenant_range(tenant);
        let mut running = 0u64;
        for item in lt
            .range::<&[u8]>(lo.as_slice()..hi.as_slice())
            .map_err(db_err)?
        {
            let (_, v) = item.map_err(db_err)?;
            running += u64::from(lease_live(v.value(), now)?);
        }
        budget = budget.min(usize::try_from(cap.saturating_sub(running)).unwrap_or(max));
    }
    Ok(budget)
}

/// The keys of `tenant`'s range in a per-tenant table: `tenant ‖ 0x00 ‖ …`.
fn tenant_range(tenant: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = tenant.to_vec();
    lo.push(0);
    let mut hi = tenant.to_vec();
    hi.push(1);
    (lo, hi)
}

/// Up to `budget` jobs of `tenant` to offer, oldest first: its due jobs, then claimable
/// ones without a live lease.
fn candidates(
    rt: &impl ReadableTable<&'static [u8], &'static [u8]>,
    lt: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tenant: &[u8],
    due: Vec<JobId>,
    budget: usize,
    now: i64,
) -> Result<VecDeque<JobId>> {
    let mut q: VecDeque<JobId> = due.into();
    q.truncate(budget);
    if q.len() >= budget {
        return Ok(q);
    }
    let due: HashSet<JobId> = q.iter().copied().collect();
    let (lo, hi) = tenant_range(tenant);
    for item in rt
        .range::<&[u8]>(lo.as_slice()..hi.as_slice())
        .map_err(db_err)?
    {
        let (k, _) = item.map_err(db_err)?;
        let k = k.value();
        if let Some(v) = lt.get(k).map_err(db_err)? {
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
    Ok(q)
}

/// Takes jobs from the tenants' queues in turn (in their rotated order) until `max`; the
/// cursor becomes the tenant served last.
fn round_robin(
    mut queues: Vec<(Vec<u8>, VecDeque<JobId>)>,
    max: usize,
    cursor: &mut Vec<u8>,
) -> Vec<JobId> {
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
    picked
}

/// Leases the picked jobs to `worker`, bumping each job's fencing token (G3).
fn grant(
    tx: &WriteTransaction,
    picked: Vec<JobId>,
    worker: &str,
    ttl_ms: u64,
    now: i64,
) -> Result<Vec<Lease>> {
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

pub(super) fn heartbeat_in(
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
        if row.token != *token {
            continue;
        }
        if row.lease_owner.as_deref() == Some(worker) {
            row.lease_expires_ms = now + ttl_ms as i64;
            save_row(tx, *id, &row)?;
        } else if !(row.lease_owner.is_none() && row.status.is_terminal()) {
            continue;
        }
        // Held and renewed, or finished under this token (its finishing append gave the
        // lease back: expiry 0).
        kept.push(Lease {
            job_id: *id,
            tenant: row.tenant.clone(),
            token: *token,
            expires_at_ms: row.lease_expires_ms,
        });
    }
    Ok(kept)
}

pub(super) fn release_in(tx: &WriteTransaction, worker: &str, held: &[(JobId, u64)]) -> Result<()> {
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

#[async_trait]
impl Leases for RedbStore {
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

    async fn now_ms(&self) -> Result<i64> {
        Ok(now_ms())
    }

    fn work_hint(&self) -> Arc<Notify> {
        self.hint.clone()
    }
}
