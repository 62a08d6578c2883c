//! Every message between the worker's actors, in one module that imports none of them:
//! the lease manager, the registry and the job actors each depend on this module, never on
//! each other's, so there is no import circle and each sees the others only as the
//! `Recipient`s of a port (`RegistryPort`, `LeasePort`). That is what lets the tree be
//! built in one pass (see worker.rs) and lets a test stand a stub in for any actor.
//!
//! ```text
//! LeaseManager ──RunJob, RevokeJob, DrainAll, ActiveCount──▶ JobRegistry
//! JobRegistry  ──LeaseDone, WakeAt─────────────────────────▶ LeaseManager
//! JobRegistry  ──Revoke, DrainJob, CheckCommands───────────▶ JobActor
//! JobActor     ──ActorGone { exit }────────────────────────▶ JobRegistry
//! JobActor     ──Invoke, Reconcile─────────────────────────▶ ToolActor (tools.rs)
//! process      ──Drain { grace }───────────────────────────▶ LeaseManager
//! ```
//!
//! Invariants: a crash reason is a closed set (`CrashReason`), because it becomes the
//! `reason` label of `aetheris_actor_restarts_total`; labels stay bounded. Every message
//! to an actor of the tree carries a `Queued` ticket for its receiver's kind, made by its
//! constructor, so the kind's mailbox depth counts it until it is handled or dropped
//! (supervision.rs).

use crate::supervision::{ActorKind, Queued};
use actix::dev::ToEnvelope;
use actix::prelude::*;
use aetheris_runtime::JobId;
use std::time::Duration;

/// The tool actors' messages live with the tool types they carry (tools.rs); they are
/// named here too so this module lists every message.
pub use crate::tools::{Invoke, Reconcile};

// --- lease manager → registry -----------------------------------------------------------

/// Run `job_id` under lease `token`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunJob {
    pub job_id: JobId,
    pub token: u64,
    /// The job's load, when the claim brought it (`Store::claim_and_load`): the actor
    /// starts from it instead of reading the store.
    pub preload: Option<aetheris_store::JobLoad>,
    pub queued: Queued,
}

impl RunJob {
    pub fn new(job_id: JobId, token: u64, preload: Option<aetheris_store::JobLoad>) -> RunJob {
        RunJob {
            job_id,
            token,
            preload,
            queued: Queued::new(ActorKind::Registry),
        }
    }
}

/// The lease of `job_id` under `token` is gone: stop its actor now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeJob {
    pub job_id: JobId,
    pub token: u64,
    pub queued: Queued,
}

impl RevokeJob {
    pub fn new(job_id: JobId, token: u64) -> RevokeJob {
        RevokeJob {
            job_id,
            token,
            queued: Queued::new(ActorKind::Registry),
        }
    }
}

/// Ask every job actor to drain; answers how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct DrainAll(pub Queued);

impl DrainAll {
    pub fn new() -> DrainAll {
        DrainAll(Queued::new(ActorKind::Registry))
    }
}

impl Default for DrainAll {
    fn default() -> Self {
        DrainAll::new()
    }
}

/// How many job actors are alive.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ActiveCount(pub Queued);

impl ActiveCount {
    pub fn new() -> ActiveCount {
        ActiveCount(Queued::new(ActorKind::Registry))
    }
}

impl Default for ActiveCount {
    fn default() -> Self {
        ActiveCount::new()
    }
}

// --- registry → lease manager -----------------------------------------------------------

/// The actor of `job_id` under `token` is gone.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LeaseDone {
    pub job_id: JobId,
    pub token: u64,
    /// Give the lease back in the store (false when it is already lost).
    pub release: bool,
    pub queued: Queued,
}

impl LeaseDone {
    pub fn new(job_id: JobId, token: u64, release: bool) -> LeaseDone {
        LeaseDone {
            job_id,
            token,
            release,
            queued: Queued::new(ActorKind::LeaseManager),
        }
    }
}

/// A job this worker parked is due at this local time (ms): claim then, so durable timers
/// fire promptly rather than at the next poll (the poll still covers other workers' and
/// earlier processes' timers).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct WakeAt {
    pub at_ms: i64,
    pub queued: Queued,
}

impl WakeAt {
    pub fn new(at_ms: i64) -> WakeAt {
        WakeAt {
            at_ms,
            queued: Queued::new(ActorKind::LeaseManager),
        }
    }
}

// --- job actor → registry ---------------------------------------------------------------

