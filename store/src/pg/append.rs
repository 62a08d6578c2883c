//! Appends on PostgreSQL: the group-commit batcher and the two ways a batch is written.
//!
//! Invariants kept here (G3, G7, and G1 through the commit):
//! - Every append of a batch is planned by `aetheris_runtime::plan_append` in memory
//!   (`append_plan`) before anything is written, and written by one statement
//!   (`append_write`) that fences each job on the exact head its appends were planned
//!   against; a refused append writes nothing while the others of its batch commit.
//! - One statement when every job of the batch is known (`known`: this process wrote or
//!   claimed it last): planned against what is known, written by the statement alone —
//!   its own transaction, one round trip, one commit. What is known is only a hint: a
//!   job whose row no longer holds that head gets nothing written by the statement, and
//!   its appends, like any append planning refused, are decided again by the locking
//!   transaction.
//! - Otherwise the locking transaction, in two round trips: BEGIN + row locks (in
//!   `job_id` order, so writers never deadlock) + ledger read pipelined, then the write
//!   statement with COMMIT pipelined behind it. A connection never returns to the pool
//!   with a transaction open (`TxConn`).
//! - An append that finishes a job adds its tenant's transparency leaf in the same
//!   statement (`append_write::WRITE_WITH_LEAVES_SQL`): each tenant's indexes are
//!   gap-free and unique across concurrent transactions and processes.
//! - Group commit: single `append`s from concurrent jobs share one transaction and one WAL
//!   flush, tenants in turn (appends that finish their job on a batcher of their own:
//!   `GroupCommit`); a batch that certainly wrote nothing when it failed is retried
//!   one append at a time, so one append the server refuses cannot fail the others.

use super::append_plan::{BatchPlan, JobMem, Outcome};
use super::append_write;
use super::batch::{self, next_fair_batch, FairChannel, TxFailed};
use super::conn::{error, Conn};
use super::known::KnownJobs;
use super::rows::{col, hash32, parse_effect, parse_ledger_status, parse_status, to_u64};
use crate::fair::{FairQueue, JobTenants};
use crate::{Append, Result, StoreError};
use aetheris_runtime::{EventBody, JobHead, JobId, LedgerRow, RecordedEvent};
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

/// The slow path's first round trip: the job rows, locked in id order (so writers never
/// deadlock), and every ledger row of those jobs (its own statement, so its snapshot is
/// taken after the locks are held).
const LOCK_JOBS_SQL: &str = "SELECT job_id, status, last_seq, last_hash, token, updated_at, \
     tenant FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE";

const LEDGER_FOR_JOBS_SQL: &str = "SELECT job_id, step, invocation_key, attempt, effect, status, \
     updated_at FROM ledger WHERE job_id = ANY($1)";

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

/// What the append batchers share: the pool, what is known of the jobs written (so most
/// appends take one statement), and the counters of how appends were written.
#[derive(Clone)]
pub(super) struct Appender {
    pub(super) pool: Pool,
    pub(super) known: Arc<KnownJobs>,
    pub(super) stats: Arc<AppendCounters>,
}

/// The group-commit queues single appends go through: one for appends that finish their
/// job, one for all others.
///
/// Why two: the statement that finishes a job appends its tenant's transparency leaf,
/// which takes the tenant's `transparency_heads` row lock and holds it until the commit
/// (and its WAL flush) is over. With every batcher free to carry a finishing append, a
/// batch of steps that happens to include one waits for the other batches' leaves, and
/// at 64 jobs over a quarter of the batches did (W1 on PostgreSQL: the leaf statement took
/// 1.58 ms against 0.68 ms; 0.62 ms once on its own batcher: docs/benchmarks.md). Finishing appends go to one
/// batcher of their own instead: within a process they never wait for each other's
/// heads, and the step batches never wait for a head at all. Which queue an append takes
/// is only a matter of speed: either statement writes any append correctly.
#[derive(Clone)]
pub(super) struct GroupCommit {
    steps: tokio::sync::mpsc::Sender<Queued>,
    finishes: tokio::sync::mpsc::Sender<Queued>,
}

/// Starts the group-commit batchers on the current runtime (`GroupCommit`).
pub(super) fn start_group_commit(
    appender: &Appender,
    pool_size: usize,
    job_tenants: Arc<Mutex<JobTenants>>,
) -> GroupCommit {
    let start = |batchers: usize| {
        let (group, queue) = batch::channel(GROUP_QUEUE, FairQueue::new(GROUP_CONTENDED_QUOTA));
        for _ in 0..batchers {
            tokio::spawn(group_commit_worker(
                appender.clone(),
                queue.clone(),
                job_tenants.clone(),
            ));
        }
        group
    };
    GroupCommit {
        steps: start(batch::batchers(pool_size)),
        finishes: start(1),
    }
}

