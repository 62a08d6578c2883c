//! Submissions on PostgreSQL: the group-submit batcher. Concurrent `submit` calls queue in
//! the process (tenants in turn) and a batch is stored with one statement: every new job
//! row, its `job_submitted` event (hash-chained from `GENESIS`, hashed in SQL around the
//! database clock: `aetheris_runtime::chain::parts_around_time`) and its audit row,
//! committed together (G1 before any caller is answered). Idempotency: a (tenant, key)
//! already taken inserts nothing for that entry, and the caller gets the winner.
//! Hand-off (`crate::handoff`): the jobs of a batch that this store's worker has free
//! slots for are stored leased to it, and handed to it with their log, so they start
//! without a claim; every slot a batch takes goes back to the worker exactly once.

use super::batch::{self, next_fair_batch, FairChannel, TxFailed};
use super::clock::{new_job_id, DbClock};
use super::conn::Conn;
use super::known::{KnownJob, KnownJobs};
use super::rows::{col, hash32, summary_at, to_i64};
use crate::fair::{FairQueue, JobTenants};
use crate::handoff::{HandedOff, Handoff};
use crate::{AuditEntry, JobLoad, JobSummary, Lease, NewJob, Result, StoreError};
use aetheris_runtime::chain::{parts_around_time, GENESIS};
use aetheris_runtime::{EventBody, JobId, JobStatus, RecordedEvent};
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
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
/// the winner up. A job `leased` ($11) is stored leased to the worker whose offer it took
/// ($12, for $13 ms of the database clock; token 1, its first grant: see
/// `crate::handoff`), and wakes no claimer: only unleased jobs notify. Returns the ids
/// inserted, each with the clock and its event's hash.
const SUBMIT_BATCH_INSERT_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $11::bool[])
        AS i(job_id, tenant, key, head, tail, payload, a_tenant, a_actor, a_action, leased)
), stamped AS MATERIALIZED (
    SELECT i.job_id, i.tenant, i.key, i.payload, i.a_tenant, i.a_actor, i.a_action,
           i.leased, c.now_ms, sha256(i.head || int8send(c.now_ms) || i.tail) AS hash
    FROM input i, clock c
), j AS (
    INSERT INTO jobs (job_id, tenant, status, idempotency_key, last_seq, last_hash,
                      created_at, updated_at, token, lease_owner, lease_expires_at)
    SELECT job_id, tenant, 'queued', key, 1, hash, now_ms, now_ms,
           CASE WHEN leased THEN 1 ELSE 0 END,
           CASE WHEN leased THEN $12::text END,
           CASE WHEN leased THEN now_ms + $13::bigint END
    FROM stamped
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING job_id
), e AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT s.job_id, 1, s.now_ms, 'job_submitted', s.payload, $10, s.hash
    FROM stamped s JOIN j ON j.job_id = s.job_id
    RETURNING job_id, recorded_at, hash
), a AS (
    INSERT INTO access_audit_log (at, tenant, actor, action, target, result)
    SELECT s.now_ms, s.a_tenant, s.a_actor, s.a_action, s.job_id::text, 'ok'
    FROM stamped s JOIN e ON e.job_id = s.job_id WHERE s.a_tenant IS NOT NULL
)
SELECT e.job_id, e.recorded_at, e.hash,
       CASE WHEN NOT s.leased THEN pg_notify('aetheris_work', '') END
FROM e JOIN stamped s ON s.job_id = e.job_id"
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

/// What the group-submit batchers share with the rest of the store.
#[derive(Clone)]
pub(super) struct Submitting {
    pub(super) pool: Pool,
    /// Fired after a batch that stored claimable (unleased) jobs.
    pub(super) hint: Arc<Notify>,
    /// Where this store's worker offers its free slots.
    pub(super) handoff: Arc<Handoff>,
    /// A job handed off is known to the appender, as a claimed new job is, so its first
    /// append needs no lock round trip.
    pub(super) known: Arc<KnownJobs>,
    /// The tenants of leased jobs, for the append batcher's turns.
    pub(super) job_tenants: Arc<Mutex<JobTenants>>,
    /// Jobs stored handed off so far (`PgStore::handed_off`).
    pub(super) handed_off: Arc<AtomicU64>,
}

