//! Leases on PostgreSQL: claims (fair across tenants, within running caps, with due
//! timers swept in first), heartbeats and release.
//!
//! Invariants kept here: a claim never waits (`FOR UPDATE SKIP LOCKED`) and bumps each
//! granted job's fencing token (G3); claims with running caps count and grant under one
//! cluster-wide advisory lock, so no two claims count at once; every statement that locks
//! several job rows locks them in `job_id` order; all times are the database clock.

use super::clock;
use super::known::KnownJob;
use super::rows::{col, event_row, lease_row, to_i64, to_u64};
use super::PgStore;
use crate::{JobLoad, Lease, Leases, Result, RunningCaps};
use aetheris_runtime::{JobId, RecordedEvent};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

/// Marks parked jobs whose timer is due as claimable (uses the `jobs_due` index).
const SWEEP_DUE_SQL: &str = concat!(
    "UPDATE jobs SET wake_due = true WHERE status = 'waiting' AND wake_at IS NOT NULL ",
    "AND NOT wake_due AND wake_at <= ",
    now_ms!()
);

/// Claim: walk the tenants that have runnable jobs (a loose index scan of
/// `jobs_claimable`), take each tenant's oldest claimable jobs, rank them round robin
/// (rank within tenant, then tenant — starting after `CURSOR`, the tenant this store's
/// previous claim served last, so claims take turns), lock the best $10 with SKIP
/// LOCKED (re-checking claimability on the locked row version) and grant them. `{pool}`
/// is a literal so the planner sees the small row counts even with a generic plan; it
/// comes from the claim's size class (`claim_sql`), and the exact number of leases is $10,
/// so a worker whose free slots vary prepares a handful of claim statements per
/// connection, not one per slot count (each a parse and a plan, 4-5 ms under load).
///
/// Per-tenant caps on running jobs (`RunningCaps`): each tenant offers at most
/// `cap - running` candidates, where `running` counts its claimable jobs with a live lease
/// (`jobs_leased`; not computed at all when no cap is set). $3/$4 are the capped tenants
/// and their caps, $5 the default cap (NULL = none), $6 the cursor, $7/$8 the tenants
/// limited in this claim only (`RunningCaps::this_claim`) and their limits, $9 the limit of
/// this claim for the other tenants (NULL = none). With caps, run only
/// inside a transaction that holds `CLAIM_LOCK_SQL`, so no two claims count at once (see
/// `claim_within`).
const CLAIM_SQL_TEMPLATE: &str = "\
WITH RECURSIVE clock AS (SELECT NOW_MS AS now_ms),
tenants AS (
    (SELECT tenant FROM jobs WHERE claimable ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant FROM jobs j
            WHERE j.claimable AND j.tenant > t.tenant
            ORDER BY j.tenant LIMIT 1)
    FROM tenants t WHERE t.tenant IS NOT NULL
),
running AS (
    SELECT j.tenant, count(*) AS n FROM jobs j, clock
    WHERE j.lease_owner IS NOT NULL AND j.claimable AND j.lease_expires_at > clock.now_ms
      AND ($5::bigint IS NOT NULL OR cardinality($3::text[]) > 0)
    GROUP BY j.tenant
),
budget AS (
    SELECT t.tenant,
           LEAST(COALESCE(caps.cap, $5::bigint) - COALESCE(r.n, 0),
                 COALESCE(here.n, $9::bigint)) AS budget
    FROM tenants t
    LEFT JOIN unnest($3::text[], $4::bigint[]) AS caps(tenant, cap) ON caps.tenant = t.tenant
    LEFT JOIN unnest($7::text[], $8::bigint[]) AS here(tenant, n) ON here.tenant = t.tenant
    LEFT JOIN running r ON r.tenant = t.tenant
    WHERE t.tenant IS NOT NULL
),
cand AS (
    SELECT c.job_id, c.tenant, c.rn FROM (
        SELECT c.job_id, c.tenant, b.budget,
               row_number() OVER (PARTITION BY c.tenant ORDER BY c.job_id) AS rn
        FROM budget b CROSS JOIN LATERAL (
            SELECT j.job_id, j.tenant FROM jobs j, clock
            WHERE j.tenant = b.tenant AND j.claimable
              AND (j.lease_owner IS NULL OR j.lease_expires_at <= clock.now_ms)
            ORDER BY j.job_id LIMIT {pool}
        ) c
        WHERE b.budget IS NULL OR b.budget > 0
    ) c
    WHERE c.budget IS NULL OR c.rn <= c.budget
    ORDER BY c.rn, (c.tenant <= CURSOR), c.tenant, c.job_id LIMIT {pool}
),
picked AS (
    SELECT j.job_id, c.rn, c.tenant FROM cand c JOIN jobs j ON j.job_id = c.job_id, clock
    WHERE j.claimable
      AND (j.lease_owner IS NULL OR j.lease_expires_at <= clock.now_ms)
    ORDER BY c.rn, (c.tenant <= CURSOR), c.tenant, j.job_id
    LIMIT $10
    FOR UPDATE OF j SKIP LOCKED
),
granted AS (
    UPDATE jobs SET token = jobs.token + 1, lease_owner = $1,
                    lease_expires_at = clock.now_ms + $2
    FROM picked, clock WHERE jobs.job_id = picked.job_id
    RETURNING jobs.job_id, jobs.tenant, jobs.token, jobs.lease_expires_at, jobs.last_seq,
              jobs.pending_commands
)
{tail}";

