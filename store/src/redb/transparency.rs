//! Each tenant's transparency log on the embedded store (`TLOG`, `TLOG_JOBS`). A leaf is
//! written by the append that finishes its job, on the writer thread and in the same
//! commit (`jobs::append_in`); the single writer makes each tenant's indexes gap-free by
//! construction: the next index is one past the tenant's last key. Reads are MVCC
//! snapshots, so a reader sees a prefix of every log.

use super::tables::{dec, tenant_key, JobRow, JOBS, META, TLOG, TLOG_JOBS};
use super::{db_err, RedbStore};
use crate::transparency::NewLeaf;
use crate::{LogLeaf, Result, Scope, StoreError, TransparencyLog};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use aetheris_runtime::JobId;
use async_trait::async_trait;

/// `META` marker: the jobs finished before this store kept logs have their leaves.
const BACKFILLED: &str = "transparency_backfilled";

fn leaf_value(leaf: &NewLeaf) -> [u8; 56] {
    let mut v = [0u8; 56];
    v[..16].copy_from_slice(leaf.job_id.as_bytes());
    v[16..48].copy_from_slice(&leaf.leaf_hash);
    v[48..].copy_from_slice(&leaf.appended_at_ms.to_be_bytes());
    v
}

fn decode_leaf(key: &[u8], v: &[u8]) -> Result<LogLeaf> {
    let corrupt = || StoreError::Corrupt("transparency leaf row".into());
    let index: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    if v.len() != 56 {
        return Err(corrupt());
    }
    let mut job = [0u8; 16];
    job.copy_from_slice(&v[..16]);
    let mut leaf_hash = [0u8; 32];
    leaf_hash.copy_from_slice(&v[16..48]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&v[48..]);
    Ok(LogLeaf {
        index: u64::from_be_bytes(index),
        job_id: JobId::from_bytes(job),
        leaf_hash,
        appended_at_ms: i64::from_be_bytes(at),
    })
}

/// The index the tenant's next leaf gets: one past its last one (0 for a new log).
pub(super) fn next_index(tx: &WriteTransaction, tenant: &str) -> Result<u64> {
    let t = tx.open_table(TLOG).map_err(db_err)?;
    let lo = tenant_key(tenant, &0u64.to_be_bytes());
    let hi = tenant_key(tenant, &u64::MAX.to_be_bytes());
    let last = t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
        .next_back();
    match last {
        None => Ok(0),
        Some(item) => {
            let (k, v) = item.map_err(db_err)?;
            Ok(decode_leaf(k.value(), v.value())?.index + 1)
        }
    }
}

/// Writes `leaf` as leaf `index` of `tenant`'s log (`index` from [`next_index`] in the
/// same transaction).
pub(super) fn put_leaf(
    tx: &WriteTransaction,
    tenant: &str,
    index: u64,
    leaf: &NewLeaf,
) -> Result<()> {
    let key = tenant_key(tenant, &index.to_be_bytes());
    tx.open_table(TLOG)
        .map_err(db_err)?
        .insert(key.as_slice(), leaf_value(leaf).as_slice())
        .map_err(db_err)?;
    tx.open_table(TLOG_JOBS)
        .map_err(db_err)?
        .insert(leaf.job_id.as_bytes().as_slice(), key.as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Once per store file: the jobs that finished before the store kept transparency logs
/// join their tenant's log, in the order they finished (then by id), with the leaf they
/// would have got (`crate::transparency`'s rule: id, last seq, chain head). The same as
/// PostgreSQL's migration 0010.
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
    let mut finished: Vec<(String, i64, JobId, NewLeaf)> = Vec::new();
    {
        let jobs = tx.open_table(JOBS).map_err(db_err)?;
        let by_job = tx.open_table(TLOG_JOBS).map_err(db_err)?;
        for item in jobs.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let row: JobRow = dec(v.value())?;
            let id = JobId::from_bytes(
                k.value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("job key".into()))?,
            );
            if !row.status.is_terminal()
                || by_job
                    .get(id.as_bytes().as_slice())
                    .map_err(db_err)?
                    .is_some()
            {
                continue;
            }
            let leaf = NewLeaf {
                job_id: id,
                leaf_hash: aetheris_proof::checkpoint::job_leaf_hash(
                    id,
                    row.last_seq,
                    &row.last_hash,
                ),
                appended_at_ms: row.updated_at_ms,
            };
            finished.push((row.tenant, row.updated_at_ms, id, leaf));
        }
    }
    finished.sort_by(|a, b| (&a.0, a.1, a.2.as_bytes()).cmp(&(&b.0, b.1, b.2.as_bytes())));
    for (tenant, _, _, leaf) in &finished {
        let index = next_index(tx, tenant)?;
        put_leaf(tx, tenant, index, leaf)?;
    }
    tx.open_table(META)
        .map_err(db_err)?
        .insert(BACKFILLED, [1u8].as_slice())
        .map_err(db_err)?;
    Ok(())
}

