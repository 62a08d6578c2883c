//! Tenants on PostgreSQL (`migrations/0004_tenants.sql`): id, display name, limits as
//! JSON text, created time from the database clock.

use crate::pg_store::pg_err;
use crate::{Result, StoreError, Tenant};
use deadpool_postgres::Pool;

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .map_err(|e| StoreError::Backend(format!("PostgreSQL connection: {e}")))
}

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

pub async fn create(
    pool: &Pool,
    id: &str,
    name: &str,
    limits: serde_json::Value,
) -> Result<Tenant> {
    let c = client(pool).await?;
    let sql = format!(
        "INSERT INTO tenants (id, name, limits, created_at) \
         VALUES ($1, $2, $3, floor(extract(epoch FROM now()) * 1000)::bigint) \
         ON CONFLICT (id) DO NOTHING RETURNING {COLS}"
    );
    let rows = c
        .query(&sql, &[&id, &name, &limits.to_string()])
        .await
        .map_err(pg_err)?;
    match rows.first() {
        Some(r) => row(r),
        None => Err(StoreError::Conflict(format!("tenant {id:?} exists"))),
    }
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<Tenant>> {
    let c = client(pool).await?;
    let rows = c
        .query(&format!("SELECT {COLS} FROM tenants WHERE id = $1"), &[&id])
        .await
        .map_err(pg_err)?;
    rows.first().map(row).transpose()
}

pub async fn list(pool: &Pool) -> Result<Vec<Tenant>> {
    let c = client(pool).await?;
    let rows = c
        .query(&format!("SELECT {COLS} FROM tenants ORDER BY id"), &[])
        .await
        .map_err(pg_err)?;
    rows.iter().map(row).collect()
}

pub async fn set_limits(pool: &Pool, id: &str, limits: serde_json::Value) -> Result<Tenant> {
    let c = client(pool).await?;
    let rows = c
        .query(
            &format!("UPDATE tenants SET limits = $2 WHERE id = $1 RETURNING {COLS}"),
            &[&id, &limits.to_string()],
        )
        .await
        .map_err(pg_err)?;
    match rows.first() {
        Some(r) => row(r),
        None => Err(StoreError::Rejected(format!(
            "tenant {id:?} does not exist"
        ))),
    }
}
