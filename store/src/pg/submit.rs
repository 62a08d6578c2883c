//! Submissions on PostgreSQL: the group-submit batcher. Concurrent `submit` calls queue in
//! the process (tenants in turn) and a batch is stored with one statement: every new job
//! row, its `job_submitted` event (hash-chained from `GENESIS`, hashed in SQL around the
//! database clock: `aetheris_runtime::chain::parts_around_time`) and its audit row,
//! committed together (G1 before any caller is answered). Idempotency: a (tenant, key)
//! already taken inserts nothing for that entry, and the caller gets the winner.

use super::batch::{self, next_fair_batch, FairChannel, TxFailed};
use super::clock::{new_job_id, DbClock};
use super::conn::Conn;
use super::rows::{col, summary_at};
use crate::fair::FairQueue;
use crate::{AuditEntry, JobSummary, NewJob, Result, StoreError};
use aetheris_runtime::chain::{parts_around_time, GENESIS};
use aetheris_runtime::{EventBody, JobId, JobStatus};
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// Group submit: every new job of the batch (its row, its `job_submitted` event, its
/// audit row when `a_tenant` is set) in one statement and one commit, one round trip.
/// The database clock stamps them all (`recorded_at`, `created_at`, the audit time), and
/// each event's hash is computed here, around that clock: the caller sends the canonical
/// bytes before the time (`head`: prev hash, job id, seq) and after it (`tail`: kind
/// length, kind, payload digest; see `aetheris_runtime::chain::canonical_header`), and
/// `sha256(head ‖ int8send(now) ‖ tail)` is exactly `event_hash` (big-endian i64). A key
/// already taken (or twice in the batch) inserts nothing for that entry; the caller looks
/// the winner up. Returns the ids inserted, each with the clock.
const SUBMIT_BATCH_INSERT_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                         $6::text[], $7::text[], $8::text[], $9::text[])
        AS i(job_id, tenant, key, head, tail, payload, a_tenant, a_actor, a_action)
), stamped AS MATERIALIZED (
    SELECT i.job_id, i.tenant, i.key, i.payload, i.a_tenant, i.a_actor, i.a_action,
           c.now_ms, sha256(i.head || int8send(c.now_ms) || i.tail) AS hash
    FROM input i, clock c
), j AS (
    INSERT INTO jobs (job_id, tenant, status, idempotency_key, last_seq, last_hash,
                      created_at, updated_at, token)
    SELECT job_id, tenant, 'queued', key, 1, hash, now_ms, now_ms, 0 FROM stamped
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING job_id
), e AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT s.job_id, 1, s.now_ms, 'job_submitted', s.payload, $10, s.hash
    FROM stamped s JOIN j ON j.job_id = s.job_id
    RETURNING job_id, recorded_at
), a AS (
    INSERT INTO access_audit_log (at, tenant, actor, action, target, result)
    SELECT s.now_ms, s.a_tenant, s.a_actor, s.a_action, s.job_id::text, 'ok'
    FROM stamped s JOIN e ON e.job_id = s.job_id WHERE s.a_tenant IS NOT NULL
)
SELECT e.job_id, e.recorded_at, pg_notify('aetheris_work', '') FROM e"
);

const SUBMIT_EXISTING_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.tenant = $1 AND j.idempotency_key = $2"
);

/// A submission waiting for the group-submit batcher, with where its answer goes.
pub(super) struct QueuedSubmit {
    job: NewJob,
    audit: Option<AuditEntry>,
    reply: tokio::sync::oneshot::Sender<Result<(JobSummary, bool)>>,
}

/// Most submissions one group-submit statement carries.
const SUBMIT_MAX_BATCH: usize = 128;
/// A tenant's submissions per batch while other tenants submit too (`FairQueue`): a
/// flood's batches stay short, and another tenant's submission waits for one of them at
/// most, not for the flood (W6).
const SUBMIT_CONTENDED_QUOTA: usize = 16;
/// Submissions that may wait for the batcher before `submit` callers wait to enqueue.
const SUBMIT_QUEUE: usize = 8_192;