/// Whether `a` finishes its job (so its statement appends a transparency leaf), as far
/// as its events tell.
fn finishes(a: &Append) -> bool {
    a.events.iter().any(EventBody::ends_job)
}

/// One append, through a group-commit batcher (`group_commit_worker`).
pub(super) async fn append_one(group: &GroupCommit, a: Append) -> Result<Vec<RecordedEvent>> {
    let queue = if finishes(&a) {
        &group.finishes
    } else {
        &group.steps
    };
    batch::ask(queue, "append", |reply| (a, reply)).await
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

/// The distinct job ids of a batch, in id order.
fn job_ids(batch: &[Append]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch.iter().map(|a| a.job_id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A failed write statement as a batch failure: certainly nothing written if the server
/// refused it (the transaction rolled back), unknown otherwise.
fn write_failed(e: tokio_postgres::Error, pool: &Pool) -> TxFailed {
    TxFailed {
        unwritten: e.as_db_error().is_some(),
        error: error(e, Some(pool)),
    }
}

impl Appender {
    /// Writes a batch: in one statement if every job of it is known (`one_statement`),
    /// else in a transaction that locks and reads the jobs first (`locking_tx`). Appends
    /// the one statement could not write (a job's head moved, or planning against what
    /// was known refused them) go through `locking_tx`, which decides for them.
    async fn append_tx(
        &self,
        batch: Vec<Append>,
    ) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, BatchFailed> {
        let ids = job_ids(&batch);
        let Some(known) = self.known.take_all(&ids) else {
            return self.locking_tx_or_retry(batch, &ids).await;
        };
        let jobs = known
            .into_iter()
            .map(|(id, k)| (id, JobMem::from_known(k)))
            .collect();
        let plan = BatchPlan::plan(jobs, batch.clone());
        if !plan.all_planned_with_events() {
            // What is known may be stale: only the locked rows may refuse an append.
            return self.locking_tx_or_retry(batch, &ids).await;
        }
        let outcomes = match self.one_statement(plan).await {
            Ok(outcomes) => outcomes,
            // The planned copy is gone with the statement; the batch itself is still here.
            Err(failed) => {
                return Err(BatchFailed {
                    failed,
                    retry: Some(batch),
                })
            }
        };
        let mut results: Vec<Option<Result<Vec<RecordedEvent>>>> = Vec::new();
        let mut again = Vec::new();
        for (a, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Recorded(events) => results.push(Some(Ok(events))),
                Outcome::Refused(e) => results.push(Some(Err(e))),
                Outcome::Unwritten => {
                    results.push(None);
                    again.push(a);
                }
            }
        }
        if again.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        // A job's head moved since it was known: decide under the row locks. The others
        // are written, so a failure here is theirs alone (never the batch's, which
        // `append_batch` would retry, written appends included).
        let again_ids = job_ids(&again);
        let n = again.len();
        let mut decided = match self.locking_tx(again, &again_ids).await {
            Ok(decided) => decided,
            Err(f) => vec![Err(f.error); n],
        }
        .into_iter();
        Ok(results
            .into_iter()
            .map(|r| {
                r.or_else(|| decided.next()).unwrap_or_else(|| {
                    Err(StoreError::Backend(
                        "append: no result for an append".into(),
                    ))
                })
            })
            .collect())
    }

    /// `locking_tx`, keeping a copy of a batch of several appends to retry one by one if
    /// the transaction fails as a whole (`append_batch`). Only this path copies: most
    /// batches take `one_statement`, whose caller still holds the batch when it fails.
    async fn locking_tx_or_retry(
        &self,
        batch: Vec<Append>,
        ids: &[Uuid],
    ) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, BatchFailed> {
        let retry = (batch.len() > 1).then(|| batch.clone());
        self.locking_tx(batch, ids)
            .await
            .map_err(|failed| BatchFailed { failed, retry })
    }

    /// The fast path: the planned batch written by the write statement alone, which is
    /// its own transaction (one round trip, one commit). Jobs it wrote become known again.
    async fn one_statement(&self, plan: BatchPlan) -> std::result::Result<Vec<Outcome>, TxFailed> {
        let pool = &self.pool;
        self.stats.transactions.fetch_add(1, Relaxed);
        let cols = plan.columns();
        let c = Conn::get(pool).await?;
        let st = c
            .prepare_cached(append_write::sql_for(&cols))
            .await
            .map_err(|e| TxFailed {
                unwritten: true,
                error: error(e, Some(pool)),
            })?;
        let rows = c
            .query(&st, &append_write::params(&cols))
            .await
            .map_err(|e| write_failed(e, pool))?;
        self.stats.one_statement.fetch_add(1, Relaxed);
        let written = append_write::written(&rows).map_err(|error| TxFailed {
            error,
            unwritten: false,
        })?;
        let (outcomes, known) = plan.finish(&written);
        self.known.put(known);
        Ok(outcomes)
    }

    /// The slow path, in two round trips: (1) BEGIN, lock the job rows in id order, read
    /// their ledger rows — pipelined; (2) the write statement with COMMIT pipelined behind
    /// it (a failed statement turns that COMMIT into a rollback). Every append is planned
    /// in memory against the locked rows first, so a refused append writes nothing while
    /// the others commit. Jobs written become known.
    async fn locking_tx(
        &self,
        batch: Vec<Append>,
        ids: &[Uuid],
    ) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
        let pool = &self.pool;
        self.stats.transactions.fetch_add(1, Relaxed);
        let conn = TxConn(Some(Conn::get(pool).await?.into_object()));
        let c = conn.client()?;
        // Cached after the first use on a connection: no round trip.
        let (begin, lock_st, ledger_st, commit) = tokio::try_join!(
            c.prepare_cached(BEGIN_SQL),
            c.prepare_cached(LOCK_JOBS_SQL),
            c.prepare_cached(LEDGER_FOR_JOBS_SQL),
            c.prepare_cached(COMMIT_SQL)
        )
        .map_err(|e| error(e, Some(pool)))?;
        // Round trip 1. Requests go out in poll order, so BEGIN precedes the lock.
        let id_params: [&(dyn ToSql + Sync); 1] = [&ids];
        let (_, job_rows, ledger_rows) = tokio::try_join!(
            c.execute(&begin, &[]),
            c.query(&lock_st, &id_params),
            c.query(&ledger_st, &id_params)
        )
        .map_err(|e| error(e, Some(pool)))?;
        let plan = BatchPlan::plan(locked_jobs(&job_rows, &ledger_rows)?, batch);
        if !plan.writes() {
            // Every append was refused: nothing to write.
            c.batch_execute("ROLLBACK")
                .await
                .map_err(|e| error(e, Some(pool)))?;
            conn.release();
            return Ok(plan
                .finish(&HashMap::new())
                .0
                .into_iter()
                .map(locked_result)
                .collect());
        }
        let cols = plan.columns();
        // Prepared before round trip 2 (cached after a connection's first use), so the
        // write is certainly sent before the COMMIT.
        let write_st = c
            .prepare_cached(append_write::sql_for(&cols))
            .await
            // Nothing was written yet: the batch can be retried.
            .map_err(|e| TxFailed {
                unwritten: true,
                error: error(e, Some(pool)),
            })?;
        // Round trip 2: the write, then COMMIT.
        let params = append_write::params(&cols);
        let (rows, _) = tokio::try_join!(c.query(&write_st, &params), c.execute(&commit, &[]))
            .map_err(|e| write_failed(e, pool))?;
        conn.release();
        let written = append_write::written(&rows).map_err(|error| TxFailed {
            error,
            unwritten: false,
        })?;
        let (outcomes, known) = plan.finish(&written);
        self.known.put(known);
        Ok(outcomes.into_iter().map(locked_result).collect())
    }
}

/// An append's result after the locking transaction: under the row locks its job's head
/// cannot have moved, so an unwritten append means the row was not there to update.
fn locked_result(outcome: Outcome) -> Result<Vec<RecordedEvent>> {
    match outcome {
        Outcome::Recorded(events) => Ok(events),
        Outcome::Refused(e) => Err(e),
        Outcome::Unwritten => Err(StoreError::Backend(
            "append: a locked job row was not updated; nothing was written".into(),
        )),
    }
}

/// The batch's jobs from the locked rows (`LOCK_JOBS_SQL`) and all their ledger rows.
fn locked_jobs(job_rows: &[Row], ledger_rows: &[Row]) -> Result<BTreeMap<Uuid, JobMem>> {
    let mut ledgers: HashMap<Uuid, HashMap<String, LedgerRow>> = HashMap::new();
    for r in ledger_rows {
        let (job, step, row) = ledger_row(r)?;
        ledgers.entry(job).or_default().insert(step, row);
    }
    job_rows
        .iter()
        .map(|r| {
            let id = col::<Uuid>(r, 0)?;
            let head = JobHead {
                status: parse_status(col(r, 1)?)?,
                last_seq: to_u64(col(r, 2)?, "last_seq")?,
                last_hash: hash32(col(r, 3)?, "last_hash")?,
                token: to_u64(col(r, 4)?, "token")?,
                updated_at_ms: col(r, 5)?,
            };
            let ledger = ledgers.remove(&id).unwrap_or_default();
            Ok((id, JobMem::new(col(r, 6)?, head, ledger)))
        })
        .collect()
}

/// A row of `LEDGER_FOR_JOBS_SQL`: its job, step and row.
fn ledger_row(r: &Row) -> Result<(Uuid, String, LedgerRow)> {
    let attempt: i64 = col(r, 3)?;
    Ok((
        col(r, 0)?,
        col(r, 1)?,
        LedgerRow {
            invocation_key: col(r, 2)?,
            attempt: u32::try_from(attempt)
                .map_err(|_| StoreError::Corrupt(format!("ledger attempt {attempt}")))?,
            effect: parse_effect(col(r, 4)?)?,
            status: parse_ledger_status(col(r, 5)?)?,
            updated_at_ms: col(r, 6)?,
        },
    ))
}

/// A batch whose transaction failed as a whole, with its appends when a batch of several
/// may be retried one by one (`Appender::append_batch`).
struct BatchFailed {
    failed: TxFailed,
    retry: Option<Vec<Append>>,
}

/// Counts of appends and of the transactions that carried them.
#[derive(Default)]
pub(super) struct AppendCounters {
    pub(super) appends: AtomicU64,
    pub(super) transactions: AtomicU64,
    pub(super) one_statement: AtomicU64,
}

/// How a store's appends were batched (cumulative), for the benchmark and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// Appends written or rejected by an append transaction.
    pub appends: u64,
    /// Append transactions run (each one commit, or one rollback if all were rejected).
    pub transactions: u64,
    /// Of those, the ones that were a single statement (every job known: no lock round
    /// trip, no BEGIN or COMMIT).
    pub one_statement: u64,
}