fn read_leaves(db: &Database, tenant: &str, size: Option<u64>) -> Result<Vec<LogLeaf>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(TLOG).map_err(db_err)?;
    let lo = tenant_key(tenant, &0u64.to_be_bytes());
    let hi = tenant_key(tenant, &u64::MAX.to_be_bytes());
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
    {
        if size.is_some_and(|n| out.len() as u64 >= n) {
            break;
        }
        let (k, v) = item.map_err(db_err)?;
        let leaf = decode_leaf(k.value(), v.value())?;
        if leaf.index != out.len() as u64 {
            return Err(missing_leaf(tenant, out.len() as u64));
        }
        out.push(leaf);
    }
    Ok(out)
}

/// A log with a hole: a leaf was removed behind the store's back.
pub(crate) fn missing_leaf(tenant: &str, index: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "the transparency log of tenant {tenant:?} has no leaf {index} (a leaf was deleted)"
    ))
}

fn read_job_leaf(db: &Database, tenant: Option<&str>, id: JobId) -> Result<Option<LogLeaf>> {
    let tx = db.begin_read().map_err(db_err)?;
    let row: JobRow = match tx
        .open_table(JOBS)
        .map_err(db_err)?
        .get(id.as_bytes().as_slice())
        .map_err(db_err)?
    {
        Some(g) => dec(g.value())?,
        None => return Err(StoreError::job_not_found(id)),
    };
    if tenant.is_some_and(|t| t != row.tenant) {
        return Err(StoreError::job_not_found(id));
    }
    let Some(key) = tx
        .open_table(TLOG_JOBS)
        .map_err(db_err)?
        .get(id.as_bytes().as_slice())
        .map_err(db_err)?
        .map(|g| g.value().to_vec())
    else {
        return Ok(None);
    };
    let leaves = tx.open_table(TLOG).map_err(db_err)?;
    let value = leaves.get(key.as_slice()).map_err(db_err)?.ok_or_else(|| {
        StoreError::Corrupt(format!("job {id}: its transparency leaf is missing"))
    })?;
    let leaf = decode_leaf(&key, value.value())?;
    if leaf.job_id != id || key != tenant_key(&row.tenant, &leaf.index.to_be_bytes()) {
        return Err(StoreError::Corrupt(format!(
            "job {id}: its transparency leaf is another job's"
        )));
    }
    Ok(Some(leaf))
}

#[async_trait]
impl TransparencyLog for RedbStore {
    async fn log_leaves(&self, tenant: &str, size: Option<u64>) -> Result<Vec<LogLeaf>> {
        let tenant = tenant.to_string();
        self.read(move |db| read_leaves(db, &tenant, size)).await
    }

    async fn job_leaf(&self, scope: Scope<'_>, id: JobId) -> Result<Option<LogLeaf>> {
        let tenant = super::scope_tenant(scope);
        self.read(move |db| read_job_leaf(db, tenant.as_deref(), id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Append, JobLog, Leases, NewJob};
    use ::redb::TableHandle;
    use aetheris_runtime::EventBody;
    use serde_json::json;

    /// A store file written before transparency logs existed gets, on open, the leaves
    /// its finished jobs would have got (the same ones a live append writes), and later
    /// finishing jobs continue the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_without_logs_is_backfilled_on_open() {
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
        let finish = |l: &crate::Lease| Append {
            job_id: l.job_id,
            token: l.token,
            expected_last_seq: 1,
            events: vec![EventBody::JobSucceeded { output: json!(1) }],
        };
        let (acme, globex) = {
            let store = RedbStore::open(&path).unwrap();
            for t in ["acme", "acme", "globex", "acme"] {
                store.submit(job(t), None).await.unwrap();
            }
            let leases = store.claim("w", 60_000, 10).await.unwrap();
            for l in leases.iter().take(3) {
                store.append(finish(l)).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            store
                .release("w", &[(leases[3].job_id, leases[3].token)])
                .await
                .unwrap();
            (
                store.log_leaves("acme", None).await.unwrap(),
                store.log_leaves("globex", None).await.unwrap(),
            )
        };
        assert_eq!(acme.len() + globex.len(), 3);
        // The file as an earlier version left it: no log tables, no marker.
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(TLOG).unwrap();
            tx.delete_table(TLOG_JOBS).unwrap();
            tx.open_table(META).unwrap().remove(BACKFILLED).unwrap();
            tx.commit().unwrap();
            let tx = db.begin_read().unwrap();
            let names: Vec<String> = tx
                .list_tables()
                .unwrap()
                .map(|t| t.name().to_string())
                .collect();
            assert!(!names.contains(&"transparency_leaves".to_string()));
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.log_leaves("acme", None).await.unwrap(), acme);
        assert_eq!(store.log_leaves("globex", None).await.unwrap(), globex);
        // Reopening does not append them again; the next finished job continues the log.
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let l = store.claim("w2", 60_000, 10).await.unwrap();
        store.append(finish(&l[0])).await.unwrap();
        let after = store.log_leaves(&l[0].tenant, None).await.unwrap();
        let before = if l[0].tenant == "acme" {
            &acme
        } else {
            &globex
        };
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(after[before.len()].job_id, l[0].job_id);
    }
}
