//! The job log on PostgreSQL: job rows, events, snapshots and the ledger (reads), with
//! submissions and appends delegated to their batchers (`submit`, `append`).
//!
//! Invariants kept here: scoped reads filter by tenant in the same statement that finds the
//! job, so another tenant's job reads as `NotFound` (G6); `load_job` is one statement, so
//! the events it returns continue the snapshot it returns; a snapshot write is fenced by
//! the job's token under a row lock (G3), never lies beyond the log, and prunes the job's
//! older snapshots.

use super::conn::Conn;
use super::rows::{
    col, event_row, parse_effect, parse_ledger_status, parse_status, scope_tenant, summary_at,
    to_i64, to_u64,
};
use super::PgStore;
use crate::{
    Append, AuditEntry, JobLoad, JobLog, JobSummary, LedgerEntry, ListFilter, NewJob, Result,
    Scope, StatusCount, StoreError,
};
use aetheris_runtime::{JobId, RecordedEvent};
use async_trait::async_trait;
use uuid::Uuid;

const GET_JOB_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.job_id = $1 AND ($2::text IS NULL OR j.tenant = $2)"
);

/// A tenant's jobs, newest first: the claimable and the settled ones from their own
/// partial indexes (`jobs_claimable`, `jobs_settled`), merged (see
/// migrations/0007_claim_index.sql for why no index covers both).
const LIST_TENANT_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM ((SELECT * FROM jobs WHERE tenant = $1 AND job_id < $2 AND claimable",
    " AND ($3::text IS NULL OR status = $3) ORDER BY job_id DESC LIMIT $4)",
    " UNION ALL (SELECT * FROM jobs WHERE tenant = $1 AND job_id < $2 AND NOT claimable",
    " AND ($3::text IS NULL OR status = $3) ORDER BY job_id DESC LIMIT $4)) j",
    " ORDER BY j.job_id DESC LIMIT $4"
);

const LIST_SYSTEM_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.job_id < $1 AND ($2::text IS NULL OR j.status = $2)",
    " ORDER BY j.job_id DESC LIMIT $3"
);

const COUNT_SQL: &str = "SELECT tenant, status, count(*) FROM jobs \
     GROUP BY tenant, status ORDER BY tenant, status COLLATE \"C\"";

const READ_EVENTS_SQL: &str = "\
SELECT e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash
FROM jobs j
LEFT JOIN LATERAL (
    SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM events
    WHERE job_id = j.job_id AND seq > $2 ORDER BY seq LIMIT $3
) e ON true
WHERE j.job_id = $1 AND ($4::text IS NULL OR j.tenant = $4)
ORDER BY e.seq";

/// `load_job` in one statement (so one snapshot of the database: the events continue the
/// snapshot returned, even if a newer one is stored meanwhile). Rows are tagged by `part`:
/// `s` the newest snapshot (seq, blob in `b1`), `e` an event (the columns of
/// `READ_EVENTS_SQL`), `c` a pending command (id, created_at, body in `txt`).
const LOAD_JOB_SQL: &str = "\
WITH s AS (SELECT seq, blob FROM snapshots WHERE job_id = $1 ORDER BY seq DESC LIMIT 1)
SELECT 's'::text AS part, s.seq AS num, NULL::bigint AS at, NULL::text AS kind,
       NULL::text AS txt, s.blob AS b1, NULL::bytea AS b2
FROM s
UNION ALL
(SELECT 'e', e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash FROM events e
 WHERE e.job_id = $1 AND e.seq > COALESCE((SELECT seq FROM s), 0) ORDER BY e.seq LIMIT $2)
UNION ALL
(SELECT 'c', c.id, c.created_at, NULL, c.body, NULL, NULL FROM commands c
 WHERE c.job_id = $1 AND c.applied_at IS NULL ORDER BY c.id)";

