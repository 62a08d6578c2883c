//! Job commands on PostgreSQL (see `migrations/0002_commands.sql`): stored durably in the
//! same transaction that bumps the job's `pending_commands` (which makes a waiting job
//! claimable) and sends `NOTIFY aetheris_cmd, '<job id>'` so the worker holding the lease
//! hears of it at commit. Marking commands applied is fenced by the job's token (G3).
//! A refusal rolls its transaction back at once (awaited), so no job row stays locked.

use super::conn::{error, Conn};
use super::PgStore;
use crate::{AuditEntry, CommandBody, Commands, Result, Scope, StoreError, StoredCommand};
use aetheris_runtime::{JobId, JobStatus};
use async_trait::async_trait;
use deadpool_postgres::Pool;

/// The NOTIFY channel carrying the id of a job that received a command.
pub const COMMAND_CHANNEL: &str = "aetheris_cmd";

const NOW_MS: &str = "(floor(extract(epoch FROM now()) * 1000)::bigint)";

async fn put_command(
    pool: &Pool,
    scope: Scope<'_>,
    id: JobId,
    body: CommandBody,
    audit: Option<&AuditEntry>,
) -> Result<StoredCommand> {
    let json = serde_json::to_string(&body).map_err(|e| StoreError::unencodable("command", e))?;
    let pg_err = |e: tokio_postgres::Error| error(e, Some(pool));
    let mut c = Conn::get(pool).await?;
    let tx = c.transaction().await.map_err(pg_err)?;
    // A refusal rolls back at once, awaited: a transaction merely dropped would hold the
    // row lock until its ROLLBACK reaches the server, and a claim meanwhile skips the
    // (locked) job.
    let checked = async {
        let row = tx
            .query_opt(
                "SELECT tenant, status FROM jobs WHERE job_id = $1 FOR UPDATE",
                &[&id.0],
            )
            .await
            .map_err(pg_err)?
            .ok_or(StoreError::job_not_found(id))?;
        let tenant: String = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let status: String = row
            .try_get(1)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !scope.allows(&tenant) {
            return Err(StoreError::job_not_found(id));
        }
        let status = JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?;
        if status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "job {id} already finished ({})",
                status.as_str()
            )));
        }
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        let _ = tx.rollback().await;
        return Err(e);
    }
    // The audit row (if any) is written by the same statement as the command.
    let cols = super::audit::COLUMNS;
    let sql = format!(
        "WITH c AS (INSERT INTO commands (job_id, body, created_at) VALUES ($1, $2, {NOW_MS}) \
         RETURNING id, created_at), \
         j AS (UPDATE jobs SET pending_commands = pending_commands + 1 WHERE job_id = $1), \
         a AS (INSERT INTO access_audit_log ({cols}) \
               SELECT c.created_at, $4, $5, $6, $7, $8 FROM c WHERE $4::text IS NOT NULL) \
         SELECT c.id, c.created_at, pg_notify('{COMMAND_CHANNEL}', $3) FROM c"
    );
    let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
    let r = tx
        .query_one(
            &sql,
            &[&id.0, &json, &id.to_string(), &a1, &a2, &a3, &a4, &a5],
        )
        .await
        .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    let cmd_id: i64 = r
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let created_at_ms: i64 = r
        .try_get(1)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(StoredCommand {
        id: cmd_id as u64,
        job_id: id,
        body,
        created_at_ms,
    })
}

async fn pending_commands(pool: &Pool, id: JobId) -> Result<Vec<StoredCommand>> {
    let c = Conn::get(pool).await?;
    let rows = c
        .query(
            "SELECT id, body, created_at FROM commands WHERE job_id = $1 AND applied_at IS NULL ORDER BY id",
            &[&id.0],
        )
        .await
        .map_err(|e| c.err(e))?;
    rows.iter()
        .map(|r| {
            let cmd_id: i64 = r
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let body: &str = r
                .try_get(1)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let created_at_ms: i64 = r
                .try_get(2)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            stored_command(id, cmd_id, body, created_at_ms)
        })
        .collect()
}

/// A command row's columns as a `StoredCommand` (shared with `PgStore::load_job`).
pub(super) fn stored_command(
    id: JobId,
    cmd_id: i64,
    body: &str,
    created_at_ms: i64,
) -> Result<StoredCommand> {
    let body: CommandBody = serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("command {cmd_id}: {e}")))?;
    Ok(StoredCommand {
        id: cmd_id as u64,
        job_id: id,
        body,
        created_at_ms,
    })
}

async fn mark_applied(pool: &Pool, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
    let ids: Vec<i64> = ids
        .iter()
        .map(|x| i64::try_from(*x).unwrap_or(i64::MAX))
        .collect();
    let presented = i64::try_from(token).unwrap_or(i64::MAX);
    let pg_err = |e: tokio_postgres::Error| error(e, Some(pool));
    let mut c = Conn::get(pool).await?;
    let tx = c.transaction().await.map_err(pg_err)?;
    let row = tx
        .query_opt(
            "SELECT token FROM jobs WHERE job_id = $1 FOR UPDATE",
            &[&id.0],
        )
        .await
        .map_err(pg_err)?
        .ok_or(StoreError::job_not_found(id))?;
    let current: i64 = row
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if current != presented {
        // Released now, not when the dropped transaction's ROLLBACK lands (see
        // `put_command`).
        let _ = tx.rollback().await;
        return Err(StoreError::Fenced {
            job: id,
            presented: token,
            current: current as u64,
        });
    }
    let sql = format!(
        "WITH a AS (UPDATE commands SET applied_at = {NOW_MS} \
         WHERE job_id = $1 AND id = ANY($2) AND applied_at IS NULL RETURNING id) \
         UPDATE jobs SET pending_commands = greatest(0, pending_commands - (SELECT count(*) FROM a)) \
         WHERE job_id = $1"
    );
    tx.execute(&sql, &[&id.0, &ids]).await.map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

#[async_trait]
impl Commands for PgStore {
    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<StoredCommand> {
        put_command(&self.pool, scope, id, body, audit).await
    }

    async fn pending_commands(&self, id: JobId) -> Result<Vec<StoredCommand>> {
        pending_commands(&self.pool, id).await
    }

    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
        mark_applied(&self.pool, id, token, ids).await
    }

    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.commands.subscribe()
    }
}