/// Starts the group-submit batchers on the current runtime: the queue `submit` goes
/// through, and the count of batches stored.
pub(super) fn start_group_submit(
    pool: &Pool,
    pool_size: usize,
    hint: Arc<Notify>,
) -> (tokio::sync::mpsc::Sender<QueuedSubmit>, Arc<AtomicU64>) {
    let fair = FairQueue::new(SUBMIT_CONTENDED_QUOTA).sharing_batches();
    let (submits, queue) = batch::channel(SUBMIT_QUEUE, fair);
    let batches = Arc::new(AtomicU64::new(0));
    let clock = Arc::new(DbClock::default());
    for _ in 0..batch::batchers(pool_size) {
        tokio::spawn(group_submit_worker(
            pool.clone(),
            hint.clone(),
            queue.clone(),
            batches.clone(),
            clock.clone(),
        ));
    }
    (submits, batches)
}

/// One submission, through the group-submit batcher: concurrent submissions share one
/// round trip and one commit.
pub(super) async fn submit_one(
    submits: &tokio::sync::mpsc::Sender<QueuedSubmit>,
    job: NewJob,
    audit: Option<&AuditEntry>,
) -> Result<(JobSummary, bool)> {
    let audit = audit.cloned();
    batch::ask(submits, "submit", |reply| QueuedSubmit {
        job,
        audit,
        reply,
    })
    .await
}

/// Group submit: `submit` callers queue here; a worker takes what is queued (tenants in
/// turn, up to `SUBMIT_MAX_BATCH`) and stores it with one statement (`submit_batch`):
/// every new row, event and audit row, stamped with the database clock and committed
/// together; only an entry whose idempotency key was taken costs a lookup more. A flood
/// of concurrent submitters thus costs the database one statement per batch instead of
/// two round trips and one commit per job,
/// and waits here, in the process, not as busy backends that another tenant's statements
/// queue behind (W6). Ends when every `PgStore` clone (every sender) is gone.
async fn group_submit_worker(
    pool: Pool,
    hint: Arc<Notify>,
    queue: Arc<FairChannel<QueuedSubmit>>,
    batches: Arc<AtomicU64>,
    clock: Arc<DbClock>,
) {
    let tenant = |q: &QueuedSubmit| Some(Arc::<str>::from(q.job.tenant.as_str()));
    loop {
        let Some((batch, tenants)) = next_fair_batch(&queue, tenant, SUBMIT_MAX_BATCH).await else {
            return;
        };
        // A caller that gave up (dropped its future) gets nothing stored.
        let batch: Vec<QueuedSubmit> = batch.into_iter().filter(|q| !q.reply.is_closed()).collect();
        if batch.is_empty() {
            queue.finished(tenants);
            continue;
        }
        let single = batch.len() == 1;
        let (jobs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|q| ((q.job, q.audit), q.reply))
            .unzip();
        batches.fetch_add(1, Relaxed);
        match submit_batch(&pool, &clock, &jobs).await {
            Ok(results) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r);
                }
            }
            // One bad entry must not fail other callers' (other tenants') submissions:
            // a batch that certainly stored nothing is retried one job at a time, so only
            // its own caller fails. (One whose fate is unknown is not: a job without an
            // idempotency key would be stored twice.)
            Err(f) if f.unwritten && !single => {
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let one = std::slice::from_ref(&job);
                    let r = match submit_batch(&pool, &clock, one).await {
                        Ok(mut rs) => rs.pop().unwrap_or_else(|| {
                            Err(StoreError::Backend("empty submit result".into()))
                        }),
                        Err(f) => Err(f.error),
                    };
                    let _ = reply.send(r);
                }
            }
            Err(f) => {
                for reply in replies {
                    let _ = reply.send(Err(f.error.clone()));
                }
            }
        }
        queue.finished(tenants);
        super::fire(&hint);
    }
}

