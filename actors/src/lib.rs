//! aetheris-actors: the actix actor tree of an Aetheris worker and the one start-up every
//! process uses to run it (`worker::Worker::start`).
//!
//! ```text
//! JobRegistry (supervisor) ── JobActor × active jobs
//! LeaseManager             ── claims, heartbeats, releases leases
//! ToolRegistry             ── ToolActor × tools
//! RateLimiters             ── RateLimiter × tenants
//! gc (a task)              ── deletes finished jobs past their tenant's retention
//! ```
//! Modules depend one way: `clock`, `metrics`, `supervision`, `tools`, `ratelimit`,
//! `presence`, `messages` and `context` (what the actors share) import no actor; `job`,
//! `lease` and `registry` talk only through the messages of `messages` (the registry
//! alone starts job actors); `worker` builds the tree. Metrics are declared once in `metrics`; `supervision` keeps the
//! process's figures of its actors (alive, restarts, panics, mailbox depth) that
//! `presence` announces with every heartbeat; `clock` is the local wall clock.
//!
//! Invariants kept here: a job actor calls a tool only after the `step_started` event is
//! durable and fenced (G2, G3); a dead actor — panic or error — is restarted from storage,
//! never from memory, and the restart is counted (`registry::restart_policy`); losing a
//! lease stops the actor before it calls anything external. Actix stays behind this
//! crate: runtime/ and store/ know nothing of it.

pub mod clock;
pub mod context;
pub mod failpoint;
pub mod gc;
pub mod job;
pub mod lease;
pub mod llm;
pub mod messages;
pub mod metrics;
pub mod presence;
pub mod ratelimit;
pub mod registry;
pub mod supervision;
pub mod tools;
pub mod trace;
pub mod worker;

pub use job::JobActor;
pub use lease::LeaseManager;
pub use messages::Drain;
pub use metrics::Metrics;
pub use registry::JobRegistry;
pub use tools::{
    EchoTool, HttpTool, Invocation, Reconciled, Tool, ToolError, ToolErrorKind, ToolRegistry,
};
pub use worker::{Worker, WorkerConfig, WorkerContext, WorkerHandle};
