//! `JobRegistry`: the supervisor of job actors. Owns their addresses, starts one per leased
//! job, and when one dies applies `restart_policy`: a finished or passivated job gives its
//! lease back; a lost lease is forgotten; a crash (panic, store error, tool panic) is
//! counted in `aetheris_actor_restarts_total{kind="job",reason}` (a handler's panic also
//! in `aetheris_actor_panics_total{kind="job"}`) and the actor is started
//! again from storage — never from the dead actor's memory — after a growing delay, until
//! it has crashed too often or the worker drains, when the lease is given back instead.
//! (actix's `Supervisor` ignores panics, so death is detected by a drop guard in the
//! actor; see job/mod.rs.) It also counts its job actors alive (supervision.rs): one up
//! when it starts one, one down when any incarnation reports it is gone — also after a
//! panic, when the actor's own `stopped` never runs.
//!
//! It sees the lease manager only as a `LeasePort` and routes stored commands to job
//! actors with at most one check per job under way: a flood of commands for one job (a
//! tenant can send any number) costs that job a few reads, never one message each.

use crate::context::WorkerContext;
use crate::job::JobActor;
use crate::messages::{
    to_job, ActiveCount, ActorGone, CheckCommands, CrashReason, DrainAll, DrainJob, Exit,
    LeaseDone, LeasePort, Revoke, RevokeJob, RunJob, WakeAt,
};
use crate::metrics as m;
use crate::supervision::{self, ActorKind, Queued};
use actix::prelude::*;
use aetheris_runtime::JobId;
use std::collections::HashMap;
use std::time::Duration;

/// Crash restarts of one job before the registry gives its lease back instead.
pub const MAX_CRASH_RESTARTS: u32 = 10;

/// What the registry does when a job actor has stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the lease back: the job was found finished or gone, or waits for a human or a
    /// signal.
    Release,
    /// Give the lease back, and claim again at this local time (a parked timer).
    ReleaseAndWakeAt(i64),
    /// Nothing to give back: the lease belongs to someone else already, or the append
    /// that finished the job gave it back. Forget the job.
    Forget,
    /// Start the actor again from storage after `delay`; this is crash restart `attempt`.
    Restart { attempt: u32, delay: Duration },
    /// Crashed too often, or while draining: give the lease back (a later claim, maybe on
    /// another worker, starts the job afresh from storage).
    GiveUp,
}

/// The restart rule: what to do when a job actor stopped with `exit`, having crashed
/// `crashes_so_far` times in a row before, on a worker that is (or is not) draining.
pub fn restart_policy(exit: &Exit, crashes_so_far: u32, draining: bool) -> Action {
    match exit {
        Exit::Gone | Exit::Passivated => Action::Release,
        Exit::LeaseLost | Exit::Finished => Action::Forget,
        Exit::Parked(at) => Action::ReleaseAndWakeAt(*at),
        Exit::Crashed(_) => {
            let attempt = crashes_so_far + 1;
            if attempt > MAX_CRASH_RESTARTS || draining {
                Action::GiveUp
            } else {
                Action::Restart {
                    attempt,
                    delay: restart_delay(attempt),
                }
            }
        }
    }
}

/// 100 ms before the first restart, doubling, at most 3 s.
fn restart_delay(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(3_000))
}

/// Whether a job actor is reading its commands because of new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum CommandCheck {
    #[default]
    Idle,
    Running,
    /// Running, and more commands arrived meanwhile: check once more when it is done.
    RunAgain,
}

impl CommandCheck {
    /// New commands were stored: whether to start a check now.
    fn request(&mut self) -> bool {
        match self {
            CommandCheck::Idle => {
                *self = CommandCheck::Running;
                true
            }
            CommandCheck::Running | CommandCheck::RunAgain => {
                *self = CommandCheck::RunAgain;
                false
            }
        }
    }

