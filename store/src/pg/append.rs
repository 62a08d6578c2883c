//! Appends on PostgreSQL: the append transaction and the group-commit batcher.
//!
//! Invariants kept here (G3, G7, and G1 through the commit):
//! - Every append of a batch is planned by `aetheris_runtime::plan_append` (fence, seq,
//!   ledger moves, status, chain hashes, timer change) in memory, against the job rows
//!   locked in the same transaction and their ledger rows, *before* anything is written; a
//!   refused append writes nothing while the others of its batch commit.
//! - One transaction is two round trips: BEGIN + row locks (in `job_id` order, so writers
//!   never deadlock) + ledger read pipelined, then one multi-row `UNNEST` statement writing
//!   events, ledger rows and job rows (fenced again by token) with COMMIT pipelined behind
//!   it. A connection never returns to the pool with a transaction open (`TxConn`).
//! - An append that finishes a job adds its tenant's transparency leaf in the same
//!   transaction (`crate::transparency::leaf_of`; `APPEND_LEAVES_SQL`, pipelined between
//!   the write and the COMMIT, only when the batch finishes a job): each tenant's indexes
//!   are gap-free and unique across concurrent transactions and processes.
//! - Group commit: single `append`s from concurrent jobs share one transaction and one WAL
//!   flush, tenants in turn; a batch that certainly wrote nothing when it failed is retried
//!   one append at a time, so one append the server refuses cannot fail the others.

use super::batch::{self, next_fair_batch, FairChannel, TxFailed};
use super::conn::{error, Conn};
use super::rows::{col, hash32, parse_effect, parse_ledger_status, parse_status, to_i64, to_u64};
use crate::fair::{FairQueue, JobTenants};
use crate::transparency::{leaf_of, NewLeaf};
use crate::{append_refused, Append, Result, StoreError};
use aetheris_runtime::{plan_append, JobHead, LedgerRow, RecordedEvent, TimerChange};
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

const LOCK_JOBS_SQL: &str = concat!(
    "SELECT job_id, status, last_seq, last_hash, token, updated_at, ",
    now_ms!(),
    ", tenant FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE"
);

const LEDGER_FOR_JOBS_SQL: &str = "SELECT job_id, step, invocation_key, attempt, effect, status, \
     updated_at FROM ledger WHERE job_id = ANY($1)";

/// All writes of an append transaction in one statement: the events, the ledger rows and
/// the job rows (fenced again by token), each job's wake-up time kept or replaced as its
/// appends' planned `TimerChange` says (`wake_keep`, `wake_at`). The final SELECT divides by zero — failing the
/// statement, so the COMMIT pipelined behind it rolls back — unless every locked job row
/// the batch changed was updated (it cannot be otherwise while the rows are locked).
const APPEND_WRITE_SQL: &str = "\
WITH ev AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::bytea[], $7::bytea[])
), led AS (
    INSERT INTO ledger (job_id, step, invocation_key, attempt, effect, status, updated_at)
    SELECT * FROM unnest($8::uuid[], $9::text[], $10::text[], $11::bigint[], $12::text[],
                         $13::text[], $14::bigint[])
    ON CONFLICT (job_id, step) DO UPDATE SET
        invocation_key = EXCLUDED.invocation_key, attempt = EXCLUDED.attempt,
        effect = EXCLUDED.effect, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
), upd AS (
    UPDATE jobs AS j
    SET status = u.status, last_seq = u.last_seq, last_hash = u.last_hash,
        updated_at = u.updated_at,
        wake_at = CASE WHEN u.wake_keep THEN j.wake_at ELSE u.wake_at END,
        wake_due = false
    FROM unnest($15::uuid[], $16::bigint[], $17::text[], $18::bigint[], $19::bytea[],
                $20::bigint[], $21::bool[], $22::bigint[])
        AS u(job_id, token, status, last_seq, last_hash, updated_at, wake_keep, wake_at)
    WHERE j.job_id = u.job_id AND j.token = u.token
    RETURNING 1
)
SELECT 1 / (CASE WHEN (SELECT count(*) FROM upd) = cardinality($15::uuid[]) THEN 1 ELSE 0 END)";

