//! Live processes on PostgreSQL (`migrations/0008_processes.sql`,
//! `0011_process_reports.sql`): one statement per announcement that renews this process's
//! row and report on the database clock (never a process's own clock, so skewed hosts
//! agree on who is live and how long ago each announced), counts the live rows of its
//! kind, and removes rows long expired (skipping any another announcement is removing, so
//! two processes never wait on each other).

use super::PgStore;
use crate::{Presence, ProcessKind, ProcessStatus, Result, StoreError, FORGET_AFTER_MS};
use async_trait::async_trait;

const ANNOUNCE_SQL: &str = "\
WITH clock AS (SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint AS now_ms), \
up AS (INSERT INTO processes (kind, id, expires_ms, seen_ms, report) \
       SELECT $1, $2, now_ms + $3, now_ms, $5 FROM clock \
       ON CONFLICT (kind, id) DO UPDATE SET expires_ms = EXCLUDED.expires_ms, \
       seen_ms = EXCLUDED.seen_ms, report = EXCLUDED.report), \
old AS (SELECT p.kind, p.id FROM processes p, clock \
        WHERE p.expires_ms < clock.now_ms - $4 FOR UPDATE OF p SKIP LOCKED), \
gone AS (DELETE FROM processes p USING old WHERE p.kind = old.kind AND p.id = old.id) \
SELECT 1 + count(*) FROM processes p, clock \
WHERE p.kind = $1 AND p.id <> $2 AND p.expires_ms > clock.now_ms";

const RETIRE_SQL: &str = "DELETE FROM processes WHERE kind = $1 AND id = $2";

const LIST_SQL: &str = "\
WITH clock AS (SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint AS now_ms) \
SELECT p.kind, p.id, p.expires_ms > clock.now_ms, clock.now_ms - p.seen_ms, \
       p.expires_ms - p.seen_ms, p.report \
FROM processes p, clock WHERE p.expires_ms >= clock.now_ms - $1 ORDER BY p.kind, p.id";

/// A non-negative `bigint` as `u64`; `None` for NULL.
fn millis(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

#[async_trait]
impl Presence for PgStore {
    async fn announce_process(
        &self,
        kind: ProcessKind,
        id: &str,
        ttl_ms: u64,
        report: &str,
    ) -> Result<u32> {
        let c = self.conn().await?;
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX / 2);
        let row = c
            .cached_query_one(
                ANNOUNCE_SQL,
                &[&kind.as_str(), &id, &ttl, &FORGET_AFTER_MS, &report],
            )
            .await?;
        let n: i64 = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("process count: {e}")))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
    }

    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()> {
        let c = self.conn().await?;
        c.execute(RETIRE_SQL, &[&kind.as_str(), &id])
            .await
            .map_err(|e| c.err(e))?;
        Ok(())
    }

    async fn list_processes(&self) -> Result<Vec<ProcessStatus>> {
        let c = self.conn().await?;
        let rows = c.cached_query(LIST_SQL, &[&FORGET_AFTER_MS]).await?;
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("processes.{what}: {e}"))
        };
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(0).map_err(|e| corrupt("kind", &e))?;
                Ok(ProcessStatus {
                    kind: ProcessKind::parse(&kind)
                        .ok_or_else(|| corrupt("kind", &format!("unknown kind {kind:?}")))?,
                    id: r.try_get(1).map_err(|e| corrupt("id", &e))?,
                    live: r.try_get(2).map_err(|e| corrupt("expires_ms", &e))?,
                    heartbeat_age_ms: millis(r.try_get(3).map_err(|e| corrupt("seen_ms", &e))?),
                    ttl_ms: millis(r.try_get(4).map_err(|e| corrupt("seen_ms", &e))?),
                    report: r.try_get(5).map_err(|e| corrupt("report", &e))?,
                })
            })
            .collect()
    }
}
