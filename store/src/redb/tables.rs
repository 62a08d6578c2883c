//! The tables of the embedded store, the encodings of their rows and keys, and the job
//! row's upkeep: `save_row` keeps the claimable (`RUNNABLE`) and leased (`LEASED`) indexes
//! in step with every job row it writes, so claims never read a tenant's whole backlog, and
//! enters finished jobs in `FINISHED`, so retention never reads the jobs it keeps.
//! Persisted rows carry a format version byte (`ROW_FORMAT_V1`); never reorder their
//! fields.

use super::db_err;
use crate::{JobSummary, Result, StoreError};
use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use aetheris_runtime::codec::{decode_versioned, encode_versioned};
use aetheris_runtime::{EventBody, JobId, JobStatus, RecordedEvent};
use serde::{Deserialize, Serialize};

pub(super) const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
pub(super) const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
pub(super) const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshots");
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// Claimable jobs by tenant: tenant ‖ 0x00 ‖ job (16) → (). A claim seeks from tenant to
/// tenant and reads only the head of each tenant's range, so its cost does not grow with
/// a tenant's backlog.
pub(super) const RUNNABLE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("runnable_by_tenant");
/// The first layout of the claimable set (job → tenant); migrated on open.
pub(super) const RUNNABLE_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("runnable");
/// Claimable jobs that hold a lease: tenant ‖ 0x00 ‖ job (16) → lease expiry (8, BE).
/// Claims skip the live ones and count them for `RunningCaps`.
pub(super) const LEASED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leased");
pub(super) const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
/// Unapplied commands: job (16) ‖ command id (8, BE) → created_at (8, BE) ‖ JSON body.
pub(super) const COMMANDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("commands");
/// Parked jobs' wake-up times: job (16) → wake_at (8, BE), and the due index
/// wake_at (8, BE, sign bit flipped) ‖ job (16) → () scanned by claims.
pub(super) const TIMERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("timers");
pub(super) const DUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("due");
/// Tenants: id → JSON of `Tenant`.
pub(super) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// The access audit log: tenant ‖ 0x00 ‖ id (8, BE) → JSON of `AuditRecord`, so a
/// tenant's rows are one range in id order (tenant ids never contain 0x00).
pub(super) const AUDIT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("access_audit_log");
/// Users: tenant ‖ 0x00 ‖ id → JSON of `User` (a tenant's users are one range).
pub(super) const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
/// Each tenant's transparency log: tenant ‖ 0x00 ‖ index (8, BE) → job (16) ‖ leaf hash
/// (32) ‖ appended_at (8, BE). A tenant's leaves are one range in index order.
pub(super) const TLOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("transparency_leaves");
/// A finished job's leaf: job (16) → tenant ‖ 0x00 ‖ index (8, BE), its key in `TLOG`.
pub(super) const TLOG_JOBS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("transparency_jobs");
/// Evidence redaction policies: tenant id → JSON array of `PolicyRule`.
pub(super) const EVIDENCE_POLICY: TableDefinition<&str, &[u8]> =
    TableDefinition::new("evidence_policy");
/// LLM providers: tenant ‖ 0x00 ‖ name → JSON of `LlmProvider` (no API key).
pub(super) const LLM_PROVIDERS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("llm_providers");
/// Daily LLM token usage: tenant ‖ 0x00 ‖ UTC day (8, BE) → tokens (8, BE).
pub(super) const LLM_USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("llm_token_usage");
/// Finished jobs by tenant, for retention: tenant ‖ 0x00 ‖ job (16) → finished at (8, BE).
/// Written by `save_row` when a job's row becomes terminal (it never changes back), removed
/// with the job; ids are UUIDv7, so a tenant's range is in creation order.
pub(super) const FINISHED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("finished");
/// Counters: "command_seq", "audit_seq" → u64 (BE); markers of one-time upgrades.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const ROW_FORMAT_V1: u8 = 1;

/// The job row: the projection of a job's events plus its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct JobRow {
    pub(super) tenant: String,
    pub(super) status: JobStatus,
    pub(super) idempotency_key: Option<String>,
    pub(super) last_seq: u64,
    pub(super) last_hash: [u8; 32],
    pub(super) created_at_ms: i64,
    pub(super) updated_at_ms: i64,
    pub(super) token: u64,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_expires_ms: i64,
}

