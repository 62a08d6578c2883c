//! Live processes, counted on the store clock: each process takes `1/n` of every
//! tenant's global rate limits, `n` being the live processes of its kind. With each
//! announcement a process also leaves a report about itself (its supervision figures, as
//! JSON the store does not read), so any process can show every other one
//! (`GET /v1/system/actors`, `aetheris status`).

use crate::{ProcessKind, ProcessStatus, Result};
use async_trait::async_trait;

/// How long an expired announcement stays listed (as not live) before it is forgotten.
pub const FORGET_AFTER_MS: i64 = 600_000;

#[async_trait]
pub trait Presence: Send + Sync {
    /// Announces the process `id` as a live `kind` until `ttl_ms` from now (the store's
    /// clock), with `report` (JSON text) as what it says about itself, and returns how
    /// many processes of that kind are live, itself included (never 0).
    async fn announce_process(
        &self,
        kind: ProcessKind,
        id: &str,
        ttl_ms: u64,
        report: &str,
    ) -> Result<u32>;

    /// Withdraws the announcement of `id` at once (a draining process), so the others'
    /// shares grow on their next announcement instead of after the TTL.
    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()>;

    /// Every announced process: the live ones, and those whose announcement expired less
    /// than [`FORGET_AFTER_MS`] ago without being withdrawn (killed, hung or cut off),
    /// ordered by kind and id, with ages on the store clock.
    async fn list_processes(&self) -> Result<Vec<ProcessStatus>>;
}
