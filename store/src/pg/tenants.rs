//! Tenants on PostgreSQL (`migrations/0004_tenants.sql`): id, display name, limits as
//! JSON text, created time from the database clock, and the evidence redaction policy as
//! JSON text (`migrations/0010_transparency.sql`). A change and its audit row are one
//! statement.

use super::conn::Conn;
use super::PgStore;
use crate::{AuditEntry, PolicyRule, Result, StoreError, Tenant, Tenants};
use async_trait::async_trait;
use deadpool_postgres::Pool;

fn row(r: &tokio_postgres::Row) -> Result<Tenant> {
    let c = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
    let limits: String = r.try_get(2).map_err(c)?;
    Ok(Tenant {
        id: r.try_get(0).map_err(c)?,
        name: r.try_get(1).map_err(c)?,
        limits: serde_json::from_str(&limits)
            .map_err(|e| StoreError::Corrupt(format!("tenant limits: {e}")))?,
        created_at_ms: r.try_get(3).map_err(c)?,
    })
}

const COLS: &str = "id, name, limits, created_at";

/// Wraps a statement `t` that returns a tenant row so that, when `$A` (the first audit
/// parameter, numbered `first`) is not null, the same statement writes the audit row.
fn with_audit(tenant_stmt: &str, first: usize) -> String {
    let cols = super::audit::COLUMNS;
    let p: Vec<String> = (first..first + 5).map(|i| format!("${i}")).collect();
    format!(
        "WITH t AS ({tenant_stmt}), \
         a AS (INSERT INTO access_audit_log ({cols}) \
               SELECT floor(extract(epoch FROM now()) * 1000)::bigint, {} FROM t \
               WHERE {}::text IS NOT NULL) \
         SELECT {COLS} FROM t",
        p.join(", "),
        p[0]
    )
}

async fn create(
    pool: &Pool,
    id: &str,
    name: &str,
    limits: serde_json::Value,
    audit: Option<&AuditEntry>,
) -> Result<Tenant> {
    let c = Conn::get(pool).await?;
    let sql = with_audit(
        &format!(
            "INSERT INTO tenants (id, name, limits, created_at) \
             VALUES ($1, $2, $3, floor(extract(epoch FROM now()) * 1000)::bigint) \
             ON CONFLICT (id) DO NOTHING RETURNING {COLS}"
        ),
        4,
    );
    let limits = limits.to_string();
    let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
    let rows = c
        .query(&sql, &[&id, &name, &limits, &a1, &a2, &a3, &a4, &a5])
        .await
        .map_err(|e| c.err(e))?;
    match rows.first() {
        Some(r) => row(r),
        None => Err(StoreError::Conflict(format!("tenant {id:?} exists"))),
    }
}

async fn get(pool: &Pool, id: &str) -> Result<Option<Tenant>> {
    let c = Conn::get(pool).await?;
    let rows = c
        .query(&format!("SELECT {COLS} FROM tenants WHERE id = $1"), &[&id])
        .await
        .map_err(|e| c.err(e))?;
    rows.first().map(row).transpose()
}

async fn list(pool: &Pool) -> Result<Vec<Tenant>> {
    let c = Conn::get(pool).await?;
    let rows = c
        .query(&format!("SELECT {COLS} FROM tenants ORDER BY id"), &[])
        .await
        .map_err(|e| c.err(e))?;
    rows.iter().map(row).collect()
}

async fn set_limits(
    pool: &Pool,
    id: &str,
    limits: serde_json::Value,
    audit: Option<&AuditEntry>,
) -> Result<Tenant> {
    let c = Conn::get(pool).await?;
    let sql = with_audit(
        &format!("UPDATE tenants SET limits = $2 WHERE id = $1 RETURNING {COLS}"),
        3,
    );
    let limits = limits.to_string();
    let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
    let rows = c
        .query(&sql, &[&id, &limits, &a1, &a2, &a3, &a4, &a5])
        .await
        .map_err(|e| c.err(e))?;
    match rows.first() {
        Some(r) => row(r),
        None => Err(StoreError::tenant_not_found(id)),
    }
}

fn policy(text: &str) -> Result<Vec<PolicyRule>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("evidence policy: {e}")))
}

async fn get_policy(pool: &Pool, id: &str) -> Result<Vec<PolicyRule>> {
    let c = Conn::get(pool).await?;
    let row = c
        .cached_query_opt("SELECT evidence_policy FROM tenants WHERE id = $1", &[&id])
        .await?;
    match row {
        Some(r) => policy(
            r.try_get(0)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        None => Ok(Vec::new()),
    }
}

async fn set_policy(
    pool: &Pool,
    id: &str,
    rules: Vec<PolicyRule>,
    audit: Option<&AuditEntry>,
) -> Result<Vec<PolicyRule>> {
    let c = Conn::get(pool).await?;
    let cols = super::audit::COLUMNS;
    let sql = format!(
        "WITH t AS (UPDATE tenants SET evidence_policy = $2 WHERE id = $1 \
                    RETURNING evidence_policy), \
         a AS (INSERT INTO access_audit_log ({cols}) \
               SELECT floor(extract(epoch FROM now()) * 1000)::bigint, $3, $4, $5, $6, $7 \
               FROM t WHERE $3::text IS NOT NULL) \
         SELECT evidence_policy FROM t"
    );
    let text =
        serde_json::to_string(&rules).map_err(|e| StoreError::unencodable("evidence policy", e))?;
    let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
    let rows = c
        .query(&sql, &[&id, &text, &a1, &a2, &a3, &a4, &a5])
        .await
        .map_err(|e| c.err(e))?;
    match rows.first() {
        Some(r) => policy(
            r.try_get(0)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        None => Err(StoreError::tenant_not_found(id)),
    }
}

#[async_trait]
impl Tenants for PgStore {
    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        create(&self.pool, id, name, limits, audit).await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        get(&self.pool, id).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        list(&self.pool).await
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        set_limits(&self.pool, id, limits, audit).await
    }

    async fn evidence_policy(&self, id: &str) -> Result<Vec<PolicyRule>> {
        get_policy(&self.pool, id).await
    }

    async fn set_evidence_policy(
        &self,
        id: &str,
        rules: Vec<PolicyRule>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<PolicyRule>> {
        set_policy(&self.pool, id, rules, audit).await
    }
}
