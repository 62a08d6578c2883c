//! Leases: claiming runnable jobs (fair across tenants, within running caps), heartbeats,
//! release, the wake-up hint, and the store clock every lease and timer is measured on.

use crate::{JobLoad, Lease, Result, RunningCaps};
use aetheris_runtime::JobId;
use async_trait::async_trait;
use std::sync::Arc;

#[async_trait]
pub trait Leases: Send + Sync {
    /// Claims up to `max` runnable, unleased (or lease-expired) jobs for `worker`, round
    /// robin across tenants, bumping each job's fencing token, and never taking a tenant
    /// past its cap in `caps` (counted across every worker of the store). Parked jobs whose
    /// timer is due are claimable.
    async fn claim_within(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<Lease>>;

    /// `claim_within`, and with each lease its job's [`JobLoad`] when the store could read
    /// it in the same round trip (`None`: the worker calls `load_job`). A load is as of
    /// the claim: the job's whole log (no snapshot) and no pending commands. The default
    /// loads nothing; PostgreSQL preloads short logs (W6: a job then starts after two
    /// round trips, the claim and its first append, instead of three).
    async fn claim_and_load(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<(Lease, Option<JobLoad>)>> {
        let leases = self.claim_within(worker, ttl_ms, max, caps).await?;
        Ok(leases.into_iter().map(|l| (l, None)).collect())
    }

    /// `claim_within` without caps.
    async fn claim(&self, worker: &str, ttl_ms: u64, max: usize) -> Result<Vec<Lease>> {
        self.claim_within(worker, ttl_ms, max, &RunningCaps::default())
            .await
    }

    /// Renews the given leases in one round trip; returns the ones still held, and those
    /// whose job an append under the same token finished (that append gave the lease
    /// back: nothing to renew, and nothing lost), with `expires_at_ms` 0. A lease not
    /// returned is lost.
    async fn heartbeat(
        &self,
        worker: &str,
        ttl_ms: u64,
        held: &[(JobId, u64)],
    ) -> Result<Vec<Lease>>;

    /// Gives leases back so another worker can claim at once (drain, passivation). A
    /// lease its finishing append gave back needs none (giving it again does nothing).
    async fn release(&self, worker: &str, held: &[(JobId, u64)]) -> Result<()>;

    /// The store's clock (ms since epoch): the only time source of the system.
    async fn now_ms(&self) -> Result<i64>;

    /// A wake-up hint fired when new work may be claimable (submit, lease release).
    fn work_hint(&self) -> Arc<tokio::sync::Notify>;

    /// Where a worker offers its free slots to this store's submissions, so a new job is
    /// leased in the commit that stores it, with no claim (see [`crate::handoff`]).
    /// `None` (the default): the store has none, and jobs are claimed. PostgreSQL has
    /// one: there a claim is a round trip and a commit of its own.
    fn handoff(&self) -> Option<Arc<crate::handoff::Handoff>> {
        None
    }
}