/// The end of a plain claim: the leases, in the order granted.
const CLAIM_TAIL: &str = "\
SELECT g.job_id, g.tenant, g.token, g.lease_expires_at
FROM granted g JOIN picked p ON p.job_id = g.job_id
ORDER BY p.rn, (p.tenant <= CURSOR), p.tenant, g.job_id";

/// The end of `claim_and_load`: each lease with its job's events, one row per event
/// (columns 4.. as in `READ_EVENTS_SQL`, NULL when not preloaded), for jobs with at most
/// `PRELOAD_MAX_EVENTS` events and no pending command; column 4 is the job's `last_seq`
/// as updated (a load whose last event is older is dropped: see `claim_and_load`).
const CLAIM_LOAD_TAIL: &str = "\
SELECT g.job_id, g.tenant, g.token, g.lease_expires_at, g.last_seq,
       e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash
FROM granted g JOIN picked p ON p.job_id = g.job_id
LEFT JOIN LATERAL (
    SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM events
    WHERE job_id = g.job_id AND g.last_seq <= {preload} AND g.pending_commands = 0
    ORDER BY seq
) e ON true
ORDER BY p.rn, (p.tenant <= CURSOR), p.tenant, g.job_id, e.seq";

/// The claim statement for at most `max` leases (given again as $10), ending in `tail`:
/// one text per size class (the next power of two), so few are prepared.
fn claim_sql(max: usize, tail: &str) -> String {
    let class = max.clamp(1, CLAIM_POOL_CAP).next_power_of_two();
    let pool = (class * 2).min(CLAIM_POOL_CAP);
    CLAIM_SQL_TEMPLATE
        .replace("{tail}", tail)
        .replace("{preload}", &PRELOAD_MAX_EVENTS.to_string())
        .replace("CURSOR", "$6")
        .replace("NOW_MS", now_ms!())
        .replace("{pool}", &pool.to_string())
}

/// Jobs whose log is at most this long come with their events from `claim_and_load`
/// (a new job has one event; a longer log is read by the worker, with its snapshot).
const PRELOAD_MAX_EVENTS: u64 = 32;

/// Serializes capped claims across all workers (held to the end of the claim's
/// transaction): a count of running jobs is only true until the next claim commits.
const CLAIM_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(7301431263709966403)";