/// Stores a batch of submissions (see `group_submit_worker`); one result per entry, in
/// order. `Err` when a statement failed (nothing of the batch was stored).
async fn submit_batch(
    pool: &Pool,
    clock: &DbClock,
    jobs: &[(NewJob, Option<AuditEntry>)],
) -> std::result::Result<Vec<Result<(JobSummary, bool)>>, TxFailed> {
    let client = Conn::get(pool).await?;
    // Job ids are UUIDv7 stamped with the database clock as last seen plus the time
    // since (`clock`), so ids stay in database-clock order across gateways without a
    // round trip of their own; the times recorded are the database's own, at insert.
    let id_ms = clock.estimate();
    let mut results: Vec<Option<Result<(JobSummary, bool)>>> = Vec::with_capacity(jobs.len());
    let mut ids = Vec::new();
    let mut tenants = Vec::new();
    let mut new_keys = Vec::new();
    let mut heads = Vec::new();
    let mut tails = Vec::new();
    let mut payloads = Vec::new();
    let (mut a_tenants, mut a_actors, mut a_actions) = (Vec::new(), Vec::new(), Vec::new());
    let mut new_at: Vec<(usize, JobId)> = Vec::new();
    for (job, audit) in jobs {
        let id = new_job_id(id_ms);
        let body = EventBody::JobSubmitted {
            tenant: job.tenant.clone(),
            plan: job.plan.clone(),
            input: job.input.clone(),
            idempotency_key: job.idempotency_key.clone(),
        };
        let payload = match payload_text(&body) {
            Ok(p) => p,
            Err(e) => {
                results.push(Some(Err(e)));
                continue;
            }
        };
        let (head, tail) = parts_around_time(&GENESIS, id, 1, body.kind(), payload.as_bytes());
        new_at.push((results.len(), id));
        results.push(None);
        ids.push(id.0);
        tenants.push(job.tenant.as_str());
        new_keys.push(job.idempotency_key.as_deref());
        heads.push(head);
        tails.push(tail);
        payloads.push(payload);
        a_tenants.push(audit.as_ref().map(|a| a.tenant.as_str()));
        a_actors.push(audit.as_ref().map(|a| a.actor.as_str()));
        a_actions.push(audit.as_ref().map(|a| a.action.as_str()));
    }
    let mut inserted: HashMap<Uuid, i64> = HashMap::new();
    if !ids.is_empty() {
        let insert = client
            .prepare_cached(SUBMIT_BATCH_INSERT_SQL)
            .await
            .map_err(|e| client.err(e))?;
        let rows = client
            .query(
                &insert,
                &[
                    &ids,
                    &tenants,
                    &new_keys,
                    &heads,
                    &tails,
                    &payloads,
                    &a_tenants,
                    &a_actors,
                    &a_actions,
                    &GENESIS.as_slice(),
                ],
            )
            .await
            .map_err(|e| TxFailed {
                // A server error rolled the statement back; anything else (a lost
                // connection) may have come after its commit.
                unwritten: e.as_db_error().is_some(),
                error: client.err(e),
            })?;
        for r in &rows {
            // Committed already: a failure here is not a batch that stored nothing.
            let (id, at) = col::<Uuid>(r, 0)
                .and_then(|id| Ok((id, col::<i64>(r, 1)?)))
                .map_err(|error| TxFailed {
                    error,
                    unwritten: false,
                })?;
            clock.saw(at);
            inserted.insert(id, at);
        }
    }
    for (i, id) in new_at {
        let job = &jobs[i].0;
        results[i] = Some(if let Some(&now) = inserted.get(&id.0) {
            Ok((
                JobSummary {
                    job_id: id,
                    tenant: job.tenant.clone(),
                    status: JobStatus::Queued,
                    idempotency_key: job.idempotency_key.clone(),
                    last_seq: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
                true,
            ))
        } else {
            // Another submission with the same key won (concurrently, or earlier in this
            // batch); it has committed.
            submit_existing(&client, job).await.map(|s| (s, false))
        });
    }
    // An idempotent repeat changes nothing; its audit row is written on its own.
    let mut out = Vec::with_capacity(jobs.len());
    for (r, (_, audit)) in results.into_iter().zip(jobs) {
        let r = r.unwrap_or_else(|| Err(StoreError::Backend("submit result missing".into())));
        if let (Ok((existing, false)), Some(a)) = (&r, audit) {
            let entry = AuditEntry {
                target: existing.job_id.to_string(),
                result: "existing".into(),
                ..a.clone()
            };
            if let Err(e) = super::audit::record(&client, &entry).await {
                out.push(Err(e));
                continue;
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The job holding `job`'s (tenant, idempotency key), which has committed.
async fn submit_existing(client: &Conn, job: &NewJob) -> Result<JobSummary> {
    let row = client
        .cached_query_opt(SUBMIT_EXISTING_SQL, &[&job.tenant, &job.idempotency_key])
        .await?
        .ok_or_else(|| StoreError::Backend("idempotency conflict on a job that is gone".into()))?;
    summary_at(&row, 0)
}

fn payload_text(body: &EventBody) -> Result<String> {
    let bytes = body.payload();
    if bytes.is_empty() {
        return Err(StoreError::Rejected(format!(
            "{} event cannot be serialized",
            body.kind()
        )));
    }
    String::from_utf8(bytes).map_err(|e| StoreError::Rejected(format!("payload: {e}")))
}
