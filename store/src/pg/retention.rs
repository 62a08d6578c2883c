//! Retention on PostgreSQL: finding finished jobs past their tenant's retention and deleting
//! them in bounded batches (`Retention`).
//!
//! Invariants kept here:
//! - Only finished jobs (`succeeded`, `failed`, `cancelled`) whose terminal event is older
//!   than their tenant's retention at the database clock are deleted; the status and the
//!   age are checked again on the locked row inside the deleting transaction, so a job
//!   that is running or waiting is never touched.
//! - One transaction per batch: each job's events, ledger rows, snapshots, commands and
//!   job row go together or not at all (a crash mid-batch rolls every one of them back).
//!   Its transparency leaf stays (`transparency_leaves` has no tie to `jobs`), so the
//!   tenant's log keeps its size and every old checkpoint stays consistent.
//! - Any number of processes may collect at once: the batch locks its jobs with
//!   `FOR UPDATE SKIP LOCKED` in `job_id` order, so two collectors never wait for each
//!   other and never delete a job twice; a job another one deleted first is skipped.
//! - Finding due jobs reads no table scan: a loose index scan of `jobs_settled` finds the
//!   tenants with settled jobs, and each tenant's due jobs are read from the same index in
//!   id order, below the UUIDv7 id stamped with the retention's cutoff (a job created after
//!   the cutoff cannot have finished before it), so no index on a column every append
//!   changes is needed (it would cost every append its HOT update).

use super::rows::{col, to_i64, to_u64};
use super::PgStore;
use crate::{DueJob, Result, Retention, RetentionPolicy, StoreError};
use aetheris_runtime::JobId;
use async_trait::async_trait;
use deadpool_postgres::Pool;
use uuid::Uuid;

/// Due jobs, most overdue first. $1/$2: tenants with their own retention (NULL: forever),
/// $3 the retention of the others (NULL: forever), $4 the batch size. The id bound adds a
/// second (or the retention, if shorter) to the cutoff, for ids stamped with a slightly
/// fast estimate of the database clock.
const DUE_SQL: &str = concat!(
    "WITH RECURSIVE clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
tenants AS (
    (SELECT tenant FROM jobs WHERE NOT claimable ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant FROM jobs j
            WHERE NOT j.claimable AND j.tenant > t.tenant
            ORDER BY j.tenant LIMIT 1)
    FROM tenants t WHERE t.tenant IS NOT NULL
),
policy AS (
    SELECT t.tenant, CASE WHEN x.tenant IS NULL THEN $3::bigint ELSE x.keep_ms END AS keep_ms
    FROM tenants t
    LEFT JOIN unnest($1::text[], $2::bigint[]) AS x(tenant, keep_ms) ON x.tenant = t.tenant
    WHERE t.tenant IS NOT NULL
),
cutoff AS (
    SELECT p.tenant, clock.now_ms - p.keep_ms AS finished_before,
           encode(overlay('\\x00000000000000000000000000000000'::bytea
                  PLACING substring(int8send(greatest(
                      clock.now_ms - p.keep_ms + least(p.keep_ms, 1000), 0)) FROM 3 FOR 6)
                  FROM 1 FOR 6), 'hex')::uuid AS id_below
    FROM policy p CROSS JOIN clock
    WHERE p.keep_ms IS NOT NULL
)
SELECT d.job_id, c.tenant, d.updated_at, c.finished_before - d.updated_at AS overdue
FROM cutoff c CROSS JOIN LATERAL (
    SELECT j.job_id, j.updated_at FROM jobs j
    WHERE j.tenant = c.tenant AND NOT j.claimable AND j.job_id < c.id_below
      AND j.status IN ",
    finished_statuses!(),
    "
      AND j.updated_at < c.finished_before
    ORDER BY j.job_id LIMIT $4
) d
ORDER BY overdue DESC, d.job_id
LIMIT $4"
);

/// The jobs of $1 still finished and due (same parameters as `DUE_SQL` otherwise), locked
/// in id order; one another process holds is skipped, not waited for.
const LOCK_DUE_SQL: &str = concat!(
    "SELECT j.job_id FROM jobs j
LEFT JOIN unnest($2::text[], $3::bigint[]) AS x(tenant, keep_ms) ON x.tenant = j.tenant
WHERE j.job_id = ANY($1::uuid[])
  AND j.status IN ",
    finished_statuses!(),
    "
  AND j.updated_at < ",
    now_ms!(),
    " - (CASE WHEN x.tenant IS NULL THEN $4::bigint ELSE x.keep_ms END)
ORDER BY j.job_id
FOR UPDATE OF j SKIP LOCKED"
);