impl Appender {
    /// Appends a batch (`append_tx`), each append with its own fence, seq and ledger
    /// checks, failing alone. If the batch fails as a whole and certainly wrote nothing,
    /// each append is retried on its own, so one append the server refuses cannot fail
    /// the others. `Err` only when the batch failed as a whole. Jobs of a failed batch
    /// are no longer known (their next append reads them under lock).
    pub(super) async fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
        let n = batch.len() as u64;
        let ids: Vec<JobId> = batch.iter().map(|a| a.job_id).collect();
        let BatchFailed { failed, retry } = match self.append_tx(batch).await {
            Ok(results) => {
                self.stats.appends.fetch_add(n, Relaxed);
                return Ok(results);
            }
            Err(f) => f,
        };
        self.known.forget(ids);
        let retry = match retry {
            Some(appends) if failed.unwritten && appends.len() > 1 => appends,
            _ => return Err(failed),
        };
        tracing::warn!(error = %failed.error, "append transaction failed; retrying its appends one by one");
        let mut results = Vec::new();
        for a in retry {
            self.stats.appends.fetch_add(1, Relaxed);
            let id = a.job_id;
            results.push(match self.append_tx(vec![a]).await {
                Ok(mut v) => v
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::Backend("empty batch result".into()))),
                Err(f) => {
                    self.known.forget([id]);
                    Err(f.failed.error)
                }
            });
        }
        Ok(results)
    }
}