/// Heartbeat: renew every held lease whose token and owner still match, in one statement;
/// rows are locked in id order, results come back in the order given. A job finished
/// under the same token comes back too, with expiry 0: its finishing append cleared the
/// lease (append_write.rs), and a heartbeat that raced that append must not report the
/// lease lost. Under READ COMMITTED a row locked after such an append committed is
/// re-checked on its new version, so `live` is as of the lock.
const HEARTBEAT_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
h AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS h(job_id, token, ord)),
l AS (
    SELECT j.job_id, j.tenant, j.token, h.ord, j.lease_owner IS NOT NULL AS live
    FROM jobs j JOIN h ON j.job_id = h.job_id AND j.token = h.token
    WHERE j.lease_owner = $3 OR (j.lease_owner IS NULL AND j.status IN ",
    finished_statuses!(),
    ")
    ORDER BY j.job_id FOR UPDATE OF j
),
renewed AS (
    UPDATE jobs SET lease_expires_at = clock.now_ms + $4 FROM l, clock
    WHERE jobs.job_id = l.job_id AND l.live
    RETURNING jobs.job_id, jobs.lease_expires_at
)
SELECT l.job_id, l.tenant, l.token, coalesce(r.lease_expires_at, 0)
FROM l LEFT JOIN renewed r ON r.job_id = l.job_id ORDER BY l.ord"
);

/// Release: give back the leases still held under their tokens. A wake-up goes out
/// (NOTIFY, and the local hint) only if a released job is claimable: a finished or parked
/// job's release makes nothing claimable, and counts for no tenant's running cap (which
/// counts claimable jobs only), so waking claimers for it would only cost empty claims.
/// Returns whether a released job is claimable.
const RELEASE_SQL: &str = "\
WITH h AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS h(job_id, token)),
l AS (
    SELECT j.job_id FROM jobs j JOIN h ON j.job_id = h.job_id AND j.token = h.token
    WHERE j.lease_owner = $3 ORDER BY j.job_id FOR UPDATE OF j
),
released AS (
    UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL FROM l
    WHERE jobs.job_id = l.job_id RETURNING jobs.claimable
),
woken AS (SELECT coalesce(bool_or(claimable), false) AS any FROM released)
SELECT woken.any, CASE WHEN woken.any THEN pg_notify('aetheris_work', '') END FROM woken";

/// Most jobs one claim considers per tenant, beyond `max` (room to skip rows that a
/// concurrent claimer holds locked).
const CLAIM_POOL_CAP: usize = 1024;

impl PgStore {
    /// The rows of one claim statement: `CLAIM_SQL_TEMPLATE` ending in `tail`.
    async fn claim_rows(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
        tail: &str,
    ) -> Result<Vec<Row>> {
        let sql = claim_sql(max, tail);
        let mut client = self.conn().await?;
        let (sweep, st) = tokio::try_join!(
            client.prepare_cached(SWEEP_DUE_SQL),
            client.prepare_cached(&sql)
        )
        .map_err(|e| self.err(e))?;
        let cursor = self
            .claim_cursor
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let names: Vec<&str> = caps.tenants.keys().map(String::as_str).collect();
        let limits: Vec<i64> = caps.tenants.values().map(|c| to_i64(*c)).collect();
        let default = caps.default.map(to_i64);
        let here_names: Vec<&str> = caps.this_claim.keys().map(String::as_str).collect();
        let here_limits: Vec<i64> = caps.this_claim.values().map(|c| to_i64(*c)).collect();
        let here_default = caps.this_claim_default.map(to_i64);
        let leases = to_i64(max.min(CLAIM_POOL_CAP) as u64);
        let params: [&(dyn ToSql + Sync); 10] = [
            &worker,
            &to_i64(ttl_ms),
            &names,
            &limits,
            &default,
            &cursor,
            &here_names,
            &here_limits,
            &here_default,
            &leases,
        ];
        let rows = if caps.is_unlimited() {
            // Due timers become claimable (see migrations/0003_timers.sql) before the
            // claim looks: both statements go out at once (requests leave in poll order
            // and the server runs them in turn, the sweep committing first), one round
            // trip instead of two. A failed sweep does not undo the claim's leases.
            let (swept, rows) =
                tokio::join!(client.execute(&sweep, &[]), client.query(&st, &params));
            if let Err(e) = swept {
                tracing::warn!(error = %e, "timer sweep failed; due timers wait for the next claim");
            }
            rows.map_err(|e| self.err(e))?
        } else {
            client.execute(&sweep, &[]).await.map_err(|e| self.err(e))?;
            // Count and claim under one cluster-wide lock, in a transaction: the claim
            // statement's snapshot is taken after the lock, so it sees every earlier
            // claim's leases, and no later claim counts before this one commits.
            let tx = client.transaction().await.map_err(|e| self.err(e))?;
            tx.execute(CLAIM_LOCK_SQL, &[])
                .await
                .map_err(|e| self.err(e))?;
            let rows = tx.query(&st, &params).await.map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            rows
        };
        Ok(rows)
    }

