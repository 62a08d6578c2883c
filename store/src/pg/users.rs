//! Users of a tenant on PostgreSQL (`migrations/0006_users.sql`): roles as JSON text, an
//! upsert that keeps the creation time and writes its audit row in the same statement,
//! and the one-query lookup of a request's tenant and user (`access`).

use super::conn::Conn;
use super::PgStore;
use crate::{Access, AuditEntry, Result, StoreError, User, Users};
use async_trait::async_trait;
use deadpool_postgres::Pool;

const NOW_MS: &str = "(floor(extract(epoch FROM now()) * 1000)::bigint)";
const COLS: &str = "tenant, id, roles, disabled, created_at, updated_at";

/// Whether the tenant exists, and its user `$2` (columns of `COLS` from 1), in one row.
const ACCESS_SQL: &str = "SELECT t.id IS NOT NULL, u.tenant, u.id, u.roles, u.disabled, \
     u.created_at, u.updated_at \
     FROM (SELECT 1) one LEFT JOIN tenants t ON t.id = $1 \
     LEFT JOIN users u ON u.tenant = t.id AND u.id = $2";

/// A user row from columns starting at `at`, in `COLS` order.
fn user_at(r: &tokio_postgres::Row, at: usize) -> Result<User> {
    let c = |e: tokio_postgres::Error| StoreError::Corrupt(format!("user row: {e}"));
    let roles: String = r.try_get(at + 2).map_err(c)?;
    Ok(User {
        tenant: r.try_get(at).map_err(c)?,
        id: r.try_get(at + 1).map_err(c)?,
        roles: serde_json::from_str(&roles)
            .map_err(|e| StoreError::Corrupt(format!("user roles: {e}")))?,
        disabled: r.try_get(at + 3).map_err(c)?,
        created_at_ms: r.try_get(at + 4).map_err(c)?,
        updated_at_ms: r.try_get(at + 5).map_err(c)?,
    })
}

async fn put(
    pool: &Pool,
    tenant: &str,
    id: &str,
    roles: Vec<String>,
    disabled: bool,
    audit: Option<&AuditEntry>,
) -> Result<User> {
    let c = Conn::get(pool).await?;
    let roles = serde_json::to_string(&roles).map_err(|e| StoreError::unencodable("roles", e))?;
    let cols = super::audit::COLUMNS;
    // Only for an existing tenant (`t`); the audit row comes from the same statement.
    let sql = format!(
        "WITH t AS (SELECT id FROM tenants WHERE id = $1), \
         u AS (INSERT INTO users ({COLS}) SELECT t.id, $2, $3, $4, {NOW_MS}, {NOW_MS} FROM t \
               ON CONFLICT (tenant, id) DO UPDATE \
               SET roles = EXCLUDED.roles, disabled = EXCLUDED.disabled, \
                   updated_at = EXCLUDED.updated_at \
               RETURNING {COLS}), \
         a AS (INSERT INTO access_audit_log ({cols}) \
               SELECT u.updated_at, $5, $6, $7, $8, $9 FROM u WHERE $5::text IS NOT NULL) \
         SELECT {COLS} FROM u"
    );
    let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
    let rows = c
        .query(
            &sql,
            &[&tenant, &id, &roles, &disabled, &a1, &a2, &a3, &a4, &a5],
        )
        .await
        .map_err(|e| c.err(e))?;
    match rows.first() {
        Some(r) => user_at(r, 0),
        None => Err(StoreError::tenant_not_found(tenant)),
    }
}

async fn list(pool: &Pool, tenant: &str) -> Result<Vec<User>> {
    let c = Conn::get(pool).await?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM users WHERE tenant = $1 ORDER BY id"),
            &[&tenant],
        )
        .await
        .map_err(|e| c.err(e))?;
    rows.iter().map(|r| user_at(r, 0)).collect()
}

async fn access(pool: &Pool, tenant: &str, user: &str) -> Result<Access> {
    let c = Conn::get(pool).await?;
    // A cached statement, run on every authenticated request: `cached_query_one` re-prepares
    // it if a migration changed the tables under it (DESIGN §8).
    let r = c.cached_query_one(ACCESS_SQL, &[&tenant, &user]).await?;
    let tenant_exists: bool = r
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let has_user: Option<String> = r
        .try_get(2)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Access {
        tenant_exists,
        user: match has_user {
            Some(_) => Some(user_at(&r, 1)?),
            None => None,
        },
    })
}

#[async_trait]
impl Users for PgStore {
    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<User> {
        put(&self.pool, tenant, id, roles, disabled, audit).await
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<User>> {
        list(&self.pool, tenant).await
    }

    async fn access(&self, tenant: &str, user: &str) -> Result<Access> {
        access(&self.pool, tenant, user).await
    }
}