/// A row as stored. (It cannot fail for our rows; if it did, that is no corruption of
/// anything stored.)
pub(super) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    encode_versioned(ROW_FORMAT_V1, v).map_err(|e| StoreError::Backend(format!("encode row: {e}")))
}
pub(super) fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    decode_versioned(ROW_FORMAT_V1, b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn seq_key(job: JobId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(job.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn ledger_key(job: JobId, step: &str) -> Vec<u8> {
    let mut k = job.as_bytes().to_vec();
    k.extend_from_slice(step.as_bytes());
    k
}

pub(super) fn idem_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Stored event value: recorded_at (8, BE) ‖ prev_hash (32) ‖ hash (32) ‖ payload JSON.
pub(super) fn encode_event(e: &RecordedEvent, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(72 + payload.len());
    v.extend_from_slice(&e.recorded_at_ms.to_be_bytes());
    v.extend_from_slice(&e.prev_hash);
    v.extend_from_slice(&e.hash);
    v.extend_from_slice(payload);
    v
}

pub(super) fn decode_event(job: JobId, seq: u64, v: &[u8]) -> Result<RecordedEvent> {
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

pub(super) fn summary(id: JobId, r: &JobRow) -> JobSummary {
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

/// Creates every table (a new file) and moves an old layout forward.
pub(super) fn create(db: &Database) -> Result<()> {
    let tx = db.begin_write().map_err(db_err)?;
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
        TLOG,
        TLOG_JOBS,
        LLM_PROVIDERS,
        LLM_USAGE,
        FINISHED,
    ] {
        tx.open_table(t).map_err(db_err)?;
    }
    tx.open_table(META).map_err(db_err)?;
    tx.open_table(TENANTS).map_err(db_err)?;
    tx.open_table(EVIDENCE_POLICY).map_err(db_err)?;
    migrate_runnable_v1(&tx)?;
    super::transparency::backfill_once(&tx)?;
    super::retention::backfill_once(&tx)?;
    tx.commit().map_err(db_err)
}

/// tenant ‖ 0x00 ‖ rest: the key shape of per-tenant tables (tenant ids never hold 0x00).
pub(super) fn tenant_key(tenant: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + rest.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

pub(super) fn audit_key(tenant: &str, id: u64) -> Vec<u8> {
    tenant_key(tenant, &id.to_be_bytes())
}

/// Bumps and returns the counter `name` in META.
pub(super) fn next_seq(tx: &WriteTransaction, name: &str) -> Result<u64> {
    let mut meta = tx.open_table(META).map_err(db_err)?;
    let cur = match meta.get(name).map_err(db_err)? {
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
        .map_err(db_err)?;
    Ok(next)
}

pub(super) fn load_row(tx: &WriteTransaction, id: JobId) -> Result<Option<JobRow>> {
    let t = tx.open_table(JOBS).map_err(db_err)?;
    let v = t.get(id.as_bytes().as_slice()).map_err(db_err)?;
    v.map(|g| dec(g.value())).transpose()
}

/// The job's row, if `token` is its current fencing token (G3): `Fenced` otherwise,
/// `NotFound` for an unknown job.
pub(super) fn fenced_row(tx: &WriteTransaction, id: JobId, token: u64) -> Result<JobRow> {
    let row = load_row(tx, id)?.ok_or(StoreError::job_not_found(id))?;
    if row.token != token {
        return Err(StoreError::Fenced {
            job: id,
            presented: token,
            current: row.token,
        });
    }
    Ok(row)
}

pub(super) fn save_row(tx: &WriteTransaction, id: JobId, row: &JobRow) -> Result<()> {
    let mut t = tx.open_table(JOBS).map_err(db_err)?;
    t.insert(id.as_bytes().as_slice(), enc(row)?.as_slice())
        .map_err(db_err)?;
    // Claimable: runnable by status, or unfinished with commands waiting to be applied
    // (a waiting job must wake up to apply a cancel).
    let claimable =
        row.status.is_runnable() || (!row.status.is_terminal() && has_commands(tx, id)?);
    let key = tenant_key(&row.tenant, id.as_bytes());
    let mut r = tx.open_table(RUNNABLE).map_err(db_err)?;
    let mut l = tx.open_table(LEASED).map_err(db_err)?;
    if claimable {
        r.insert(key.as_slice(), [].as_slice()).map_err(db_err)?;
        if row.lease_owner.is_some() {
            l.insert(
                key.as_slice(),
                row.lease_expires_ms.to_be_bytes().as_slice(),
            )
            .map_err(db_err)?;
        } else {
            l.remove(key.as_slice()).map_err(db_err)?;
        }
    } else {
        r.remove(key.as_slice()).map_err(db_err)?;
        l.remove(key.as_slice()).map_err(db_err)?;
    }
    if row.status.is_terminal() {
        tx.open_table(FINISHED)
            .map_err(db_err)?
            .insert(key.as_slice(), row.updated_at_ms.to_be_bytes().as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Moves a store written by an earlier version (claimable set keyed by job) to the
/// per-tenant layout, re-deriving `RUNNABLE` and `LEASED` from each job row.
fn migrate_runnable_v1(tx: &WriteTransaction) -> Result<()> {
    let ids: Vec<[u8; 16]> = {
        let old = tx.open_table(RUNNABLE_V1).map_err(db_err)?;
        let mut ids = Vec::new();
        for item in old.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
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
    tx.delete_table(RUNNABLE_V1).map_err(db_err)?;
    Ok(())
}

pub(super) fn command_key(job: JobId, id: u64) -> Vec<u8> {
    let mut k = job.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn has_commands(tx: &WriteTransaction, id: JobId) -> Result<bool> {
    let t = tx.open_table(COMMANDS).map_err(db_err)?;
    let lo = command_key(id, 0);
    let hi = command_key(id, u64::MAX);
    let found = t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
        .next()
        .is_some();
    Ok(found)
}

pub(super) fn due_key(at: i64, job: JobId) -> Vec<u8> {
    let mut k = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(job.as_bytes());
    k
}

/// The tenant of a `tenant ‖ 0x00 ‖ …` key.
pub(super) fn key_tenant(k: &[u8]) -> Result<&[u8]> {
    let n = k
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StoreError::Corrupt("per-tenant key without a tenant".into()))?;
    Ok(&k[..n])
}

pub(super) fn read_row(db: &Database, id: JobId) -> Result<Option<JobRow>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(JOBS).map_err(db_err)?;
    let v = t.get(id.as_bytes().as_slice()).map_err(db_err)?;
    v.map(|g| dec(g.value())).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobLog, Leases, NewJob, RedbStore};
    use ::redb::TableHandle;
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