    /// Book-keeping after a claim: the next claim's round robin starts after the tenant
    /// served last; the batcher learns the tenants of the leased jobs.
    fn claimed(&self, leases: &[Lease]) {
        if let (Some(last), Ok(mut c)) = (leases.last(), self.claim_cursor.lock()) {
            c.clone_from(&last.tenant);
        }
        if let Ok(mut t) = self.job_tenants.lock() {
            t.leased(leases);
        }
    }
}

/// A claim's preload, if it is the job's whole log `1..=last_seq` (`last_seq` as the
/// lease's row was updated). The events come from the claim statement's snapshot, the
/// row from its locked version: an append that committed between the two leaves the
/// events short of `last_seq`, and the job actor must then read the log itself.
fn whole_log(last_seq: u64, events: Vec<RecordedEvent>) -> Option<JobLoad> {
    let whole =
        events.len() as u64 == last_seq && events.iter().zip(1u64..).all(|(e, seq)| e.seq == seq);
    (whole && last_seq > 0).then(|| JobLoad {
        snapshot: None,
        events,
        commands: Vec::new(),
    })
}

#[async_trait]
impl Leases for PgStore {
    async fn claim_within(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let rows = self
            .claim_rows(worker, ttl_ms, max, caps, CLAIM_TAIL)
            .await?;
        let leases: Vec<Lease> = rows.iter().map(lease_row).collect::<Result<_>>()?;
        self.claimed(&leases);
        Ok(leases)
    }