/// The transparency leaves of the jobs a batch finishes (`crate::transparency::leaf_of`):
/// each tenant's head row takes the batch's count of its leaves (`INSERT … ON CONFLICT DO
/// UPDATE`, in tenant order, so two transactions never wait for each other's heads in a
/// cycle), and the leaves take the indexes just below the new size (`back` = how many of
/// the tenant's leaves in this batch come from this one on). The head row stays locked
/// until commit, so a tenant's indexes are gap-free and unique across transactions and
/// processes, and commit in index order. Run only by batches that finish a job.
const APPEND_LEAVES_SQL: &str = "\
WITH n AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[], $4::bigint[], $5::bigint[])
        AS n(tenant, job_id, leaf_hash, appended_at, back)
), heads AS (
    INSERT INTO transparency_heads AS h (tenant, size)
    SELECT tenant, count(*) FROM n GROUP BY tenant ORDER BY tenant COLLATE \"C\"
    ON CONFLICT (tenant) DO UPDATE SET size = h.size + EXCLUDED.size
    RETURNING h.tenant, h.size
)
INSERT INTO transparency_leaves (tenant, idx, job_id, leaf_hash, appended_at)
SELECT n.tenant, heads.size - n.back, n.job_id, n.leaf_hash, n.appended_at
FROM n JOIN heads ON heads.tenant = n.tenant";

/// Transaction control as prepared statements, so they pipeline with the statements of
/// the transaction (one round trip for BEGIN + lock + ledger read, one for write + COMMIT).
const BEGIN_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
const COMMIT_SQL: &str = "COMMIT";

/// Most appends one group-commit transaction carries: enough to share commits widely, few
/// enough that a transaction stays short, since the next tenant's append waits for one.
const GROUP_MAX_APPENDS: usize = 128;
/// A tenant's appends per group-commit transaction while other tenants are active too
/// (`FairQueue`): a flood's transactions stay short, so another tenant's append waits
/// for a short one (W6).
const GROUP_CONTENDED_QUOTA: usize = 16;
/// Appends that may wait for the batcher before `append` callers wait to enqueue.
const GROUP_QUEUE: usize = 8_192;

/// Starts the group-commit batchers on the current runtime: the queue single appends go
/// through, and the counters of how they were batched.
pub(super) fn start_group_commit(
    pool: &Pool,
    pool_size: usize,
    job_tenants: Arc<Mutex<JobTenants>>,
) -> (tokio::sync::mpsc::Sender<Queued>, Arc<AppendCounters>) {
    let (group, queue) = batch::channel(GROUP_QUEUE, FairQueue::new(GROUP_CONTENDED_QUOTA));
    let stats = Arc::new(AppendCounters::default());
    for _ in 0..batch::batchers(pool_size) {
        tokio::spawn(group_commit_worker(
            pool.clone(),
            stats.clone(),
            queue.clone(),
            job_tenants.clone(),
        ));
    }
    (group, stats)
}

/// One append, through the group-commit batcher (`group_commit_worker`).
pub(super) async fn append_one(
    group: &tokio::sync::mpsc::Sender<Queued>,
    a: Append,
) -> Result<Vec<RecordedEvent>> {
    batch::ask(group, "append", |reply| (a, reply)).await
}

/// A locked job row as the batch sees it, including earlier appends of the same batch.
struct JobMem {
    tenant: String,
    head: JobHead,
    dirty: bool,
    /// What this batch's appends do to the job's timer, in order.
    timer: TimerChange,
}

/// Rows to write, column by column (for the `UNNEST` statements).
#[derive(Default)]
struct EventCols {
    job: Vec<Uuid>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    payload: Vec<String>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

/// The leaves of the jobs a batch finishes, column by column, each with its tenant.
#[derive(Default)]
struct LeafCols {
    tenant: Vec<String>,
    job: Vec<Uuid>,
    hash: Vec<Vec<u8>>,
    at: Vec<i64>,
}

impl LeafCols {
    fn push(&mut self, tenant: &str, leaf: NewLeaf) {
        self.tenant.push(tenant.to_string());
        self.job.push(leaf.job_id.0);
        self.hash.push(leaf.leaf_hash.to_vec());
        self.at.push(leaf.appended_at_ms);
    }

