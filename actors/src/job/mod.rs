//! `JobActor`: runs one job while this worker holds its lease (fencing token `token`).
//!
//! Life: load the latest snapshot plus later events and fold them (G5); recover the steps
//! an earlier incarnation left `running` as `runtime::recover` says (recovery.rs: re-invoke
//! pure/idempotent ones with the same key, ask side_effect ones' reconcile hooks, else
//! `outcome_unknown`, G2); then loop (drive.rs): decide, append the outcomes of finished
//! calls together with the `step_started` events of newly ready steps in ONE fenced append
//! (one durable round trip per step), and only after that append succeeds invoke the
//! started tools (step.rs). Which event an outcome or a command adds is decided by the pure
//! core (`runtime::outcome`, `runtime::commands`); this actor carries it out. Writes never
//! interleave (`ctx.wait`, and the phase's `writing`). A fenced append means the lease is
//! gone: the actor stops without calling anything. A tool panic is recorded, then the actor
//! stops as crashed so the registry restarts it from storage.
//!
//! Where the actor is in its life is its `Phase` (phase.rs: Loading → Active → Stopping,
//! with the transitions documented there). Agent steps (agent.rs) decide in the same round
//! and append, and their model and tool calls are made the same way: only after their
//! started event is durable.

mod agent;
mod drive;
mod outbox;
mod phase;
mod recovery;
mod step;
mod telemetry;

use crate::clock::local_ms;
use crate::context::WorkerContext;
use crate::messages::{ActorGone, CheckCommands, CrashReason, DrainJob, Exit, Revoke};
use crate::metrics as metric;
use actix::prelude::*;
use aetheris_runtime::{command_effect, Command, CommandEffect, JobId, JobState};
use aetheris_store::{
    load_job_state, state_from_load, CommandBody, JobLoad, LoadedJob, StoreError, StoredCommand,
};
use outbox::Outbox;
use phase::{Active, Phase};
use std::time::{Duration, Instant};

/// Sends `ActorGone` when the actor is dropped — including when a panic unwinds it, which
/// actix would otherwise swallow (DESIGN §3 caveats).
struct GoneGuard {
    registry: Recipient<ActorGone>,
    job_id: JobId,
    token: u64,
    exit: Option<Exit>,
}

impl Drop for GoneGuard {
    fn drop(&mut self) {
        let exit = self
            .exit
            .take()
            .unwrap_or(Exit::Crashed(CrashReason::Panic));
        self.registry
            .do_send(ActorGone::new(self.job_id, self.token, exit));
    }
}

pub struct JobActor {
    job_id: JobId,
    token: u64,
    worker: WorkerContext,
    phase: Phase,
    /// What this incarnation writes next.
    outbox: Outbox,
    last_snapshot_seq: u64,
    /// store clock − local clock, learned from each append's recorded time.
    clock_offset_ms: i64,
    /// The timer of a wake-up due soon, waited for in the actor (see drive.rs).
    wake: Option<SpawnHandle>,
    /// The load the claim brought, taken by `started` (then the store is not read).
    preload: Option<JobLoad>,
    /// The spans of the steps running in this incarnation (telemetry.rs).
    step_spans: telemetry::StepSpans,
    guard: GoneGuard,
}

impl JobActor {
    pub fn new(
        job_id: JobId,
        token: u64,
        worker: WorkerContext,
        registry: Recipient<ActorGone>,
    ) -> Self {
        JobActor {
            job_id,
            token,
            worker,
            phase: Phase::Loading,
            outbox: Outbox::default(),
            last_snapshot_seq: 0,
            clock_offset_ms: 0,
            wake: None,
            preload: None,
            step_spans: telemetry::StepSpans::default(),
            guard: GoneGuard {
                registry,
                job_id,
                token,
                exit: None,
            },
        }
    }

    /// Starts from `preload` (see `RunJob::preload`) instead of reading the store.
    pub fn with_preload(mut self, preload: Option<JobLoad>) -> Self {
        self.preload = preload;
        self
    }

