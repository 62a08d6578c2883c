//! The database clock, the only time source of this backend (G3): `now()` read in SQL
//! wherever a time is written, [`now_ms`] for callers, and [`DbClock`], the estimate of it
//! that stamps new job ids (UUIDv7) so ids stay in database-clock order across processes
//! without a round trip of their own.

use super::conn::Conn;
use super::rows::col;
use crate::Result;
use aetheris_runtime::JobId;
use std::sync::Mutex;
use uuid::Uuid;

const NOW_SQL: &str = concat!("SELECT ", now_ms!());

/// Uniquely and monotonically orders ids minted in this process within one millisecond.
static ID_CONTEXT: Mutex<uuid::ContextV7> = Mutex::new(uuid::ContextV7::new());

/// The database clock, in ms since the epoch.
pub(super) async fn now_ms(c: &Conn) -> Result<i64> {
    let row = c.cached_query_one(NOW_SQL, &[]).await?;
    col(&row, 0)
}

/// The database clock as this process last saw it, moved on by local time since (the
/// time stamped into new job ids; see `submit_batch`). Before the first sighting, the
/// local clock.
#[derive(Debug, Default)]
pub(super) struct DbClock(Mutex<Option<(i64, std::time::Instant)>>);

impl DbClock {
    pub(super) fn estimate(&self) -> i64 {
        let seen = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        match seen {
            Some((ms, at)) => {
                ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(0))
            }
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
                .unwrap_or(0),
        }
    }

    pub(super) fn saw(&self, ms: i64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((ms, std::time::Instant::now()));
    }
}

/// A fresh job id: UUIDv7 stamped with (an estimate of) the database clock.
pub(super) fn new_job_id(now_ms: i64) -> JobId {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ctx = ID_CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
    let ts = uuid::Timestamp::from_unix(&*ctx, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    JobId(Uuid::new_v7(ts))
}