    /// A check is done: whether to start another (commands arrived while it ran).
    fn finished(&mut self) -> bool {
        let again = *self == CommandCheck::RunAgain;
        *self = if again {
            CommandCheck::Running
        } else {
            CommandCheck::Idle
        };
        again
    }
}

fn registry_ticket() -> Queued {
    Queued::new(ActorKind::Registry)
}

impl CommandFor {
    fn new(job: JobId) -> CommandFor {
        CommandFor {
            job,
            _queued: registry_ticket(),
        }
    }
}

/// The actor running a job under one lease.
struct Incarnation {
    addr: Addr<JobActor>,
    token: u64,
    commands: CommandCheck,
}

/// Commands were stored for this job (the store's hint).
#[derive(Message)]
#[rtype(result = "()")]
struct CommandFor {
    job: JobId,
    _queued: Queued,
}

/// Command hints were lost (the hint feed lagged): every job actor checks once.
#[derive(Message)]
#[rtype(result = "()")]
struct CommandsLost {
    _queued: Queued,
}

pub struct JobRegistry {
    ctx: WorkerContext,
    leases: LeasePort,
    actors: HashMap<JobId, Incarnation>,
    crashes: HashMap<JobId, u32>,
    draining: bool,
}

impl JobRegistry {
    pub fn new(ctx: WorkerContext, leases: LeasePort) -> Self {
        JobRegistry {
            ctx,
            leases,
            actors: HashMap::new(),
            crashes: HashMap::new(),
            draining: false,
        }
    }

    fn spawn(
        &mut self,
        job_id: JobId,
        token: u64,
        preload: Option<aetheris_store::JobLoad>,
        ctx: &mut Context<Self>,
    ) {
        let actor = JobActor::new(job_id, token, self.ctx.clone(), ctx.address().recipient())
            .with_preload(preload);
        supervision::alive_changed(ActorKind::Job, 1);
        self.actors.insert(
            job_id,
            Incarnation {
                addr: actor.start(),
                token,
                commands: CommandCheck::Idle,
            },
        );
    }

    fn done(&self, job_id: JobId, token: u64, release: bool) {
        self.leases
            .done
            .do_send(LeaseDone::new(job_id, token, release));
    }

    fn is_current(&self, job_id: JobId, token: u64) -> bool {
        self.actors.get(&job_id).is_some_and(|i| i.token == token)
    }

    /// Asks the actor of `job_id` to read its commands, unless a read is under way (then
    /// it reads once more when that one is done).
    fn check_commands(&mut self, job_id: JobId, ctx: &mut Context<Self>) {
        let Some(inc) = self.actors.get_mut(&job_id) else {
            return;
        };
        if !inc.commands.request() {
            return;
        }
        metrics::counter!(m::COMMAND_CHECKS).increment(1);
        let (addr, token) = (inc.addr.clone(), inc.token);
        ctx.spawn(
            actix::fut::wrap_future(addr.send(CheckCommands(to_job()))).map(
                move |_, act: &mut JobRegistry, ctx| {
                    let again = match act.actors.get_mut(&job_id) {
                        Some(inc) if inc.token == token => inc.commands.finished(),
                        _ => false,
                    };
                    if again {
                        act.send_check(job_id, ctx);
                    }
                },
            ),
        );
    }

    /// Starts the follow-up check `CommandCheck::finished` asked for.
    fn send_check(&mut self, job_id: JobId, ctx: &mut Context<Self>) {
        if let Some(inc) = self.actors.get_mut(&job_id) {
            // `finished` left it Running: let `check_commands` start it from Idle.
            inc.commands = CommandCheck::Idle;
        }
        self.check_commands(job_id, ctx);
    }
}