/// Writes the snapshot and prunes the job's older ones (only the newest is ever read), in
/// one statement; nothing is written or pruned when the token or seq is refused.
const SNAPSHOT_SQL: &str = "\
WITH j AS (
    SELECT token, last_seq FROM jobs WHERE job_id = $1 FOR SHARE
), ins AS (
    INSERT INTO snapshots (job_id, seq, blob)
    SELECT $1, $3, $4 FROM j WHERE j.token = $2 AND $3 <= j.last_seq
    ON CONFLICT (job_id, seq) DO UPDATE SET blob = EXCLUDED.blob
    RETURNING 1
), pruned AS (
    DELETE FROM snapshots WHERE job_id = $1 AND seq < $3 AND EXISTS (SELECT 1 FROM ins)
)
SELECT j.token, j.last_seq, (SELECT count(*) FROM ins) FROM j";

const LATEST_SNAPSHOT_SQL: &str = "SELECT seq, blob FROM snapshots \
     WHERE job_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1";

const LEDGER_SQL: &str = "\
SELECT l.step, l.invocation_key, l.attempt, l.effect, l.status, l.updated_at
FROM jobs j
LEFT JOIN ledger l ON l.job_id = j.job_id
WHERE j.job_id = $1 AND ($2::text IS NULL OR j.tenant = $2)
ORDER BY l.step";

const SIZE_SQL: &str = "SELECT (pg_total_relation_size('jobs') + pg_total_relation_size('events') \
     + pg_total_relation_size('snapshots') + pg_total_relation_size('ledger'))::bigint";

#[async_trait]
impl JobLog for PgStore {
    /// Through the group-submit batcher (`submit::group_submit_worker`): concurrent
    /// submissions share one round trip and one commit.
    async fn submit(&self, job: NewJob, audit: Option<&AuditEntry>) -> Result<(JobSummary, bool)> {
        super::submit::submit_one(&self.submits, job, audit).await
    }

    async fn get_job(&self, scope: Scope<'_>, id: JobId) -> Result<Option<JobSummary>> {
        let c = self.conn().await?;
        let row = c
            .cached_query_opt(GET_JOB_SQL, &[&id.0, &scope_tenant(scope)])
            .await?;
        row.map(|r| summary_at(&r, 0)).transpose()
    }

    async fn list_jobs(&self, scope: Scope<'_>, filter: ListFilter) -> Result<Vec<JobSummary>> {
        let c = self.conn().await?;
        let before = filter.before.map(|b| b.0).unwrap_or(Uuid::max());
        let status = filter.status.map(|s| s.as_str());
        let limit = to_i64(filter.limit.max(1) as u64);
        let rows = match scope {
            Scope::Tenant(t) => {
                c.cached_query(LIST_TENANT_SQL, &[&t, &before, &status, &limit])
                    .await?
            }
            Scope::System => {
                c.cached_query(LIST_SYSTEM_SQL, &[&before, &status, &limit])
                    .await?
            }
        };
        rows.iter().map(|r| summary_at(r, 0)).collect()
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>> {
        let c = self.conn().await?;
        let rows = c.cached_query(COUNT_SQL, &[]).await?;
        rows.iter()
            .map(|r| {
                Ok(StatusCount {
                    tenant: col(r, 0)?,
                    status: parse_status(col(r, 1)?)?,
                    count: to_u64(col(r, 2)?, "count")?,
                })
            })
            .collect()
    }

    async fn read_events(
        &self,
        scope: Scope<'_>,
        id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let c = self.conn().await?;
        // A limit of 0 returns no events (but still reports an unknown job).
        let limit = to_i64(limit as u64);
        let rows = c
            .cached_query(
                READ_EVENTS_SQL,
                &[&id.0, &to_i64(after_seq), &limit, &scope_tenant(scope)],
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::job_not_found(id));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(seq) = col::<Option<i64>>(r, 0)? else {
                continue; // the job exists but has no events past after_seq
            };
            out.push(event_row(id, r, 0, seq)?);
        }
        Ok(out)
    }

