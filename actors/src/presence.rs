//! This process's announcement in the store's presence table (`Announcement`): renewed
//! every heartbeat on the store clock, it keeps the process counted among the live ones
//! of its kind (each takes one over that count of every tenant's global rate limits,
//! ratelimit.rs) and carries the process's supervision report (supervision.rs), which is
//! how `GET /v1/system/actors` and `aetheris status` see every process. Each announcement
//! also tells the supervision figures whether the store answered (`aetheris_store_up`).
//!
//! Invariant: a retired announcement stays retired — `retire` waits for an announcement
//! in flight, so none can put the row back after it was deleted.

use crate::ratelimit::RateLimiters;
use crate::supervision;
use aetheris_store::{DynStore, ProcessKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// This process's announcement as a live `kind` (gateway or worker) in the store, renewed
/// every `every` and valid for `ttl`, which keeps `RateLimiters`' share of every tenant's
/// limits at one over the live count. A killed process drops out when its announcement
/// expires (until then the others run a little under the limit, never over it); a
/// joining one counts itself at once and the others within `every` (the only window in
/// which the total can pass the limit, by at most their shares' difference for `every`).
pub struct Announcement {
    store: DynStore,
    kind: ProcessKind,
    id: String,
    stopped: Arc<AtomicBool>,
    /// Held across each announcement, so `retire` never races one still in flight (which
    /// would put the row back after it was deleted).
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Announces `id` once with this process's report, sets `limits`' live count of `kind`
/// from the answer, and notes whether the store answered.
async fn announce_once(
    store: &DynStore,
    limits: &RateLimiters,
    kind: ProcessKind,
    id: &str,
    ttl: Duration,
) -> Result<u32, aetheris_store::StoreError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    // A report always serializes (plain strings and numbers); `{}` would do if not.
    let report = serde_json::to_string(&supervision::report()).unwrap_or_else(|_| "{}".into());
    let announced = store.announce_process(kind, id, ttl_ms, &report).await;
    supervision::store_answered(announced.is_ok());
    let n = announced?;
    limits.set_live(kind, n);
    Ok(n)
}

impl Announcement {
    /// Starts announcing (the first announcement at once, in the background). Must be
    /// called inside an actix system.
    pub fn start(
        store: DynStore,
        limits: RateLimiters,
        kind: ProcessKind,
        id: String,
        every: Duration,
        ttl: Duration,
    ) -> Announcement {
        Announcement::spawn(store, limits, kind, id, every, ttl, Duration::ZERO)
    }

    /// Announces once before returning (so this process's shares are right before its
    /// first claim or admission), then keeps announcing every `every`; an error if the
    /// store cannot be reached. Must be called inside an actix system.
    pub async fn begin(
        store: DynStore,
        limits: RateLimiters,
        kind: ProcessKind,
        id: String,
        every: Duration,
        ttl: Duration,
    ) -> Result<Announcement, aetheris_store::StoreError> {
        announce_once(&store, &limits, kind, &id, ttl).await?;
        Ok(Announcement::spawn(
            store, limits, kind, id, every, ttl, every,
        ))
    }

    fn spawn(
        store: DynStore,
        limits: RateLimiters,
        kind: ProcessKind,
        id: String,
        every: Duration,
        ttl: Duration,
        first_after: Duration,
    ) -> Announcement {
        let stopped = Arc::new(AtomicBool::new(false));
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let (st, who, stop, lock) = (store.clone(), id.clone(), stopped.clone(), turn.clone());
        actix::spawn(async move {
            tokio::time::sleep(first_after).await;
            loop {
                {
                    let _turn = lock.lock().await;
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Err(e) = announce_once(&st, &limits, kind, &who, ttl).await {
                        // Keep the last share: the store being unreachable says nothing
                        // about how many processes are live.
                        tracing::warn!(error = %e, kind = kind.as_str(), "announcing this process failed");
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Announcement {
            store,
            kind,
            id,
            stopped,
            turn,
        }
    }

    /// Stops announcing and withdraws the announcement, so the other processes' shares
    /// grow on their next announcement (a drain), not after the TTL.
    pub async fn retire(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _turn = self.turn.lock().await;
        if let Err(e) = self.store.retire_process(self.kind, &self.id).await {
            tracing::warn!(error = %e, "withdrawing this process's announcement failed");
        }
    }
}
