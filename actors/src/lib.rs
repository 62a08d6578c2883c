//! aetheris-actors: the actix actor tree of an Aetheris worker (DESIGN §3).
//!
//! ```text
//! JobRegistry (supervisor) ── JobActor × active jobs
//! LeaseManager             ── claims, heartbeats, releases leases
//! ToolRegistry             ── ToolActor × tools
//! ```
//! Invariants kept here: a job actor calls a tool only after the `step_started` event is
//! durable and fenced (G2, G3); a dead actor — panic or error — is restarted from storage,
//! never from memory, and the restart is counted; losing a lease stops the actor before it
//! calls anything external. Actix stays behind this crate: runtime/ and store/ know nothing
//! of it.

pub mod job;
pub mod lease;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod tools;

use aetheris_store::DynStore;
use std::sync::Arc;

pub use job::JobActor;
pub use lease::{Drain, LeaseManager};
pub use metrics::Metrics;
pub use registry::JobRegistry;
pub use tools::{
    EchoTool, HttpTool, Invocation, Reconciled, Tool, ToolError, ToolErrorKind, ToolRegistry,
};

/// Tunables of a worker. Defaults are what `aetheris dev` and `aetheris worker` use.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker in leases; unique per process.
    pub worker_id: String,
    pub lease_ttl_ms: u64,
    pub heartbeat_ms: u64,
    /// Claim poll interval: the fallback when no wake-up hint arrives.
    pub poll_ms: u64,
    /// Jobs this worker runs at once.
    pub max_jobs: usize,
    /// Steps of one job running at once.
    pub max_parallel_steps: usize,
    /// A snapshot is written every this many events.
    pub snapshot_every: u64,
    /// Default per-step timeout when the step gives none.
    pub default_step_timeout_ms: u64,
    /// Per-tenant rate limits (tool calls wait their turn here).
    pub rate_limits: ratelimit::RateLimiters,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: format!("worker-{}", uuid::Uuid::now_v7()),
            lease_ttl_ms: 5_000,
            heartbeat_ms: 1_000,
            poll_ms: 500,
            max_jobs: 256,
            max_parallel_steps: 8,
            snapshot_every: 100,
            default_step_timeout_ms: 300_000,
            rate_limits: ratelimit::RateLimiters::default(),
        }
    }
}

/// What every actor of a worker shares.
#[derive(Clone)]
pub struct Shared {
    pub store: DynStore,
    pub tools: ToolRegistry,
    pub metrics: Arc<Metrics>,
    pub config: Arc<WorkerConfig>,
    /// Every job this worker finishes, as it is recorded (for watchers and the bench).
    pub finished:
        tokio::sync::broadcast::Sender<(aetheris_runtime::JobId, aetheris_runtime::JobStatus)>,
}

/// Starts the worker's actor tree on the current actix system and returns the lease
/// manager (send it `Drain` to shut down gracefully) and the registry.
pub fn start_worker(shared: Shared) -> (actix::Addr<LeaseManager>, actix::Addr<JobRegistry>) {
    use actix::Actor;
    let registry = JobRegistry::new(shared.clone()).start();
    let leases = LeaseManager::new(shared, registry.clone()).start();
    registry.do_send(registry::SetLeaseManager(leases.clone()));
    (leases, registry)
}