    /// What a tool receives for one attempt: the call's key and this actor's fencing
    /// token, so a downstream service can deduplicate and refuse zombies (G2, G3), and
    /// the call's trace.
    fn invocation(
        &self,
        state: &JobState,
        call: &aetheris_runtime::outcome::Attempt,
        args: serde_json::Value,
        trace: crate::trace::CallTrace,
    ) -> crate::tools::Invocation {
        crate::tools::Invocation {
            job_id: self.job_id,
            tenant: state.tenant.clone(),
            step: call.step.clone(),
            attempt: call.attempt,
            invocation_key: call.invocation_key.clone(),
            fencing_token: self.token,
            effect: call.effect,
            args,
            trace,
        }
    }

    /// The store's clock, estimated from the local one.
    fn now_est(&self) -> i64 {
        local_ms() + self.clock_offset_ms
    }

    fn active(&self) -> Option<&Active> {
        self.phase.active()
    }

    fn state(&self) -> Option<&JobState> {
        self.active().map(|active| &active.state)
    }

    fn set_writing(&mut self, writing: bool) {
        if let Some(active) = self.phase.active_mut() {
            active.writing = writing;
        }
    }

    /// Any phase → Stopping. The first exit given is the one the registry hears.
    fn exit(&mut self, exit: Exit, ctx: &mut Context<Self>) {
        if self.guard.exit.is_none() {
            self.guard.exit = Some(exit);
        }
        self.phase.stop();
        ctx.stop();
    }

    fn fail_store(&mut self, error: StoreError, ctx: &mut Context<Self>) {
        match error {
            StoreError::Fenced { .. } => {
                metrics::counter!(metric::LEASE_LOSSES, "reason" => "fenced").increment(1);
                self.exit(Exit::LeaseLost, ctx)
            }
            StoreError::NotFound(_) => self.exit(Exit::Gone, ctx),
            other => {
                tracing::warn!(job = %self.job_id, error = %other, "store error; restarting job actor from storage");
                self.exit(Exit::Crashed(CrashReason::Store(store_reason(&other))), ctx)
            }
        }
    }

    /// Loading → Active (or Stopping): recover unfinished calls, apply the commands
    /// stored while no actor ran, then drive.
    fn on_loaded(
        &mut self,
        loaded: Result<Option<LoadedJob>, StoreError>,
        loading_since: Instant,
        ctx: &mut Context<Self>,
    ) {
        let loaded = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return self.exit(Exit::Gone, ctx),
            Err(error) => {
                tracing::warn!(job = %self.job_id, error = %error, "loading job failed");
                return self.exit(Exit::Crashed(CrashReason::Load), ctx);
            }
        };
        metrics::histogram!(metric::REPLAY_DURATION).record(loading_since.elapsed().as_secs_f64());
        metrics::counter!(metric::REPLAY_EVENTS).increment(loaded.events_replayed as u64);
        self.last_snapshot_seq = loaded.snapshot_seq;
        if loaded.state.status.is_terminal() {
            return self.exit(Exit::Gone, ctx);
        }
        self.phase.activate(loaded.state);
        self.recover_on_load(ctx);
        // Commands stored while no actor ran (e.g. a cancel that woke a waiting job) are
        // applied before anything else is decided.
        self.apply_commands(loaded.pending_commands, ctx);
        // Fallback for command hints lost while disconnected.
        ctx.run_interval(Duration::from_secs(2), |act, ctx| act.check_commands(ctx));
    }

    /// Reads the job's unapplied commands and turns them into events (the fallback poll).
    fn check_commands(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(self.read_commands());
    }

    /// The read of `check_commands`, as a future that ends once the commands are applied
    /// (the registry waits for it before it asks again: see `CheckCommands`).
    fn read_commands(&mut self) -> ResponseActFuture<Self, ()> {
        if self.active().is_none() {
            return Box::pin(actix::fut::ready(()));
        }
        let (store, job) = (self.worker.store.clone(), self.job_id);
        Box::pin(
            actix::fut::wrap_future(async move { store.pending_commands(job).await }).map(
                |read, act: &mut JobActor, ctx| match read {
                    Ok(commands) => act.apply_commands(commands, ctx),
                    Err(error) => {
                        tracing::warn!(job = %act.job_id, error = %error, "reading commands failed")
                    }
                },
            ),
        )
    }

    /// Takes each command once and queues what `runtime::command_effect` says it adds,
    /// deciding each from the job as it will be with everything taken before it.
    fn apply_commands(&mut self, commands: Vec<StoredCommand>, ctx: &mut Context<Self>) {
        if self.active().is_none() {
            return;
        }
        for stored in commands {
            if !self.outbox.take_command(stored.id) {
                continue;
            }
            let Some(view) = self.projected(false) else {
                return self.exit(Exit::Crashed(CrashReason::Fold), ctx);
            };
            let cancelling = self.outbox.is_cancelling();
            let command = command_of(stored.body);
            match command_effect(&view, cancelling, stored.id, command) {
                CommandEffect::Append(event) => self.outbox.push_command_event(stored.id, event),
                CommandEffect::Cancel(event) => self.outbox.set_cancel(stored.id, event),
                CommandEffect::Ignore(why) => {
                    tracing::debug!(job = %self.job_id, command = stored.id, why = why.as_str(), "command adds no event");
                    self.outbox.mark_applied(stored.id)
                }
            }
        }
        if self.active().is_some_and(|active| !active.writing) {
            self.drive(ctx);
        }
    }
}