/// Why a job actor crashed. A closed set: it is the `reason` label of the restart counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashReason {
    /// A handler panicked (the actor's drop guard reports it).
    Panic,
    /// A tool panicked; the actor recorded the outcome, then stopped as crashed.
    ToolPanic,
    /// The job's events do not fold into a state.
    Fold,
    /// Loading the job's state from the store failed.
    Load,
    /// The plan names a tool this worker does not have.
    UnknownTool,
    /// A store call failed; the text names the store error's kind (a fixed set).
    Store(&'static str),
}

impl CrashReason {
    /// Every reason that does not come from a store error.
    pub const FIXED: [CrashReason; 5] = [
        CrashReason::Panic,
        CrashReason::ToolPanic,
        CrashReason::Fold,
        CrashReason::Load,
        CrashReason::UnknownTool,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CrashReason::Panic => "panic",
            CrashReason::ToolPanic => "tool_panic",
            CrashReason::Fold => "fold",
            CrashReason::Load => "load",
            CrashReason::UnknownTool => "unknown_tool",
            CrashReason::Store(kind) => kind,
        }
    }
}

impl std::fmt::Display for CrashReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job actor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// This incarnation's append finished (or cancelled) the job. That append gave the
    /// lease back in its own transaction (the store's contract: `JobLog::append_many`), so
    /// there is nothing to release: one write per job fewer than a release.
    Finished,
    /// The job was already finished, or no longer exists, when this incarnation looked:
    /// give the lease back.
    Gone,
    /// Nothing to do until a human or timer acts (or draining): give the lease back.
    Passivated,
    /// Parked with a timer due at this local time (ms): give the lease back and claim
    /// again when it is due.
    Parked(i64),
    /// Revoked, or an append was fenced: the lease belongs to someone else now.
    LeaseLost,
    Crashed(CrashReason),
}

/// A job actor stopped, for whatever reason (sent by its drop guard, so also on panic).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ActorGone {
    pub job_id: JobId,
    pub token: u64,
    pub exit: Exit,
    pub queued: Queued,
}

impl ActorGone {
    pub fn new(job_id: JobId, token: u64, exit: Exit) -> ActorGone {
        ActorGone {
            job_id,
            token,
            exit,
            queued: Queued::new(ActorKind::Registry),
        }
    }
}

// --- registry → job actor ---------------------------------------------------------------

/// The lease is gone: stop at once, calling nothing more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoke(pub Queued);

/// Graceful drain: start nothing new, finish in-flight calls, record them, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainJob(pub Queued);

/// Commands were stored for this job: read and apply them. Answered once the read is
/// done, so the registry can keep at most one check per job under way (coalescing a
/// flood of commands, see registry.rs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckCommands(pub Queued);

/// A ticket for a message to a job actor.
pub fn to_job() -> Queued {
    Queued::new(ActorKind::Job)
}

// --- process → lease manager ------------------------------------------------------------

/// Graceful shutdown: resolves when every lease is released (or `grace` ran out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: Duration,
    pub queued: Queued,
}

impl Drain {
    pub fn new(grace: Duration) -> Drain {
        Drain {
            grace,
            queued: Queued::new(ActorKind::LeaseManager),
        }
    }
}

// --- ports ------------------------------------------------------------------------------

/// The registry as the lease manager sees it.
#[derive(Clone)]
pub struct RegistryPort {
    pub run: Recipient<RunJob>,
    pub revoke: Recipient<RevokeJob>,
    pub drain: Recipient<DrainAll>,
    pub active: Recipient<ActiveCount>,
}

impl RegistryPort {
    /// The port of any actor that handles the registry's messages.
    pub fn of<A>(addr: &Addr<A>) -> RegistryPort
    where
        A: Actor + Handler<RunJob> + Handler<RevokeJob> + Handler<DrainAll> + Handler<ActiveCount>,
        A::Context: ToEnvelope<A, RunJob>
            + ToEnvelope<A, RevokeJob>
            + ToEnvelope<A, DrainAll>
            + ToEnvelope<A, ActiveCount>,
    {
        RegistryPort {
            run: addr.clone().recipient(),
            revoke: addr.clone().recipient(),
            drain: addr.clone().recipient(),
            active: addr.clone().recipient(),
        }
    }
}

/// The lease manager as the registry sees it.
#[derive(Clone)]
pub struct LeasePort {
    pub done: Recipient<LeaseDone>,
    pub wake: Recipient<WakeAt>,
}

impl LeasePort {
    /// The port of any actor that handles the lease manager's messages.
    pub fn of<A>(addr: &Addr<A>) -> LeasePort
    where
        A: Actor + Handler<LeaseDone> + Handler<WakeAt>,
        A::Context: ToEnvelope<A, LeaseDone> + ToEnvelope<A, WakeAt>,
    {
        LeasePort {
            done: addr.clone().recipient(),
            wake: addr.clone().recipient(),
        }
    }
}