impl Actor for JobRegistry {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        supervision::started(ActorKind::Registry);
        // Route stored commands to the actor of their job, if this worker runs it. (A job
        // no one runs is made claimable by the store instead.) Each hint waits for the
        // registry to take it, so hints cannot pile up in its mailbox.
        let mut hints = self.ctx.store.command_hint();
        let me = ctx.address();
        actix::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let sent = match hints.recv().await {
                    Ok(job) => me.send(CommandFor::new(job)).await,
                    Err(RecvError::Lagged(_)) => {
                        me.send(CommandsLost {
                            _queued: registry_ticket(),
                        })
                        .await
                    }
                    Err(RecvError::Closed) => break,
                };
                if sent.is_err() {
                    break;
                }
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        supervision::stopped(ActorKind::Registry);
    }
}

impl Handler<CommandFor> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: CommandFor, ctx: &mut Context<Self>) {
        self.check_commands(m.job, ctx);
    }
}

impl Handler<CommandsLost> for JobRegistry {
    type Result = ();
    fn handle(&mut self, _: CommandsLost, ctx: &mut Context<Self>) {
        let jobs: Vec<JobId> = self.actors.keys().copied().collect();
        for job in jobs {
            self.check_commands(job, ctx);
        }
    }
}

impl Handler<RunJob> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: RunJob, ctx: &mut Context<Self>) {
        if self.draining {
            self.done(m.job_id, m.token, true);
            return;
        }
        if let Some(inc) = self.actors.get(&m.job_id) {
            if inc.token == m.token {
                return;
            }
            // A newer lease on the same job: the old incarnation must not write again.
            inc.addr.do_send(Revoke(to_job()));
        }
        self.spawn(m.job_id, m.token, m.preload, ctx);
    }
}

impl Handler<RevokeJob> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: RevokeJob, _: &mut Context<Self>) {
        if let Some(inc) = self.actors.get(&m.job_id).filter(|i| i.token == m.token) {
            inc.addr.do_send(Revoke(to_job()));
        }
    }
}

impl Handler<ActorGone> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: ActorGone, ctx: &mut Context<Self>) {
        // Every incarnation reports once, when it is dropped.
        supervision::alive_changed(ActorKind::Job, -1);
        // An older incarnation, replaced by a newer lease: nothing to do.
        if !self.is_current(m.job_id, m.token) {
            return;
        }
        self.actors.remove(&m.job_id);
        if let Exit::Crashed(reason) = &m.exit {
            if *reason == CrashReason::Panic {
                supervision::panicked(ActorKind::Job, reason.as_str(), None);
            }
            supervision::restarted(ActorKind::Job, reason.as_str());
        }
        let crashes = self.crashes.get(&m.job_id).copied().unwrap_or(0);
        let (job, token) = (m.job_id, m.token);
        match restart_policy(&m.exit, crashes, self.draining) {
            Action::Release => {
                self.crashes.remove(&job);
                self.done(job, token, true);
            }
            Action::ReleaseAndWakeAt(at) => {
                self.crashes.remove(&job);
                self.done(job, token, true);
                self.leases.wake.do_send(WakeAt::new(at));
            }
            Action::Forget => {
                self.crashes.remove(&job);
                self.done(job, token, false);
            }
            Action::GiveUp => {
                tracing::error!(job = %job, exit = ?m.exit, "job actor keeps crashing (or crashed while draining); giving its lease back");
                self.crashes.remove(&job);
                self.done(job, token, true);
            }
            Action::Restart { attempt, delay } => {
                tracing::warn!(job = %job, exit = ?m.exit, restart = attempt, "job actor crashed; restarting from storage");
                self.crashes.insert(job, attempt);
                ctx.run_later(delay, move |act, ctx| {
                    if !act.actors.contains_key(&job) && !act.draining {
                        act.spawn(job, token, None, ctx);
                    }
                });
            }
        }
    }
}

impl Handler<DrainAll> for JobRegistry {
    type Result = usize;
    fn handle(&mut self, _: DrainAll, _: &mut Context<Self>) -> usize {
        self.draining = true;
        for inc in self.actors.values() {
            inc.addr.do_send(DrainJob(to_job()));
        }
        self.actors.len()
    }
}

