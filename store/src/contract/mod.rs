//! The storage contract, one small trait per concern (restate's storage-api idea):
//! [`JobLog`] (jobs, events, snapshots, the ledger), [`Leases`] (claims, heartbeats, timers,
//! the store clock), [`Commands`], [`Tenants`], [`Users`] (with the per-request access
//! lookup), [`Audit`], [`Presence`] (live processes and what they report),
//! [`Operations`] (the backlog and unknown outcomes an operator watches),
//! [`TransparencyLog`] (each tenant's log of finished jobs), [`LlmStore`] (tenants' LLM
//! providers and daily token usage) and [`Retention`] (deleting finished jobs past their
//! tenant's retention). [`Store`] is all of them, with a
//! blanket impl, so `DynStore = Arc<dyn Store>` serves callers that need several.
//!
//! Every backend keeps the same invariants, proven by the conformance suite
//! (`crate::testing::conformance`, feature `test-util`):
//! - G1: a write is durable (committed and synced) before its future resolves;
//! - gap-free per-job `seq`, each event hash-chained (G7, `aetheris_runtime::chain`);
//! - G3: every append, ledger change and snapshot write for a job is conditional on the
//!   job's current fencing token in the same transaction; stale tokens get `Fenced`;
//! - idempotent submission by (tenant, idempotency_key);
//! - leases: a claim bumps the fencing token; time is the store's clock, never a worker's;
//! - a job's terminal event and its transparency leaf commit together, the leaf derived
//!   from the planned append by `crate::transparency::leaf_of` (one rule for every
//!   backend); a tenant's leaf indexes are 0..n without gaps or repeats, and a leaf
//!   outlives its job's deletion by retention;
//! - a snapshot write keeps only the job's newest snapshot (older ones are pruned in the
//!   same transaction).
//!
//! Reads that serve a tenant take a `Scope`, so tenant isolation is enforced here and not
//! only in handlers.

mod audit;
mod commands;
mod jobs;
mod leases;
mod llm;
mod operations;
mod presence;
mod retention;
mod tenants;
mod transparency;
mod users;

pub use audit::Audit;
pub use commands::Commands;
pub use jobs::JobLog;
pub use leases::Leases;
pub use llm::LlmStore;
pub use operations::Operations;
pub use presence::{Presence, FORGET_AFTER_MS};
pub use retention::Retention;
pub use tenants::Tenants;
pub use transparency::TransparencyLog;
pub use users::Users;

use std::sync::Arc;

/// Every concern of the store: what a backend implements and what `DynStore` holds.
pub trait Store:
    JobLog
    + Leases
    + Commands
    + Tenants
    + Users
    + Audit
    + Presence
    + Operations
    + TransparencyLog
    + LlmStore
    + Retention
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: JobLog
        + Leases
        + Commands
        + Tenants
        + Users
        + Audit
        + Presence
        + Operations
        + TransparencyLog
        + LlmStore
        + Retention
        + Send
        + Sync
        + 'static
{
}

pub type DynStore = Arc<dyn Store>;