/// An append waiting for the group-commit batcher, with where its result goes.
pub(super) type Queued = (
    Append,
    tokio::sync::oneshot::Sender<Result<Vec<RecordedEvent>>>,
);

/// Group commit across jobs: single `append`s from all callers queue here; a worker takes
/// whatever is queued (up to `GROUP_MAX_APPENDS`) and writes it as one batch
/// (`Appender::append_batch`), so N concurrent jobs share one transaction and one WAL
/// flush. `batch::batchers` such workers run, so that many transactions are in flight at
/// once and a lone append never waits for another's commit. Each append keeps its own
/// fence, seq and ledger checks and fails alone. Ends when every `PgStore` clone (every
/// sender) is gone.
async fn group_commit_worker(
    appender: Appender,
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
        match appender.append_batch(appends).await {
            Ok(results) => {
                if let Ok(mut t) = job_tenants.lock() {
                    t.finished(&results);
                }
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

#[cfg(test)]
mod tests {
    use super::super::test_jobs::queue_jobs;
    use super::super::PgStore;
    use crate::{Append, JobLog, Leases, Scope};
    use aetheris_runtime::{EventBody, JobId};

    fn started(job: JobId, token: u64) -> Append {
        crate::pg::test_jobs::step_a_started("poison", job, token)
    }

    fn succeeded(job: JobId, token: u64) -> Append {
        Append {
            job_id: job,
            token,
            expected_last_seq: 2,
            events: vec![EventBody::StepSucceeded {
                step: "a".into(),
                attempt: 1,
                output: serde_json::json!(1),
            }],
        }
    }

    /// Sends `[good, bad]` as one batch: the good append must land and the poisoned one
    /// fail alone, leaving the two logs at these seqs.
    async fn good_lands_bad_fails_alone(
        store: &PgStore,
        batch: [Append; 2],
        good_seqs: &[u64],
        bad_seqs: &[u64],
    ) {
        let (good, bad) = (batch[0].job_id, batch[1].job_id);
        let results = store
            .append_many(batch.into())
            .await
            .expect("the batch answers per append");
        assert!(
            results[0].is_ok(),
            "the good append landed: {:?}",
            results[0]
        );
        assert!(results[1].is_err(), "the poisoned append failed alone");
        assert_eq!(seqs(store, good).await, good_seqs);
        assert_eq!(seqs(store, bad).await, bad_seqs, "nothing written");
    }

    async fn seqs(store: &PgStore, job: JobId) -> Vec<u64> {
        let events = store
            .read_events(Scope::System, job, 0, 100)
            .await
            .expect("read events");
        events.iter().map(|e| e.seq).collect()
    }

    /// A batch whose statement the server refuses as a whole (here a trigger raising for
    /// one job's event) certainly wrote nothing, so each of its appends is tried again on
    /// its own: the others land, the refused one fails alone and writes nothing. Both
    /// ways a batch is written: jobs this store does not know yet (the locking
    /// transaction) and jobs it knows from its last append (the statement alone, whose
    /// batch is retried from the appends the batcher still holds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_server_refuses_is_retried_one_append_at_a_time() {
        let url = crate::testing::pg_cluster::fresh_database_url().await;
        let store = PgStore::connect(&url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "poison", 4).await;
        let leases = store.claim("w", 60_000, 10).await.expect("claim");
        let [good1, bad1, good2, bad2] = leases.as_slice() else {
            panic!("claimed {} jobs, not 4", leases.len());
        };
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect client");
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE poison (job_id uuid, kind text);
                 CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF EXISTS (SELECT 1 FROM poison p
                                WHERE p.job_id = NEW.job_id AND p.kind = NEW.kind) THEN
                         RAISE EXCEPTION 'poisoned event';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON events
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
            )
            .await
            .expect("poison trigger");
        let poison = |job: JobId, kind: &str| {
            let (client, kind) = (&client, kind.to_string());
            async move {
                client
                    .execute("INSERT INTO poison VALUES ($1, $2)", &[&job.0, &kind])
                    .await
                    .expect("poison");
            }
        };

        // Unknown jobs: the locking transaction fails as a whole, then one by one.
        poison(bad1.job_id, "step_started").await;
        good_lands_bad_fails_alone(
            &store,
            [
                started(good1.job_id, good1.token),
                started(bad1.job_id, bad1.token),
            ],
            &[1, 2],
            &[1],
        )
        .await;

        // Known jobs: both start (and become known), then their next appends share one
        // statement, which the server refuses.
        let results = store
            .append_many(vec![
                started(good2.job_id, good2.token),
                started(bad2.job_id, bad2.token),
            ])
            .await
            .expect("append");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        poison(bad2.job_id, "step_succeeded").await;
        good_lands_bad_fails_alone(
            &store,
            [
                succeeded(good2.job_id, good2.token),
                succeeded(bad2.job_id, bad2.token),
            ],
            &[1, 2, 3],
            &[1, 2],
        )
        .await;
        // The refused job is decided under its lock next time, and lands once allowed.
        client
            .execute("DELETE FROM poison", &[])
            .await
            .expect("unpoison");
        let again = store
            .append(succeeded(bad2.job_id, bad2.token))
            .await
            .expect("the same append, allowed now");
        assert_eq!(again.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    }
}