    /// For each leaf, how many leaves of its tenant in this batch come from it on (the
    /// statement's `back`: its index is the tenant's new size minus that).
    fn back(&self) -> Vec<i64> {
        let mut left: HashMap<&str, i64> = HashMap::new();
        for t in &self.tenant {
            *left.entry(t.as_str()).or_default() += 1;
        }
        self.tenant
            .iter()
            .map(|t| {
                let n = left.entry(t.as_str()).or_default();
                let back = *n;
                *n -= 1;
                back
            })
            .collect()
    }
}

/// Plans one append (`aetheris_runtime::plan_append`) against the batch's view of the
/// locked rows; on success updates the view and the write buffers (with the job's
/// transparency leaf if the append finishes it) and returns the recorded events. On
/// failure nothing is changed.
fn plan_one(
    a: Append,
    jobs: &mut HashMap<Uuid, JobMem>,
    ledger: &mut HashMap<(Uuid, String), LedgerRow>,
    dirty_ledger: &mut BTreeMap<(Uuid, String), LedgerRow>,
    events: &mut EventCols,
    leaves: &mut LeafCols,
    db_now: i64,
) -> Result<Vec<RecordedEvent>> {
    let id = a.job_id;
    let job = jobs.get_mut(&id.0).ok_or(StoreError::job_not_found(id))?;
    let lookup = |step: &str| Ok::<_, Infallible>(ledger.get(&(id.0, step.to_string())).cloned());
    let planned = plan_append(&job.head, a, db_now, lookup).map_err(|e| append_refused(id, e))?;
    let leaf = leaf_of(id, &job.head, &planned);
    for (step, row) in planned.ledger {
        let k = (id.0, step);
        ledger.insert(k.clone(), row.clone());
        dirty_ledger.insert(k, row);
    }
    for (e, payload) in planned.events.iter().zip(planned.payloads) {
        events.job.push(id.0);
        events.seq.push(to_i64(e.seq));
        events.at.push(e.recorded_at_ms);
        events.kind.push(e.body.kind());
        events.payload.push(payload);
        events.prev.push(e.prev_hash.to_vec());
        events.hash.push(e.hash.to_vec());
    }
    if let Some(leaf) = leaf {
        leaves.push(&job.tenant, leaf);
    }
    job.head = planned.head;
    job.timer = job.timer.then(planned.timer);
    job.dirty = true;
    Ok(planned.events)
}

/// A timer change as the write statement's columns: keep the stored wake-up time, or
/// replace it with the given one (NULL: no timer).
fn timer_columns(change: TimerChange) -> (bool, Option<i64>) {
    match change {
        TimerChange::Keep => (true, None),
        TimerChange::Set(at) => (false, Some(at)),
        TimerChange::Clear => (false, None),
    }
}

/// A pooled connection inside an append transaction. Unless `release` is called (the
/// transaction is over), dropping it takes the connection out of the pool and closes it,
/// so the server rolls the transaction back: a connection must never return to the pool
/// with a transaction open (e.g. when a caller drops its future half-way, or on errors).
struct TxConn(Option<deadpool_postgres::Object>);

impl TxConn {
    fn client(&self) -> Result<&deadpool_postgres::Object> {
        self.0
            .as_ref()
            .ok_or_else(|| StoreError::Backend("append connection already released".into()))
    }

    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// One append transaction for a batch (group commit), in two round trips: (1) BEGIN, lock
/// the job rows in id order, read their ledger rows — pipelined; the ledger read is its own
/// statement so its snapshot is taken after the locks are held; (2) one statement writing
/// events, ledger and job rows, with COMMIT pipelined behind it (a failed statement turns
/// that COMMIT into a rollback). Every append is planned in memory against the locked rows
/// first (`plan_one`), so a rejected append writes nothing while the others commit.
async fn append_tx(
    pool: &Pool,
    batch: Vec<Append>,
) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
    let mut ids: Vec<Uuid> = batch.iter().map(|a| a.job_id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut ledger_ids: Vec<Uuid> = batch
        .iter()
        .filter(|a| a.events.iter().any(|e| e.ledger_move().is_some()))
        .map(|a| a.job_id.0)
        .collect();
    ledger_ids.sort_unstable();
    ledger_ids.dedup();

    let conn = TxConn(Some(Conn::get(pool).await?.into_object()));
    let c = conn.client()?;
    // Cached after the first use on a connection: no round trip.
    let (begin, lock_st, ledger_st, write_st, commit) = tokio::try_join!(
        c.prepare_cached(BEGIN_SQL),
        c.prepare_cached(LOCK_JOBS_SQL),
        c.prepare_cached(LEDGER_FOR_JOBS_SQL),
        c.prepare_cached(APPEND_WRITE_SQL),
        c.prepare_cached(COMMIT_SQL)
    )
    .map_err(|e| error(e, Some(pool)))?;
    // Round trip 1. Requests go out in poll order, so BEGIN precedes the lock.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (_, job_rows, ledger_rows) = tokio::try_join!(
        c.execute(&begin, &[]),
        c.query(&lock_st, &lock_params),
        async {
            if ledger_ids.is_empty() {
                Ok(vec![])
            } else {
                c.query(&ledger_st, &[&ledger_ids]).await
            }
        }
    )
    .map_err(|e| error(e, Some(pool)))?;