/// What a batch deletes, in this order (commands before their job: a foreign key).
const DELETE_SQL: [&str; 5] = [
    "DELETE FROM events WHERE job_id = ANY($1::uuid[])",
    "DELETE FROM ledger WHERE job_id = ANY($1::uuid[])",
    "DELETE FROM snapshots WHERE job_id = ANY($1::uuid[])",
    "DELETE FROM commands WHERE job_id = ANY($1::uuid[])",
    "DELETE FROM jobs WHERE job_id = ANY($1::uuid[])",
];

/// Where a test makes the deleting transaction fail: after the events and ledger rows of
/// the batch are deleted, before its snapshots, commands and job rows are.
const CRASH_AFTER_STATEMENTS: usize = 2;

/// The policy as the statements' parameters: explicit tenants, their retention, and the
/// default.
fn policy_params(policy: &RetentionPolicy) -> (Vec<String>, Vec<Option<i64>>, Option<i64>) {
    let tenants = policy.tenants.keys().cloned().collect();
    let keep = policy.tenants.values().map(|k| k.map(to_i64)).collect();
    (tenants, keep, policy.default_ms.map(to_i64))
}

async fn due(pool: &Pool, policy: &RetentionPolicy, limit: usize) -> Result<Vec<DueJob>> {
    if limit == 0 || policy.keeps_everything() {
        return Ok(Vec::new());
    }
    let c = super::conn::Conn::get(pool).await?;
    let (tenants, keep, default) = policy_params(policy);
    let rows = c
        .cached_query(DUE_SQL, &[&tenants, &keep, &default, &to_i64(limit as u64)])
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DueJob {
                job_id: JobId(col::<Uuid>(r, 0)?),
                tenant: col(r, 1)?,
                finished_at_ms: col(r, 2)?,
                overdue_ms: to_u64(col(r, 3)?, "overdue")?,
            })
        })
        .collect()
}

/// One batch in one transaction (module docs). `crash` makes it fail midway (tests).
async fn delete(
    pool: &Pool,
    policy: &RetentionPolicy,
    ids: &[JobId],
    crash: bool,
) -> Result<Vec<JobId>> {
    if ids.is_empty() || policy.keeps_everything() {
        return Ok(Vec::new());
    }
    let pg_err = |e: tokio_postgres::Error| super::conn::error(e, Some(pool));
    let mut c = super::conn::Conn::get(pool).await?;
    let tx = c.transaction().await.map_err(pg_err)?;
    let (tenants, keep, default) = policy_params(policy);
    let asked: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let locked: Vec<Uuid> = tx
        .query(LOCK_DUE_SQL, &[&asked, &tenants, &keep, &default])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| col::<Uuid>(r, 0))
        .collect::<Result<_>>()?;
    if locked.is_empty() {
        let _ = tx.rollback().await;
        return Ok(Vec::new());
    }
    for (i, sql) in DELETE_SQL.iter().enumerate() {
        if crash && i == CRASH_AFTER_STATEMENTS {
            // Dropping the transaction unfinished is a crash as far as the database sees.
            return Err(StoreError::Backend(
                "failpoint: retention batch stopped before its commit".into(),
            ));
        }
        tx.execute(*sql, &[&locked]).await.map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(locked.into_iter().map(JobId).collect())
}

#[async_trait]
impl Retention for PgStore {
    async fn due_jobs(&self, policy: &RetentionPolicy, limit: usize) -> Result<Vec<DueJob>> {
        due(&self.pool, policy, limit).await
    }

    async fn delete_jobs(&self, policy: &RetentionPolicy, ids: &[JobId]) -> Result<Vec<JobId>> {
        delete(&self.pool, policy, ids, false).await
    }
}

impl PgStore {
    /// `delete_jobs` that fails midway through its transaction, after deleting the
    /// batch's events and ledger rows and before its commit: the crash the conformance
    /// suite checks leaves every job whole. For tests only.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn delete_jobs_crashing_midway(
        &self,
        policy: &RetentionPolicy,
        ids: &[JobId],
    ) -> Result<Vec<JobId>> {
        delete(&self.pool, policy, ids, true).await
    }
}
