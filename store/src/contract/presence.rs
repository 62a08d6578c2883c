//! Live processes, counted on the store clock: each process takes `1/n` of every
//! tenant's global rate limits, `n` being the live processes of its kind.

use crate::{ProcessKind, Result};
use async_trait::async_trait;

#[async_trait]
pub trait Presence: Send + Sync {
    /// Announces the process `id` as a live `kind` until `ttl_ms` from now (the store's
    /// clock) and returns how many processes of that kind are live, itself included
    /// (never 0).
    async fn announce_process(&self, kind: ProcessKind, id: &str, ttl_ms: u64) -> Result<u32>;

    /// Withdraws the announcement of `id` at once (a draining process), so the others'
    /// shares grow on their next announcement instead of after the TTL.
    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()>;
}