    let mut db_now = 0i64;
    let mut jobs = HashMap::with_capacity(job_rows.len());
    for r in &job_rows {
        jobs.insert(
            col::<Uuid>(r, 0)?,
            JobMem {
                tenant: col(r, 7)?,
                head: JobHead {
                    status: parse_status(col(r, 1)?)?,
                    last_seq: to_u64(col(r, 2)?, "last_seq")?,
                    last_hash: hash32(col(r, 3)?, "last_hash")?,
                    token: to_u64(col(r, 4)?, "token")?,
                    updated_at_ms: col(r, 5)?,
                },
                dirty: false,
                timer: TimerChange::Keep,
            },
        );
        db_now = col(r, 6)?;
    }
    let mut ledger = HashMap::with_capacity(ledger_rows.len());
    for r in &ledger_rows {
        let attempt: i64 = col(r, 3)?;
        ledger.insert(
            (col::<Uuid>(r, 0)?, col::<String>(r, 1)?),
            LedgerRow {
                invocation_key: col(r, 2)?,
                attempt: u32::try_from(attempt)
                    .map_err(|_| StoreError::Corrupt(format!("ledger attempt {attempt}")))?,
                effect: parse_effect(col(r, 4)?)?,
                status: parse_ledger_status(col(r, 5)?)?,
                updated_at_ms: col(r, 6)?,
            },
        );
    }

    let mut dirty_ledger = BTreeMap::new();
    let mut events = EventCols::default();
    let mut leaves = LeafCols::default();
    let results: Vec<Result<Vec<RecordedEvent>>> = batch
        .into_iter()
        .map(|a| {
            plan_one(
                a,
                &mut jobs,
                &mut ledger,
                &mut dirty_ledger,
                &mut events,
                &mut leaves,
                db_now,
            )
        })
        .collect();

    let mut upd = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut wake_keep, mut wake_at): (Vec<bool>, Vec<Option<i64>>) = (vec![], vec![]);
    for (id, j) in jobs.iter().filter(|(_, j)| j.dirty) {
        upd.0.push(*id);
        upd.1.push(to_i64(j.head.token));
        upd.2.push(j.head.status.as_str());
        upd.3.push(to_i64(j.head.last_seq));
        upd.4.push(j.head.last_hash.to_vec());
        upd.5.push(j.head.updated_at_ms);
        let (keep, at) = timer_columns(j.timer);
        wake_keep.push(keep);
        wake_at.push(at);
    }
    if upd.0.is_empty() {
        // Every append failed validation: nothing to write.
        c.batch_execute("ROLLBACK")
            .await
            .map_err(|e| error(e, Some(pool)))?;
        conn.release();
        return Ok(results);
    }
    let mut led = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((id, step), l) in &dirty_ledger {
        led.0.push(*id);
        led.1.push(step.as_str());
        led.2.push(l.invocation_key.as_str());
        led.3.push(i64::from(l.attempt));
        led.4.push(l.effect.as_str());
        led.5.push(l.status.as_str());
        led.6.push(l.updated_at_ms);
    }

    // Prepared before round trip 2 (cached after a connection's first use), so that the
    // leaves statement is certainly sent between the write and the COMMIT.
    let leaves_st = if leaves.job.is_empty() {
        None
    } else {
        Some(
            c.prepare_cached(APPEND_LEAVES_SQL)
                .await
                // Nothing was written yet: the batch can be retried.
                .map_err(|e| TxFailed {
                    unwritten: true,
                    error: error(e, Some(pool)),
                })?,
        )
    };
    let back = leaves.back();
    let leaf_params: [&(dyn ToSql + Sync); 5] =
        [&leaves.tenant, &leaves.job, &leaves.hash, &leaves.at, &back];

