//! The worker start-up every process uses (`aetheris dev`, `aetheris worker`, the
//! gateway node of tests): `Worker::start(store, tools, config)` installs the process's
//! metrics recorder, keeps the rate limits in step with the tenants table, announces the
//! worker in the store (before its first claim, so its share of each tenant's global limits
//! is right from the first call), and starts the actor tree; `WorkerHandle::drain` stops
//! taking work, records in-flight calls, releases every lease and withdraws the
//! announcement. It also starts the worker's retention collector (`gc`).
//!
//! The tree is built in one pass (no late binding): the lease manager's context is made
//! first so the registry can be started with its address, then the lease manager runs in
//! that context with the registry's. Neither is ever without the other.

pub use crate::context::{FinishedJobs, WorkerConfig, WorkerContext};
use crate::lease::LeaseManager;
use crate::messages::{CrashReason, Drain, LeasePort, RegistryPort};
use crate::metrics::{self as m, Metrics};
use crate::ratelimit::Announcement;
use crate::registry::JobRegistry;
use crate::tools::ToolRegistry;
use actix::prelude::*;
use aetheris_runtime::{JobId, JobStatus};
use aetheris_store::{DynStore, ProcessKind, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Starts a worker (see the module doc).
pub struct Worker;

impl Worker {
    /// Starts the worker on the current actix system; `tools` must have been built inside
    /// it. Fails only if the store cannot be reached to announce the worker.
    pub async fn start(
        store: DynStore,
        tools: ToolRegistry,
        config: WorkerConfig,
    ) -> Result<WorkerHandle, StoreError> {
        Metrics::install();
        let limits = config.rate_limits.clone();
        limits.keep_refreshed(store.clone());
        let announcement = Announcement::begin(
            store.clone(),
            limits,
            ProcessKind::Worker,
            config.worker_id.clone(),
            Duration::from_millis(config.heartbeat_ms),
            Duration::from_millis(config.lease_ttl_ms),
        )
        .await?;
        let (finished, _) = tokio::sync::broadcast::channel(config.finished_buffer.max(1));
        let worker_id = config.worker_id.clone();
        zero_supervision_series();
        crate::supervision::worker_started(config.lease_ttl_ms);
        let llm = crate::llm::LlmRuntime::new(
            config.llm.clone(),
            Some(store.clone()),
            config.rate_limits.clone(),
        );
        tools.attach_llm(llm.clone());
        let gc = crate::gc::spawn(store.clone(), config.rate_limits.clone(), config.gc.clone());
        let (leases, _registry) = start_actor_tree(WorkerContext {
            llm,
            store,
            tools,
            config: Arc::new(config),
            finished: finished.clone(),
        });
        Ok(WorkerHandle {
            worker_id,
            leases,
            finished,
            announcement,
            gc,
        })
    }
}

/// A running worker.
pub struct WorkerHandle {
    worker_id: String,
    /// The lease manager holds the registry's port (and the registry the lease
    /// manager's), which keeps the tree alive.
    leases: Addr<LeaseManager>,
    finished: FinishedJobs,
    announcement: Announcement,
    gc: crate::gc::GcHandle,
}

impl WorkerHandle {
    /// The id this worker holds leases under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Every job this worker finishes from now on.
    pub fn finished(&self) -> tokio::sync::broadcast::Receiver<(JobId, JobStatus)> {
        self.finished.subscribe()
    }

    /// Graceful stop: take no new work, let job actors record their in-flight calls (for
    /// at most `grace`), release every lease, and withdraw the announcement so the other
    /// workers' shares grow at once.
    pub async fn drain(mut self, grace: Duration) {
        self.gc.stop();
        if let Err(e) = self.leases.send(Drain::new(grace)).await {
            tracing::warn!(error = %e, "draining the lease manager failed");
        }
        self.announcement.retire().await;
    }
}

/// Starts the lease manager and the registry on the current actix system, each holding
/// the other's port from the start.
pub fn start_actor_tree(ctx: WorkerContext) -> (Addr<LeaseManager>, Addr<JobRegistry>) {
    let lease_context = Context::<LeaseManager>::new();
    let leases = lease_context.address();
    let registry = JobRegistry::new(ctx.clone(), LeasePort::of(&leases)).start();
    let manager = LeaseManager::new(ctx, RegistryPort::of(&registry));
    lease_context.run(manager);
    (leases, registry)
}

/// The supervision series a worker reports, at zero until something happens: a scrape (and
/// an alert on their rate) finds them from the start.
fn zero_supervision_series() {
    for reason in CrashReason::FIXED {
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => "job", "reason" => reason.as_str())
            .increment(0);
    }
    for kind in ["job", "tool"] {
        metrics::counter!(m::ACTOR_PANICS, "kind" => kind, "reason" => "panic").increment(0);
    }
    metrics::counter!(m::LEASE_GRANTS).increment(0);
    metrics::counter!(m::SNAPSHOTS_WRITTEN).increment(0);
    metrics::counter!(m::REPLAY_EVENTS).increment(0);
    metrics::counter!(m::COMMAND_CHECKS).increment(0);
    for reason in ["heartbeat", "fenced"] {
        metrics::counter!(m::LEASE_LOSSES, "reason" => reason).increment(0);
    }
    for outcome in ["succeeded", "failed", "outcome_unknown"] {
        metrics::counter!(m::LEDGER_OUTCOMES, "outcome" => outcome).increment(0);
    }
}
