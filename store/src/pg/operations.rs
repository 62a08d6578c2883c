//! The operator's figures on PostgreSQL: each tenant's backlog (claimable jobs without a
//! live lease, on the `jobs_claimable` index) and its outcome_unknown steps (the ledger
//! rows of waiting jobs), in one statement on the database clock, and the migrations
//! applied. Run at scrape time by the gateways, so it reads only: no lock, no write.

use super::rows::{col, to_u64};
use super::PgStore;
use crate::{OperationalFigures, Operations, Result, TenantBacklog};
use async_trait::async_trait;

const FIGURES_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms), \
runnable AS (SELECT j.tenant, count(*) AS n, min(j.updated_at) AS oldest FROM jobs j, clock \
             WHERE j.claimable AND (j.lease_owner IS NULL OR j.lease_expires_at <= clock.now_ms) \
             GROUP BY j.tenant), \
unknown AS (SELECT j.tenant, count(*) AS n, min(l.updated_at) AS oldest \
            FROM jobs j JOIN ledger l ON l.job_id = j.job_id \
            WHERE j.status = 'waiting' AND l.status = 'outcome_unknown' GROUP BY j.tenant) \
SELECT coalesce(r.tenant, u.tenant), coalesce(r.n, 0), \
       greatest(coalesce(clock.now_ms - r.oldest, 0), 0), coalesce(u.n, 0), \
       greatest(coalesce(clock.now_ms - u.oldest, 0), 0) \
FROM runnable r FULL JOIN unknown u ON u.tenant = r.tenant CROSS JOIN clock ORDER BY 1"
);

const MIGRATIONS_SQL: &str = "SELECT count(*) FROM aetheris_migrations";

#[async_trait]
impl Operations for PgStore {
    async fn operational_figures(&self) -> Result<OperationalFigures> {
        let c = self.conn().await?;
        let rows = c.cached_query(FIGURES_SQL, &[]).await?;
        let tenants = rows
            .iter()
            .map(|r| {
                Ok(TenantBacklog {
                    tenant: col(r, 0)?,
                    runnable: to_u64(col(r, 1)?, "runnable count")?,
                    runnable_oldest_ms: to_u64(col(r, 2)?, "runnable age")?,
                    outcome_unknown: to_u64(col(r, 3)?, "outcome_unknown count")?,
                    outcome_unknown_oldest_ms: to_u64(col(r, 4)?, "outcome_unknown age")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let applied = c.cached_query_one(MIGRATIONS_SQL, &[]).await?;
        Ok(OperationalFigures {
            tenants,
            migrations_applied: Some(to_u64(col(&applied, 0)?, "migrations")?),
        })
    }
}