impl Handler<ActiveCount> for JobRegistry {
    type Result = usize;
    fn handle(&mut self, _: ActiveCount, _: &mut Context<Self>) -> usize {
        self.actors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::WorkerConfig;
    use crate::messages::CrashReason;
    use crate::tools::{Invocation, Tool, ToolError, ToolRegistry};
    use aetheris_runtime::{EffectClass, Plan};
    use aetheris_store::{DynStore, NewJob, RedbStore, RunningCaps};
    use serde_json::{json, Value};
    use std::sync::{Arc, Mutex};

    // --- the restart rule, one case per failure point --------------------------------

    fn crashed(reason: CrashReason) -> Exit {
        Exit::Crashed(reason)
    }

    #[test]
    fn a_panic_in_a_handler_restarts_the_actor_after_a_delay() {
        assert_eq!(
            restart_policy(&crashed(CrashReason::Panic), 0, false),
            Action::Restart {
                attempt: 1,
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn a_tool_panic_restarts_the_actor() {
        assert!(matches!(
            restart_policy(&crashed(CrashReason::ToolPanic), 2, false),
            Action::Restart { attempt: 3, .. }
        ));
    }

    #[test]
    fn a_store_error_restarts_the_actor_from_storage() {
        assert!(matches!(
            restart_policy(&crashed(CrashReason::Store("store_error")), 0, false),
            Action::Restart { attempt: 1, .. }
        ));
    }

    #[test]
    fn a_lost_lease_is_forgotten_not_released() {
        // Revoked by the heartbeat, or an append fenced by a newer token: both LeaseLost.
        assert_eq!(restart_policy(&Exit::LeaseLost, 0, false), Action::Forget);
        assert_eq!(restart_policy(&Exit::LeaseLost, 5, true), Action::Forget);
    }

    #[test]
    fn a_job_its_own_append_finished_releases_nothing() {
        // The finishing append gave the lease back in its transaction.
        assert_eq!(restart_policy(&Exit::Finished, 0, false), Action::Forget);
        assert_eq!(restart_policy(&Exit::Finished, 2, true), Action::Forget);
    }

    #[test]
    fn gone_passivated_and_parked_jobs_give_their_lease_back() {
        assert_eq!(restart_policy(&Exit::Gone, 3, false), Action::Release);
        assert_eq!(restart_policy(&Exit::Passivated, 0, true), Action::Release);
        assert_eq!(
            restart_policy(&Exit::Parked(42), 0, false),
            Action::ReleaseAndWakeAt(42)
        );
    }

    #[test]
    fn the_registry_gives_up_after_the_max_crash_restarts() {
        assert!(matches!(
            restart_policy(&crashed(CrashReason::Fold), MAX_CRASH_RESTARTS - 1, false),
            Action::Restart { attempt, .. } if attempt == MAX_CRASH_RESTARTS
        ));
        assert_eq!(
            restart_policy(&crashed(CrashReason::Fold), MAX_CRASH_RESTARTS, false),
            Action::GiveUp
        );
    }

    #[test]
    fn a_crash_while_draining_gives_the_lease_back_instead_of_restarting() {
        assert_eq!(
            restart_policy(&crashed(CrashReason::Panic), 0, true),
            Action::GiveUp
        );
    }

    #[test]
    fn a_stop_during_load_follows_why_it_stopped() {
        // Revoked while loading: the lease is gone. Drained while loading: passivated.
        // The load itself failing: a crash, restarted.
        assert_eq!(restart_policy(&Exit::LeaseLost, 0, false), Action::Forget);
        assert_eq!(restart_policy(&Exit::Passivated, 0, true), Action::Release);
        assert!(matches!(
            restart_policy(&crashed(CrashReason::Load), 0, false),
            Action::Restart { attempt: 1, .. }
        ));
    }

    #[test]
    fn restart_delays_grow_and_are_capped() {
        let delays: Vec<Duration> = (1..=MAX_CRASH_RESTARTS).map(restart_delay).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn a_flood_of_command_requests_starts_one_check_and_one_more() {
        let mut c = CommandCheck::default();
        let started = (0..1000).filter(|_| c.request()).count();
        assert_eq!(started, 1, "one check while one is under way");
        assert!(c.finished(), "commands arrived meanwhile: once more");
        assert!(!c.finished(), "and then no more");
        assert_eq!(c, CommandCheck::Idle);
        assert!(c.request());
        assert!(!c.finished(), "nothing arrived meanwhile");
    }

    // --- the registry against a stub lease manager ------------------------------------

    /// Stands in for the lease manager: records what the registry tells it.
    #[derive(Default)]
    struct StubLeases {
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Actor for StubLeases {
        type Context = Context<Self>;
    }

    impl Handler<LeaseDone> for StubLeases {
        type Result = ();
        fn handle(&mut self, m: LeaseDone, _: &mut Context<Self>) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("done release={}", m.release));
        }
    }

    impl Handler<WakeAt> for StubLeases {
        type Result = ();
        fn handle(&mut self, m: WakeAt, _: &mut Context<Self>) {
            self.seen.lock().unwrap().push(format!("wake {}", m.at_ms));
        }
    }

    /// Never answers (until the test ends): keeps its job's actor alive.
    struct Hang;

    #[async_trait::async_trait]
    impl Tool for Hang {
        fn effect(&self) -> EffectClass {
            EffectClass::Pure
        }
        async fn invoke(&self, _: Invocation) -> Result<Value, ToolError> {
            futures::future::pending().await
        }
    }

    struct Setup {
        registry: Addr<JobRegistry>,
        seen: Arc<Mutex<Vec<String>>>,
        store: DynStore,
        _dir: tempfile::TempDir,
    }

    /// A registry on a fresh embedded store whose lease manager is a stub.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let mut tools = ToolRegistry::with_builtins();
        tools.register("hang", Hang);
        let stub = StubLeases::default();
        let seen = stub.seen.clone();
        let stub = stub.start();
        let (finished, _) = tokio::sync::broadcast::channel(16);
        let ctx = WorkerContext {
            llm: crate::llm::LlmRuntime::new(
                Default::default(),
                Some(store.clone()),
                Default::default(),
            ),
            store: store.clone(),
            tools,
            config: Arc::new(WorkerConfig::default()),
            finished,
        };
        let registry = JobRegistry::new(ctx, LeasePort::of(&stub)).start();
        Setup {
            registry,
            seen,
            store,
            _dir: dir,
        }
    }

    /// Submits a job with `steps` and claims it: (job, fencing token).
    async fn claimed(store: &DynStore, steps: Value) -> (JobId, u64) {
        let plan: Plan = serde_json::from_value(json!({ "steps": steps })).unwrap();
        let (job, _) = store
            .submit(
                NewJob {
                    tenant: "t".into(),
                    idempotency_key: None,
                    plan,
                    input: Value::Null,
                },
                None,
            )
            .await
            .unwrap();
        let leases = store
            .claim_and_load("w", 60_000, 1, &RunningCaps::default())
            .await
            .unwrap();
        assert_eq!(leases.len(), 1);
        (job.job_id, leases[0].0.token)
    }

    async fn until_seen(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let now = seen.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    #[actix_rt::test]
    async fn a_job_that_finishes_is_done_and_its_append_gave_the_lease_back() {
        let s = setup();
        let (job, token) = claimed(&s.store, json!([{"id": "a", "tool": "echo"}])).await;
        s.registry.do_send(RunJob::new(job, token, None));
        // No release: the finishing append gave the lease back in its transaction, which
        // the holder's heartbeat reports as a finished job (kept, nothing to renew).
        assert_eq!(until_seen(&s.seen, 1).await, ["done release=false"]);
        assert_eq!(s.registry.send(ActiveCount::new()).await.unwrap(), 0);
        let kept = s
            .store
            .heartbeat("w", 60_000, &[(job, token)])
            .await
            .unwrap();
        assert_eq!(kept.len(), 1, "the holder's lease is reported, not lost");
        assert_eq!(
            kept[0].expires_at_ms, 0,
            "a finished job's lease has no expiry"
        );
    }

    #[actix_rt::test]
    async fn a_job_found_finished_gives_its_lease_back() {
        let s = setup();
        let (job, token) = claimed(&s.store, json!([{"id": "a", "tool": "echo"}])).await;
        s.registry.do_send(RunJob::new(job, token, None));
        assert_eq!(until_seen(&s.seen, 1).await, ["done release=false"]);
        // A later lease of the finished job (as if the finish raced a claim) finds it
        // finished when it loads, and gives that lease back.
        s.registry.do_send(RunJob::new(job, token + 1, None));
        assert_eq!(
            until_seen(&s.seen, 2).await,
            ["done release=false", "done release=true"]
        );
    }

    #[actix_rt::test]
    async fn a_parked_job_asks_to_be_woken_and_a_lost_lease_is_not_released() {
        let s = setup();
        let (job, token) = claimed(&s.store, json!([{"id": "h", "tool": "hang"}])).await;
        let run = || RunJob::new(job, token, None);
        let gone = |exit| ActorGone::new(job, token, exit);
        // Queued before the actor can run: the registry sees these exits first.
        s.registry.do_send(run());
        s.registry.do_send(gone(Exit::Parked(1234)));
        assert_eq!(
            until_seen(&s.seen, 2).await,
            ["done release=true", "wake 1234"]
        );
        s.registry.do_send(run());
        s.registry.do_send(gone(Exit::LeaseLost));
        assert_eq!(until_seen(&s.seen, 3).await[2], "done release=false");
        // A stale incarnation's exit (an older token) changes nothing.
        s.registry.do_send(run());
        s.registry
            .do_send(ActorGone::new(job, token - 1, Exit::Finished));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.seen.lock().unwrap().len(), 3);
        assert_eq!(s.registry.send(ActiveCount::new()).await.unwrap(), 1);
    }

    #[actix_rt::test]
    async fn a_draining_registry_releases_new_work_at_once() {
        let s = setup();
        assert_eq!(s.registry.send(DrainAll::new()).await.unwrap(), 0);
        let (job, token) = claimed(&s.store, json!([{"id": "a", "tool": "echo"}])).await;
        s.registry.do_send(RunJob::new(job, token, None));
        assert_eq!(until_seen(&s.seen, 1).await, ["done release=true"]);
        assert_eq!(s.registry.send(ActiveCount::new()).await.unwrap(), 0);
    }

    #[test]
    fn a_flood_of_commands_for_one_job_costs_it_a_few_reads() {
        // The registry's metrics land in a recorder of this thread (the actor system runs
        // on it), not in the process's.
        let recorder = crate::metrics::prometheus_builder().build_recorder();
        let handle = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        actix_rt::System::new().block_on(async {
            let s = setup();
            let (job, token) = claimed(&s.store, json!([{"id": "h", "tool": "hang"}])).await;
            s.registry.do_send(RunJob::new(job, token, None));
            // The actor runs (its step hangs), then 1000 commands arrive at once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(s.registry.send(ActiveCount::new()).await.unwrap(), 1);
            for _ in 0..1000 {
                s.registry.do_send(CommandFor::new(job));
            }
            // Every hint handled, every check answered.
            s.registry.send(ActiveCount::new()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let text = handle.render();
        let checks: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("aetheris_command_checks_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no command checks counted:\n{text}"));
        assert!(
            (1..=10).contains(&checks),
            "1000 commands cost {checks} checks"
        );
    }
}