    // Round trip 2: all writes (and a finished job's leaf), then COMMIT.
    let write_params: [&(dyn ToSql + Sync); 22] = [
        &events.job,
        &events.seq,
        &events.at,
        &events.kind,
        &events.payload,
        &events.prev,
        &events.hash,
        &led.0,
        &led.1,
        &led.2,
        &led.3,
        &led.4,
        &led.5,
        &led.6,
        &upd.0,
        &upd.1,
        &upd.2,
        &upd.3,
        &upd.4,
        &upd.5,
        &wake_keep,
        &wake_at,
    ];
    let written = tokio::try_join!(
        c.query_one(&write_st, &write_params),
        async {
            match &leaves_st {
                Some(st) => c.execute(st, &leaf_params).await,
                None => Ok(0),
            }
        },
        c.execute(&commit, &[])
    );
    match written {
        Ok(_) => {
            conn.release();
            Ok(results)
        }
        Err(e) => {
            let unwritten = e.as_db_error().is_some();
            let error = if e.code() == Some(&SqlState::DIVISION_BY_ZERO) {
                StoreError::Backend(
                    "append: a locked job row was not updated; nothing was written".into(),
                )
            } else {
                error(e, Some(pool))
            };
            Err(TxFailed { error, unwritten })
        }
    }
}

/// Counts of appends and of the transactions that carried them.
#[derive(Default)]
pub(super) struct AppendCounters {
    pub(super) appends: AtomicU64,
    pub(super) transactions: AtomicU64,
}

/// How a store's appends were batched (cumulative), for the benchmark and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// Appends written or rejected by an append transaction.
    pub appends: u64,
    /// Append transactions run (each one commit, or one rollback if all were rejected).
    pub transactions: u64,
}

/// Appends a batch in one transaction (`append_tx`), each append with its own fence, seq
/// and ledger checks, failing alone. If the transaction fails as a whole and certainly
/// wrote nothing, each append is retried in a transaction of its own, so one append the
/// server refuses cannot fail the others. `Err` only when the batch failed as a whole.
pub(super) async fn append_batch(
    pool: &Pool,
    stats: &AppendCounters,
    batch: Vec<Append>,
) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
    let n = batch.len() as u64;
    let retry = (batch.len() > 1).then(|| batch.clone());
    stats.transactions.fetch_add(1, Relaxed);
    match append_tx(pool, batch).await {
        Ok(results) => {
            stats.appends.fetch_add(n, Relaxed);
            Ok(results)
        }
        Err(f) if f.unwritten && retry.is_some() => {
            tracing::warn!(error = %f.error, "append transaction failed; retrying its appends one by one");
            let mut results = Vec::new();
            for a in retry.into_iter().flatten() {
                stats.transactions.fetch_add(1, Relaxed);
                stats.appends.fetch_add(1, Relaxed);
                results.push(match append_tx(pool, vec![a]).await {
                    Ok(mut v) => v
                        .pop()
                        .unwrap_or_else(|| Err(StoreError::Backend("empty batch result".into()))),
                    Err(f) => Err(f.error),
                });
            }
            Ok(results)
        }
        Err(f) => Err(f),
    }
}

/// An append waiting for the group-commit batcher, with where its result goes.
pub(super) type Queued = (
    Append,
    tokio::sync::oneshot::Sender<Result<Vec<RecordedEvent>>>,
);

/// Group commit across jobs: single `append`s from all callers queue here; a worker takes
/// whatever is queued (up to `GROUP_MAX_APPENDS`) and commits it as one `append_tx`, so N
/// concurrent jobs share one transaction and one WAL flush. `batch::batchers` such
/// workers run, so that many transactions are in flight at once and a lone append never
/// waits for another's commit. Each append keeps its own fence, seq and ledger checks and
/// fails alone (see `append_batch`). Ends when every `PgStore` clone (every sender) is
/// gone.
async fn group_commit_worker(
    pool: Pool,
    stats: Arc<AppendCounters>,
    queue: Arc<FairChannel<Queued>>,
    job_tenants: Arc<Mutex<JobTenants>>,
) {
    let tenant = |q: &Queued| job_tenants.lock().ok().map(|t| t.of(&q.0.job_id));
    loop {
        // Tenants in turn (W6): a tenant's backlog of appends does not fill every
        // transaction ahead of another tenant's next append.
        let Some((batch, _)) = next_fair_batch(&queue, tenant, GROUP_MAX_APPENDS).await else {
            return;
        };
        // A caller that gave up (dropped its future) gets nothing written.
        let (appends, replies): (Vec<Append>, Vec<_>) =
            batch.into_iter().filter(|(_, r)| !r.is_closed()).unzip();
        if appends.is_empty() {
            continue;
        }
        match append_batch(&pool, &stats, appends).await {
            Ok(results) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r);
                }
            }
            Err(f) => {
                for reply in replies {
                    let _ = reply.send(Err(f.error.clone()));
                }
            }
        }
    }
}
