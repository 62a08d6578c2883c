//! Each tenant's transparency log on PostgreSQL (`migrations/0010_transparency.sql`):
//! reads of its leaves. Leaves are written by the append transaction that finishes their
//! job (`append::APPEND_LEAVES_SQL`); commits of one tenant's leaves are serialized by its
//! head row, so any snapshot sees a prefix of the log, which `log_leaves` checks.

use super::rows::{col, hash32, scope_tenant, to_i64, to_u64};
use super::PgStore;
use crate::{LogLeaf, Result, Scope, StoreError, TransparencyLog};
use aetheris_runtime::JobId;
use async_trait::async_trait;
use uuid::Uuid;

const LEAVES_SQL: &str = "SELECT idx, job_id, leaf_hash, appended_at FROM transparency_leaves \
     WHERE tenant = $1 AND idx < $2 ORDER BY idx";

/// The job (scoped by tenant) and its leaf, if it has one: no row means no such job.
const JOB_LEAF_SQL: &str = "\
SELECT j.tenant, l.tenant, l.idx, l.leaf_hash, l.appended_at
FROM jobs j LEFT JOIN transparency_leaves l ON l.job_id = j.job_id
WHERE j.job_id = $1 AND ($2::text IS NULL OR j.tenant = $2)";

fn leaf_row(r: &tokio_postgres::Row, job_id: JobId, at: usize) -> Result<LogLeaf> {
    Ok(LogLeaf {
        index: to_u64(col(r, at)?, "leaf index")?,
        job_id,
        leaf_hash: hash32(col(r, at + 1)?, "leaf_hash")?,
        appended_at_ms: col(r, at + 2)?,
    })
}

#[async_trait]
impl TransparencyLog for PgStore {
    async fn log_leaves(&self, tenant: &str, size: Option<u64>) -> Result<Vec<LogLeaf>> {
        let c = self.conn().await?;
        let limit = size.map_or(i64::MAX, to_i64);
        let rows = c.cached_query(LEAVES_SQL, &[&tenant, &limit]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let leaf = LogLeaf {
                index: to_u64(col(r, 0)?, "leaf index")?,
                job_id: JobId(col::<Uuid>(r, 1)?),
                leaf_hash: hash32(col(r, 2)?, "leaf_hash")?,
                appended_at_ms: col(r, 3)?,
            };
            if leaf.index != out.len() as u64 {
                return Err(StoreError::Corrupt(format!(
                    "the transparency log of tenant {tenant:?} has no leaf {} (a leaf was deleted)",
                    out.len()
                )));
            }
            out.push(leaf);
        }
        Ok(out)
    }

    async fn job_leaf(&self, scope: Scope<'_>, id: JobId) -> Result<Option<LogLeaf>> {
        let c = self.conn().await?;
        let Some(r) = c
            .cached_query_opt(JOB_LEAF_SQL, &[&id.0, &scope_tenant(scope)])
            .await?
        else {
            return Err(StoreError::job_not_found(id));
        };
        let Some(leaf_tenant) = col::<Option<String>>(&r, 1)? else {
            return Ok(None);
        };
        if leaf_tenant != col::<String>(&r, 0)? {
            return Err(StoreError::Corrupt(format!(
                "job {id}: its transparency leaf is in another tenant's log"
            )));
        }
        leaf_row(&r, id, 2).map(Some)
    }
}