    /// The claim statement also returns the events of each leased job with a short log
    /// and no pending command (`CLAIM_LOAD_TAIL`), read in the same statement: one round
    /// trip for the lease and the load. The events are as of the statement's snapshot; if
    /// an earlier lease holder's append committed just before the row was locked, the
    /// job's updated `last_seq` is past them and the load is dropped (the worker reads
    /// it), so a preload is never stale.
    async fn claim_and_load(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<(Lease, Option<crate::JobLoad>)>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let rows = self
            .claim_rows(worker, ttl_ms, max, caps, CLAIM_LOAD_TAIL)
            .await?;
        let mut out: Vec<(Lease, u64, Vec<RecordedEvent>)> = Vec::new();
        for r in &rows {
            let lease = lease_row(r)?;
            if out.last().map(|(l, _, _)| l.job_id) != Some(lease.job_id) {
                let last_seq = to_u64(col(r, 4)?, "last_seq")?;
                out.push((lease.clone(), last_seq, Vec::new()));
            }
            if let (Some(seq), Some((_, _, events))) = (col::<Option<i64>>(r, 5)?, out.last_mut()) {
                events.push(event_row(lease.job_id, r, 5, seq)?);
            }
        }
        let leases: Vec<Lease> = out.iter().map(|(l, _, _)| l.clone()).collect();
        self.claimed(&leases);
        // A new job's first append needs no lock round trip: its head is its one event.
        self.appender
            .known
            .put(out.iter().filter_map(|(l, last_seq, events)| {
                let fresh = events
                    .first()
                    .filter(|_| *last_seq == 1 && events.len() == 1)?;
                Some((l.job_id.0, KnownJob::fresh(&l.tenant, l.token, fresh)?))
            }));
        Ok(out
            .into_iter()
            .map(|(lease, last_seq, events)| (lease, whole_log(last_seq, events)))
            .collect())
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ttl_ms: u64,
        held: &[(JobId, u64)],
    ) -> Result<Vec<Lease>> {
        if held.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<Uuid> = held.iter().map(|(j, _)| j.0).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, t)| to_i64(*t)).collect();
        let c = self.conn().await?;
        let rows = c
            .cached_query(HEARTBEAT_SQL, &[&ids, &tokens, &worker, &to_i64(ttl_ms)])
            .await?;
        rows.iter().map(lease_row).collect()
    }

    async fn release(&self, worker: &str, held: &[(JobId, u64)]) -> Result<()> {
        self.appender.known.forget(held.iter().map(|(j, _)| *j));
        if let Ok(mut t) = self.job_tenants.lock() {
            t.released(held.iter().map(|(j, _)| *j));
        }
        let mut claimable = true;
        if !held.is_empty() {
            let ids: Vec<Uuid> = held.iter().map(|(j, _)| j.0).collect();
            let tokens: Vec<i64> = held.iter().map(|(_, t)| to_i64(*t)).collect();
            let c = self.conn().await?;
            let row = c
                .cached_query_one(RELEASE_SQL, &[&ids, &tokens, &worker])
                .await?;
            claimable = col(&row, 0)?;
        }
        if claimable {
            super::fire(&self.hint);
        }
        Ok(())
    }

    async fn now_ms(&self) -> Result<i64> {
        clock::now_ms(&self.conn().await?).await
    }

    fn work_hint(&self) -> Arc<Notify> {
        self.hint.clone()
    }

    fn handoff(&self) -> Option<Arc<crate::handoff::Handoff>> {
        Some(self.handoff.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::test_jobs::queue_jobs;
    use crate::JobLog;
    use aetheris_runtime::EventBody;

    /// The appends that finish a worker's jobs race its heartbeats: every heartbeat must
    /// report every job as held (renewed) or finished (its finishing append cleared the
    /// lease; expiry 0), never lost, whichever commits first. A job reported lost here
    /// would make the worker revoke it and count a false lease loss.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_racing_finishing_appends_lose_no_lease() {
        use aetheris_runtime::{invocation_key, EffectClass};
        const JOBS: usize = 40;
        let url = crate::testing::pg_cluster::fresh_database_url().await;
        let store = PgStore::connect(&url, 8).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "race", JOBS).await;
        let leases = store.claim("w", 60_000, 100).await.expect("claim");
        assert_eq!(leases.len(), JOBS);
        let held: Vec<(JobId, u64)> = leases.iter().map(|l| (l.job_id, l.token)).collect();
        let finishes: Vec<_> = leases
            .iter()
            .map(|l| {
                let (store, job, token) = (store.clone(), l.job_id, l.token);
                tokio::spawn(async move {
                    let events = vec![
                        EventBody::StepStarted {
                            step: "a".into(),
                            attempt: 1,
                            invocation_key: invocation_key("race", job, "a", 0),
                            tool: "echo".into(),
                            effect: EffectClass::Pure,
                            fencing_token: token,
                        },
                        EventBody::StepSucceeded {
                            step: "a".into(),
                            attempt: 1,
                            output: serde_json::json!(1),
                        },
                        EventBody::JobSucceeded {
                            output: serde_json::json!(1),
                        },
                    ];
                    let a = crate::Append {
                        job_id: job,
                        token,
                        expected_last_seq: 1,
                        events,
                    };
                    store.append(a).await
                })
            })
            .collect();
        let mut beats = 0;
        loop {
            let done = finishes.iter().all(|f| f.is_finished());
            let kept = store
                .heartbeat("w", 60_000, &held)
                .await
                .expect("heartbeat");
            beats += 1;
            let got: Vec<(JobId, u64)> = kept.iter().map(|l| (l.job_id, l.token)).collect();
            assert_eq!(
                got, held,
                "heartbeat {beats} reported a lease lost: {kept:?}"
            );
            if done {
                assert!(
                    kept.iter().all(|l| l.expires_at_ms == 0),
                    "every job finished, so no lease is live: {kept:?}"
                );
                break;
            }
        }
        for f in finishes {
            f.await.expect("task").expect("finishing append");
        }
        assert!(beats >= 2, "the heartbeats ran while the appends did");
    }

    /// A connection keeps the generic claim plan it made first. Made while a tenant's
    /// jobs were all queued, it must still find that tenant's runnable jobs without
    /// reading its settled ones once most have finished (migrations/0007): no index
    /// led by `tenant` covers both, so the walk can only take `jobs_claimable`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_plan_made_on_a_queued_table_skips_settled_jobs_later() {
        let url = crate::testing::pg_cluster::fresh_database_url().await;
        let store = PgStore::connect(&url, 1).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "flood", 400).await;
        let client = store.conn().await.expect("client");
        let sql = claim_sql(4, CLAIM_LOAD_TAIL);
        let types =
            "text, bigint, text[], bigint[], bigint, text, text[], bigint[], bigint, bigint";
        let args = "('w', 60000, '{}', '{}', NULL, '', '{}', '{}', NULL, 4)";
        client
            .batch_execute(&format!("PREPARE probe ({types}) AS {sql}"))
            .await
            .expect("prepare");
        // The plan is made now (the pooled session forces generic plans), on a table whose
        // jobs are all queued.
        client
            .batch_execute(&format!("EXECUTE probe {args}"))
            .await
            .expect("first claim");
        client
            .batch_execute(
                "UPDATE jobs SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL \
                 WHERE job_id IN (SELECT job_id FROM jobs ORDER BY job_id LIMIT 390)",
            )
            .await
            .expect("settle");
        let rows = client
            .simple_query(&format!(
                "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE probe {args}"
            ))
            .await
            .expect("explain");
        let text: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        let text = text.join("\n");
        let most_removed = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Rows Removed by Filter: "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        assert!(most_removed < 10, "the claim read settled jobs:\n{text}");
        assert!(text.contains("jobs_claimable"), "{text}");
        // And no index led by `tenant` may cover claimable and settled jobs alike.
        let defs = client
            .query(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'jobs' \
                 AND indexdef LIKE '%(tenant%'",
                &[],
            )
            .await
            .expect("indexes");
        for d in defs {
            let def: String = d.get(0);
            assert!(def.contains(" WHERE "), "a full index led by tenant: {def}");
        }
    }

    /// A preload older than the row the claim locked (an append committed in between)
    /// is not used, nor one with a gap; the whole log is.
    #[test]
    fn a_preload_is_used_only_when_it_is_the_whole_log() {
        let job = JobId::new();
        let event = |seq: u64| RecordedEvent {
            job_id: job,
            seq,
            recorded_at_ms: 1,
            body: EventBody::JobSucceeded {
                output: serde_json::Value::Null,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        assert!(whole_log(2, vec![event(1), event(2)]).is_some());
        assert!(whole_log(3, vec![event(1), event(2)]).is_none(), "stale");
        assert!(whole_log(2, vec![event(1), event(3)]).is_none(), "gap");
        assert!(whole_log(0, vec![]).is_none());
    }

    /// Every claim size shares one of a few statement texts (a prepared statement per
    /// text and connection), and the text never fixes the number of leases.
    #[test]
    fn claim_sizes_share_a_few_statements() {
        let texts: std::collections::HashSet<String> = (0..=2 * CLAIM_POOL_CAP)
            .map(|max| claim_sql(max, CLAIM_LOAD_TAIL))
            .collect();
        assert_eq!(texts.len(), 10, "candidate pools of 2, 4, … 1024");
        assert!(texts.iter().all(|t| t.contains("LIMIT $10")));
    }

    /// A claim's cost must not grow with a tenant's backlog: on a fresh (unanalyzed)
    /// database, with a backlog far larger than a claim takes, the claim's plan (as a
    /// pooled session makes it: `SESSION_SETUP`) walks `jobs_claimable` in order and stops,
    /// instead of reading the whole backlog with a bitmap scan and sorting it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_walk_the_queue_in_order() {
        let url = crate::testing::pg_cluster::fresh_database_url().await;
        let store = PgStore::connect(&url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "backlog", 600).await;
        let client = store.conn().await.expect("client");
        let names: Vec<&str> = vec![];
        let limits: Vec<i64> = vec![];
        let none: Option<i64> = None;
        let params: [&(dyn ToSql + Sync); 10] = [
            &"w", &60_000i64, &names, &limits, &none, &"", &names, &limits, &none, &4i64,
        ];
        let explain = format!(
            "EXPLAIN (ANALYZE, COSTS OFF) {}",
            claim_sql(4, CLAIM_LOAD_TAIL)
        );
        let rows = client.query(&explain, &params).await.expect("explain");
        let text: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let text = text.join("\n");
        assert!(
            !text.contains("Bitmap"),
            "the claim reads the backlog at large:\n{text}"
        );
        assert!(
            text.contains("Index Scan using jobs_claimable"),
            "the claim walks the queue index:\n{text}"
        );
    }
}
