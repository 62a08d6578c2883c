//! Live processes on PostgreSQL (`migrations/0008_processes.sql`): one statement per
//! announcement that renews this process's row on the database clock (never a process's
//! own clock, so skewed hosts agree on who is live), counts the live rows of its kind,
//! and removes rows long expired (skipping any another announcement is removing, so two
//! processes never wait on each other).

use super::PgStore;
use crate::{Presence, ProcessKind, Result, StoreError};
use async_trait::async_trait;

/// Rows expired for this long are deleted by the next announcement.
const FORGET_AFTER_MS: i64 = 600_000;

const ANNOUNCE_SQL: &str = "\
WITH clock AS (SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint AS now_ms), \
up AS (INSERT INTO processes (kind, id, expires_ms) SELECT $1, $2, now_ms + $3 FROM clock \
       ON CONFLICT (kind, id) DO UPDATE SET expires_ms = EXCLUDED.expires_ms), \
old AS (SELECT p.kind, p.id FROM processes p, clock \
        WHERE p.expires_ms < clock.now_ms - $4 FOR UPDATE OF p SKIP LOCKED), \
gone AS (DELETE FROM processes p USING old WHERE p.kind = old.kind AND p.id = old.id) \
SELECT 1 + count(*) FROM processes p, clock \
WHERE p.kind = $1 AND p.id <> $2 AND p.expires_ms > clock.now_ms";

const RETIRE_SQL: &str = "DELETE FROM processes WHERE kind = $1 AND id = $2";

#[async_trait]
impl Presence for PgStore {
    async fn announce_process(&self, kind: ProcessKind, id: &str, ttl_ms: u64) -> Result<u32> {
        let c = self.conn().await?;
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX / 2);
        let row = c
            .cached_query_one(ANNOUNCE_SQL, &[&kind.as_str(), &id, &ttl, &FORGET_AFTER_MS])
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
}
