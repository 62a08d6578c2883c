//! The access audit log on PostgreSQL (`migrations/0005_audit.sql`).
//!
//! Invariant: a change's audit row is written by the change's own statement or
//! transaction (see `INSERT_CTE`, used by submit, commands and tenants), so it commits or
//! rolls back with the change. `record` writes a row on its own, for attempts that changed
//! nothing (a `denied` permission, an idempotent repeat).

use super::conn::Conn;
use super::PgStore;
use crate::{Audit, AuditEntry, AuditFilter, AuditRecord, Result, Scope, StoreError};
use async_trait::async_trait;
use deadpool_postgres::Pool;

/// The columns an audit row is inserted with, after `at`.
pub(super) const COLUMNS: &str = "at, tenant, actor, action, target, result";

const NOW_MS: &str = "(floor(extract(epoch FROM now()) * 1000)::bigint)";

/// The parameters of an entry in `COLUMNS` order after `at`, all null without one (the
/// statements skip the audit insert when the first is null).
pub(super) fn nullable_params(a: Option<&AuditEntry>) -> [Option<&str>; 5] {
    match a {
        Some(a) => [
            Some(a.tenant.as_str()),
            Some(a.actor.as_str()),
            Some(a.action.as_str()),
            Some(a.target.as_str()),
            Some(a.result.as_str()),
        ],
        None => [None; 5],
    }
}

fn record_row(r: &tokio_postgres::Row) -> Result<AuditRecord> {
    let c = |e: tokio_postgres::Error| StoreError::Corrupt(format!("audit row: {e}"));
    let id: i64 = r.try_get(0).map_err(c)?;
    Ok(AuditRecord {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("audit id {id}")))?,
        at_ms: r.try_get(1).map_err(c)?,
        entry: AuditEntry {
            tenant: r.try_get(2).map_err(c)?,
            actor: r.try_get(3).map_err(c)?,
            action: r.try_get(4).map_err(c)?,
            target: r.try_get(5).map_err(c)?,
            result: r.try_get(6).map_err(c)?,
        },
    })
}

/// Writes `e` on its own, on connection `c`.
pub(super) async fn record(c: &Conn, e: &AuditEntry) -> Result<AuditRecord> {
    let sql = format!(
        "INSERT INTO access_audit_log ({COLUMNS}) VALUES ({NOW_MS}, $1, $2, $3, $4, $5) \
         RETURNING id, {COLUMNS}"
    );
    let row = c
        .query_one(
            &sql,
            &[&e.tenant, &e.actor, &e.action, &e.target, &e.result],
        )
        .await
        .map_err(|e| c.err(e))?;
    record_row(&row)
}

async fn list(pool: &Pool, scope: Scope<'_>, f: AuditFilter) -> Result<Vec<AuditRecord>> {
    let c = Conn::get(pool).await?;
    let tenant = match scope {
        Scope::Tenant(t) => Some(t),
        Scope::System => None,
    };
    let after = i64::try_from(f.after_id).unwrap_or(i64::MAX);
    let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            &format!(
                "SELECT id, {COLUMNS} FROM access_audit_log \
                 WHERE ($1::text IS NULL OR tenant = $1) AND id > $2 \
                   AND ($3::text IS NULL OR action = $3) \
                 ORDER BY id LIMIT $4"
            ),
            &[&tenant, &after, &f.action, &limit],
        )
        .await
        .map_err(|e| c.err(e))?;
    rows.iter().map(record_row).collect()
}

#[async_trait]
impl Audit for PgStore {
    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        record(&self.conn().await?, entry).await
    }

    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
        list(&self.pool, scope, filter).await
    }
}