/// The store's command as the pure core's command rule takes it.
fn command_of(body: CommandBody) -> Command {
    match body {
        CommandBody::Cancel { by, reason } => Command::Cancel { by, reason },
        CommandBody::Signal {
            signal,
            signal_id,
            payload,
            by,
        } => Command::Signal {
            signal,
            signal_id,
            payload,
            by,
        },
        CommandBody::Confirm {
            step,
            outcome,
            output,
            by,
            note,
        } => Command::Confirm {
            step,
            outcome,
            output,
            by,
            note,
        },
    }
}

fn store_reason(error: &StoreError) -> &'static str {
    match error {
        StoreError::Fenced { .. } => "fenced",
        StoreError::SeqConflict { .. } => "seq_conflict",
        StoreError::NotFound(_) => "not_found",
        StoreError::Rejected(_) => "rejected",
        StoreError::Backend(_) | StoreError::Unavailable { .. } => "store_error",
        StoreError::Corrupt(_) => "corrupt",
        StoreError::Conflict(_) => "conflict",
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    // Alive job actors are counted by the registry, which also sees those a panic ended
    // (their `stopped` never runs).
    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.worker.store.clone();
        let job = self.job_id;
        let preload = self.preload.take();
        let loading_since = Instant::now();
        ctx.wait(
            // One store call (one round trip on PostgreSQL): on a loaded database each
            // round trip queues, and the job's first step waits for all of them.
            actix::fut::wrap_future(async move {
                match preload {
                    Some(load) => state_from_load(&store, job, load).await,
                    None => load_job_state(&store, job).await,
                }
            })
            .map(move |loaded, act: &mut JobActor, ctx| act.on_loaded(loaded, loading_since, ctx)),
        );
    }
}

impl Handler<CheckCommands> for JobActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: CheckCommands, _: &mut Context<Self>) -> Self::Result {
        self.read_commands()
    }
}

impl Handler<Revoke> for JobActor {
    type Result = ();
    fn handle(&mut self, _: Revoke, ctx: &mut Context<Self>) {
        self.exit(Exit::LeaseLost, ctx);
    }
}

impl Handler<DrainJob> for JobActor {
    type Result = ();
    fn handle(&mut self, _: DrainJob, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Loading => self.exit(Exit::Passivated, ctx),
            Phase::Active(_) => {
                self.phase.drain();
                self.drive(ctx);
            }
            Phase::Stopping => {}
        }
    }
}
