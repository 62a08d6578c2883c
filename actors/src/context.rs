//! What the actors of one worker share, in a module that depends on none of them: the
//! worker's configuration (`WorkerConfig`) and its context (`WorkerContext`: store, tools,
//! configuration, the LLM runtime, the feed of finished jobs). worker.rs builds one and
//! starts the tree.

use crate::ratelimit::RateLimiters;
use crate::tools::ToolRegistry;
use aetheris_runtime::{JobId, JobStatus};
use aetheris_store::DynStore;
use std::sync::Arc;

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
    pub rate_limits: RateLimiters,
    /// Finished jobs a slow subscriber of the worker's feed may lag behind before it
    /// misses some (the bench sizes it above its job count).
    pub finished_buffer: usize,
    /// LLM providers for every tenant and per tenant (flags, providers file); tenants'
    /// own providers in the store lie over them.
    pub llm: crate::llm::LlmSettings,
    /// Retention: the collector of finished jobs this worker runs (`gc`).
    pub gc: crate::gc::GcConfig,
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
            rate_limits: RateLimiters::default(),
            finished_buffer: 4096,
            llm: crate::llm::LlmSettings::default(),
            gc: crate::gc::GcConfig::default(),
        }
    }
}

/// Every job this worker finishes, as it is recorded (for watchers and the bench).
pub type FinishedJobs = tokio::sync::broadcast::Sender<(JobId, JobStatus)>;

/// What every actor of one worker shares: its store, tools and configuration, and the
/// feed of finished jobs.
#[derive(Clone)]
pub struct WorkerContext {
    pub store: DynStore,
    /// Model calls of agent steps and of the `llm` tool.
    pub llm: crate::llm::LlmRuntime,
    pub tools: ToolRegistry,
    pub config: Arc<WorkerConfig>,
    pub finished: FinishedJobs,
}