/// Starts the group-submit batchers on the current runtime: the queue `submit` goes
/// through, and the count of batches stored.
pub(super) fn start_group_submit(
    shared: &Submitting,
    pool_size: usize,
) -> (tokio::sync::mpsc::Sender<QueuedSubmit>, Arc<AtomicU64>) {
    let fair = FairQueue::new(SUBMIT_CONTENDED_QUOTA).sharing_batches();
    let (submits, queue) = batch::channel(SUBMIT_QUEUE, fair);
    let batches = Arc::new(AtomicU64::new(0));
    let clock = Arc::new(DbClock::default());
    for _ in 0..batch::batchers(pool_size) {
        tokio::spawn(group_submit_worker(
            shared.clone(),
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
    shared: Submitting,
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
        // Whether claimers must look: a batch stored jobs it did not hand off (or may
        // have: after a failure, look anyway).
        let mut claimable = true;
        match submit_batch(&shared, &clock, &jobs).await {
            Ok(stored) => {
                claimable = stored.claimable;
                for (r, reply) in stored.results.into_iter().zip(replies) {
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
                    let r = match submit_batch(&shared, &clock, one).await {
                        Ok(mut stored) => stored.results.pop().unwrap_or_else(|| {
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
        if claimable {
            super::fire(&shared.hint);
        }
    }
}

/// What one submission statement stored: one result per entry, in order, and whether it
/// stored a job not handed off (claimable: claimers must look).
struct Stored {
    results: Vec<Result<(JobSummary, bool)>>,
    claimable: bool,
}

/// The slots a batch took from the worker's offer, and the leases it stored with them:
/// handed to the worker when dropped, on every path out of `submit_batch`, so each slot
/// goes back exactly once (with its lease, or without when its job was not stored).
struct Handing<'a> {
    handoff: &'a Handoff,
    slots: usize,
    leases: Vec<(Lease, JobLoad)>,
}

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        if self.slots > 0 {
            self.handoff.deliver(HandedOff {
                slots: self.slots,
                leases: std::mem::take(&mut self.leases),
            });
        }
    }
}

/// Stores a batch of submissions (see `group_submit_worker`); one result per entry, in
/// order. `Err` when a statement failed (nothing of the batch was stored).
async fn submit_batch(
    shared: &Submitting,
    clock: &DbClock,
    jobs: &[(NewJob, Option<AuditEntry>)],
) -> std::result::Result<Stored, TxFailed> {
    let client = Conn::get(&shared.pool).await?;
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
    let mut bodies = Vec::new();
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
        bodies.push(body);
        a_tenants.push(audit.as_ref().map(|a| a.tenant.as_str()));
        a_actors.push(audit.as_ref().map(|a| a.actor.as_str()));
        a_actions.push(audit.as_ref().map(|a| a.action.as_str()));
    }
    // Taken after the entries are known (only a job that will be sent can take a slot).
    let taken = shared.handoff.take(tenants.iter().copied());
    let leased = taken
        .as_ref()
        .map_or_else(|| vec![false; ids.len()], |t| t.leased.clone());
    let (worker, ttl_ms) = taken
        .as_ref()
        .map_or(("", 0), |t| (t.worker.as_str(), t.ttl_ms));
    let mut handing = Handing {
        handoff: &shared.handoff,
        slots: taken.as_ref().map_or(0, |t| t.slots()),
        leases: Vec::new(),
    };
    let mut claimable = false;
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
                    &leased,
                    &worker,
                    &to_i64(ttl_ms),
                ],
            )
            .await
            .map_err(|e| TxFailed {
                // A server error rolled the statement back; anything else (a lost
                // connection) may have come after its commit.
                unwritten: e.as_db_error().is_some(),
                error: client.err(e),
            })?;
        let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for r in &rows {
            // Committed already: a failure here is not a batch that stored nothing (a
            // job handed off whose lease is lost here is claimed once it expires).
            let (id, at, hash) = col::<Uuid>(r, 0)
                .and_then(|id| Ok((id, col::<i64>(r, 1)?, hash32(col(r, 2)?, "event hash")?)))
                .map_err(|error| TxFailed {
                    error,
                    unwritten: false,
                })?;
            clock.saw(at);
            inserted.insert(id, at);
            match index.get(&id) {
                Some(&i) if leased[i] => handing.leases.push(handed_off(
                    JobId(id),
                    tenants[i],
                    at,
                    ttl_ms,
                    bodies[i].clone(),
                    hash,
                )),
                _ => claimable = true,
            }
        }
        shared
            .handed_off
            .fetch_add(handing.leases.len() as u64, Relaxed);
        let leases = handing.leases.iter().map(|(l, _)| l);
        if let Ok(mut t) = shared.job_tenants.lock() {
            t.leased(leases.clone());
        }
        shared
            .known
            .put(handing.leases.iter().filter_map(|(l, load)| {
                Some((
                    l.job_id.0,
                    KnownJob::fresh(&l.tenant, l.token, load.events.first()?)?,
                ))
            }));
    }
    drop(handing);
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
    Ok(Stored {
        results: out,
        claimable,
    })
}

/// The lease of a job stored handed off, with its whole log: its `job_submitted` event.
fn handed_off(
    job_id: JobId,
    tenant: &str,
    at: i64,
    ttl_ms: u64,
    body: EventBody,
    hash: [u8; 32],
) -> (Lease, JobLoad) {
    let lease = Lease {
        job_id,
        tenant: tenant.to_string(),
        token: 1,
        expires_at_ms: at.saturating_add(to_i64(ttl_ms)),
    };
    let submitted = RecordedEvent {
        job_id,
        seq: 1,
        recorded_at_ms: at,
        body,
        prev_hash: GENESIS,
        hash,
    };
    let load = JobLoad {
        snapshot: None,
        events: vec![submitted],
        commands: Vec::new(),
    };
    (lease, load)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{Offer, Withdrawn};
    use crate::{JobLog, Leases, Scope};
    use std::time::Duration;

    fn offer(worker: &str, ttl_ms: u64, room: usize) -> Offer {
        Offer {
            worker: worker.into(),
            ttl_ms,
            room,
            default_limit: None,
            tenant_limits: Default::default(),
        }
    }

    fn job(tenant: &str, key: Option<&str>) -> NewJob {
        NewJob {
            tenant: tenant.into(),
            idempotency_key: key.map(str::to_string),
            plan: serde_json::from_value(
                serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}),
            )
            .expect("plan"),
            input: serde_json::json!({"n": 1}),
        }
    }

    async fn store() -> super::super::PgStore {
        let url = crate::testing::pg_cluster::fresh_database_url().await;
        let store = super::super::PgStore::connect(&url, 4)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// The step-1 start a worker appends for a job it leased under `token`.
    fn first_append(job: JobId, token: u64) -> crate::Append {
        crate::pg::test_jobs::step_a_started("t", job, token)
    }

    /// Drains the hint's stored wake-ups.
    async fn quiet(hint: &Notify) {
        while tokio::time::timeout(Duration::from_millis(50), hint.notified())
            .await
            .is_ok()
        {}
    }

    /// A submission that finds the worker's offer open is stored leased to it (token 1,
    /// its owner, expiry on the database clock) and handed to it with its log, which is
    /// exactly what the store holds; it wakes no claimer, and no other worker can claim
    /// it. The first job that finds no room closes the offer, is stored claimable and
    /// wakes the claimers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_handed_off_is_leased_in_its_commit_and_reaches_its_worker_with_its_log() {
        let store = store().await;
        let handoff = store.handoff().expect("PostgreSQL hands off");
        let mut rx = handoff.subscribe().expect("first subscriber");
        let hint = store.work_hint();
        quiet(&hint).await;
        handoff.offer(offer("w", 60_000, 2));
        let (a, created) = store.submit(job("t", None), None).await.expect("submit a");
        assert!(created);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), hint.notified())
                .await
                .is_err(),
            "a job handed off wakes no claimer"
        );
        let (b, _) = store.submit(job("t", None), None).await.expect("submit b");
        for id in [a.job_id, b.job_id] {
            let handed = rx.recv().await.expect("handed off");
            assert_eq!(handed.slots, 1);
            let [(lease, load)] = <[_; 1]>::try_from(handed.leases).expect("one lease");
            assert_eq!(
                (lease.job_id, lease.token, lease.tenant.as_str()),
                (id, 1, "t")
            );
            let stored = store
                .read_events(Scope::System, id, 0, 10)
                .await
                .expect("read");
            assert_eq!(load.events, stored, "the log handed over is the stored log");
            assert_eq!(lease.expires_at_ms, stored[0].recorded_at_ms + 60_000);
            aetheris_proof::verify_chain(id, &stored).expect("chain");
        }
        // No room left: the next job is claimable, closes the offer and wakes claimers.
        let (c, _) = store.submit(job("t", None), None).await.expect("submit c");
        tokio::time::timeout(Duration::from_secs(5), hint.notified())
            .await
            .expect("a claimable job wakes claimers");
        assert_eq!(
            handoff.withdraw(),
            Withdrawn {
                room: 0,
                closed: true
            }
        );
        let claimed = store.claim("other", 60_000, 10).await.expect("claim");
        let claimed: Vec<JobId> = claimed.iter().map(|l| l.job_id).collect();
        assert_eq!(
            claimed,
            vec![c.job_id],
            "handed-off jobs are leased already"
        );
        // The worker's first append under token 1 lands; a stale token is fenced.
        assert!(store.append(first_append(a.job_id, 0)).await.is_err());
        store
            .append(first_append(a.job_id, 1))
            .await
            .expect("the lessee appends");
        assert!(rx.try_recv().is_err(), "nothing else handed off");
    }

    /// A worker that dies holding a handed-off job loses it like any lease: once it
    /// expires another worker claims it (token 2), and the dead one's token is fenced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_off_job_whose_worker_died_is_claimed_when_its_lease_expires() {
        let store = store().await;
        let handoff = store.handoff().expect("PostgreSQL hands off");
        let rx = handoff.subscribe().expect("subscriber");
        handoff.offer(offer("dead", 300, 1));
        let (a, _) = store.submit(job("t", None), None).await.expect("submit");
        drop(rx);
        assert!(store
            .claim("w2", 60_000, 10)
            .await
            .expect("claim")
            .is_empty());
        let mut lease = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lease = store.claim("w2", 60_000, 10).await.expect("claim");
            if !lease.is_empty() {
                break;
            }
        }
        assert_eq!(lease.len(), 1, "claimed after the hand-off lease expired");
        assert_eq!((lease[0].job_id, lease[0].token), (a.job_id, 2));
        assert!(
            store.append(first_append(a.job_id, 1)).await.is_err(),
            "fenced"
        );
        store
            .append(first_append(a.job_id, 2))
            .await
            .expect("the new holder appends");
    }

    /// A repeated submission (its key taken) stores nothing, so it takes no lease: its
    /// slot comes back to the worker without one, and the caller gets the first job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idempotent_repeat_takes_no_lease_and_its_slot_comes_back() {
        let store = store().await;
        let handoff = store.handoff().expect("PostgreSQL hands off");
        let mut rx = handoff.subscribe().expect("subscriber");
        handoff.offer(offer("w", 60_000, 5));
        let (first, created) = store
            .submit(job("t", Some("k")), None)
            .await
            .expect("submit");
        assert!(created);
        let handed = rx.recv().await.expect("first");
        assert_eq!((handed.slots, handed.leases.len()), (1, 1));
        let (again, created) = store
            .submit(job("t", Some("k")), None)
            .await
            .expect("repeat");
        assert!(!created);
        assert_eq!(again.job_id, first.job_id);
        let handed = rx.recv().await.expect("the repeat's slot");
        assert_eq!((handed.slots, handed.leases.len()), (1, 0));
        assert_eq!(
            handoff.withdraw(),
            Withdrawn {
                room: 3,
                closed: false
            }
        );
    }
}