    async fn append_many(&self, batch: Vec<Append>) -> Result<Vec<Result<Vec<RecordedEvent>>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        self.appender.append_batch(batch).await.map_err(|f| f.error)
    }

    /// One append, through the group-commit batcher: appends of concurrent jobs share a
    /// transaction (see `append::group_commit_worker`).
    async fn append(&self, a: Append) -> Result<Vec<RecordedEvent>> {
        super::append::append_one(&self.group, a).await
    }

    async fn put_snapshot(&self, id: JobId, token: u64, seq: u64, blob: Vec<u8>) -> Result<()> {
        let c = self.conn().await?;
        let row = c
            .cached_query_opt(SNAPSHOT_SQL, &[&id.0, &to_i64(token), &to_i64(seq), &blob])
            .await?
            .ok_or(StoreError::job_not_found(id))?;
        let current = to_u64(col(&row, 0)?, "token")?;
        let last_seq = to_u64(col(&row, 1)?, "last_seq")?;
        let written: i64 = col(&row, 2)?;
        if written > 0 {
            return Ok(());
        }
        if current != token {
            return Err(StoreError::Fenced {
                job: id,
                presented: token,
                current,
            });
        }
        Err(StoreError::Rejected(format!(
            "snapshot at seq {seq} is beyond the log (seq {last_seq})"
        )))
    }

    async fn latest_snapshot(&self, id: JobId, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let c = self.conn().await?;
        let row = c
            .cached_query_opt(LATEST_SNAPSHOT_SQL, &[&id.0, &to_i64(max_seq)])
            .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((to_u64(col(&r, 0)?, "seq")?, col(&r, 1)?))),
        }
    }

    /// One statement, one round trip (`LOAD_JOB_SQL`) instead of three reads, two of them
    /// in turn: under a flood each round trip queues behind other tenants' work (W6).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<JobLoad> {
        let c = self.conn().await?;
        let rows = c
            .cached_query(LOAD_JOB_SQL, &[&id.0, &to_i64(event_limit as u64)])
            .await?;
        let mut load = JobLoad::default();
        for r in &rows {
            let part: &str = col(r, 0)?;
            let num: i64 = col(r, 1)?;
            match part {
                "s" => load.snapshot = Some((to_u64(num, "snapshot seq")?, col(r, 5)?)),
                "e" => load.events.push(event_row(id, r, 1, num)?),
                "c" => load.commands.push(super::commands::stored_command(
                    id,
                    num,
                    col(r, 4)?,
                    col(r, 2)?,
                )?),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "load_job: unknown part {other:?}"
                    )))
                }
            }
        }
        // UNION ALL keeps no order of its own.
        load.events.sort_by_key(|e| e.seq);
        load.commands.sort_by_key(|c| c.id);
        if load.snapshot.is_none() && load.events.is_empty() {
            // Every job has `job_submitted`: nothing at all means no such job.
            return Err(StoreError::job_not_found(id));
        }
        Ok(load)
    }

    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>> {
        let c = self.conn().await?;
        let rows = c
            .cached_query(LEDGER_SQL, &[&id.0, &scope_tenant(scope)])
            .await?;
        if rows.is_empty() {
            return Err(StoreError::job_not_found(id));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(step) = col::<Option<String>>(r, 0)? else {
                continue; // the job exists but has no ledger rows
            };
            let attempt: i64 = col(r, 2)?;
            out.push(LedgerEntry {
                invocation_key: col(r, 1)?,
                job_id: id,
                step,
                attempt: u32::try_from(attempt)
                    .map_err(|_| StoreError::Corrupt(format!("ledger attempt {attempt}")))?,
                effect: parse_effect(col(r, 3)?)?,
                status: parse_ledger_status(col(r, 4)?)?,
                updated_at_ms: col(r, 5)?,
            });
        }
        Ok(out)
    }

    async fn size_bytes(&self) -> Result<u64> {
        let c: Conn = self.conn().await?;
        let row = c.cached_query_one(SIZE_SQL, &[]).await?;
        to_u64(col(&row, 0)?, "size")
    }
}
