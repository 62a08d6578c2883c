//! `JobRegistry`: the supervisor of job actors. Owns their addresses, starts one per leased
//! job, and when one dies decides what happens: a finished or passivated job gives its
//! lease back; a lost lease is forgotten; a crash (panic, store error, tool panic) is
//! counted in `aetheris_actor_restarts_total{kind="job",reason}` and the actor is started
//! again from storage — never from the dead actor's memory — after a growing delay.
//! (actix's `Supervisor` ignores panics, so death is detected by a drop guard in the
//! actor; see job.rs.)

use crate::job::{CheckCommands, DrainJob, JobActor, Revoke};
use crate::lease::{LeaseDone, LeaseManager, WakeAt};
use crate::Shared;
use actix::prelude::*;
use aetheris_runtime::JobId;
use std::collections::HashMap;
use std::time::Duration;

/// Why a job actor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Finished,
    /// Nothing to do until a human or timer acts (or draining): give the lease back.
    Passivated,
    /// Parked with a timer due at this local time (ms): give the lease back and claim
    /// again when it is due.
    Parked(i64),
    LeaseLost,
    Crashed(String),
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ActorGone {
    pub job_id: JobId,
    pub token: u64,
    pub exit: Exit,
}

/// Run `job` under lease `token`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunJob {
    pub job_id: JobId,
    pub token: u64,
    /// The job's load, when the claim brought it (`Leases::claim_and_load`): the actor
    /// starts from it instead of reading the store.
    pub preload: Option<aetheris_store::JobLoad>,
}

/// The lease of `job` under `token` is gone: stop its actor now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokeJob {
    pub job_id: JobId,
    pub token: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLeaseManager(pub Addr<LeaseManager>);

/// A command was stored for this job.
#[derive(Message)]
#[rtype(result = "()")]
struct CommandFor(JobId);

impl Handler<CommandFor> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: CommandFor, _: &mut Context<Self>) {
        if let Some((addr, _)) = self.actors.get(&m.0) {
            addr.do_send(CheckCommands);
        }
    }
}

/// Ask every job actor to drain; answers how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct DrainAll;

/// How many job actors are alive.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ActiveCount;

/// Crash restarts of one job before the registry gives its lease back instead.
const MAX_CRASH_RESTARTS: u32 = 10;

pub struct JobRegistry {
    sh: Shared,
    actors: HashMap<JobId, (Addr<JobActor>, u64)>,
    crashes: HashMap<JobId, u32>,
    leases: Option<Addr<LeaseManager>>,
    draining: bool,
}

impl JobRegistry {
    pub fn new(sh: Shared) -> Self {
        JobRegistry {
            sh,
            actors: HashMap::new(),
            crashes: HashMap::new(),
            leases: None,
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
        let actor = JobActor::new(job_id, token, self.sh.clone(), ctx.address().recipient())
            .with_preload(preload);
        self.actors.insert(job_id, (actor.start(), token));
    }

    fn done(&self, job_id: JobId, token: u64, release: bool) {
        if let Some(l) = &self.leases {
            l.do_send(LeaseDone {
                job_id,
                token,
                release,
            });
        }
    }
}

impl Actor for JobRegistry {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sh
            .metrics
            .gauge_add("aetheris_actors_alive", &[("kind", "registry")], 1.0);
        // Route stored commands to the actor of their job, if this worker runs it. (A job
        // no one runs is made claimable by the store instead.)
        let mut hints = self.sh.store.command_hint();
        let me = ctx.address();
        actix::spawn(async move {
            loop {
                match hints.recv().await {
                    Ok(job) => me.do_send(CommandFor(job)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

impl Handler<SetLeaseManager> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: SetLeaseManager, _: &mut Context<Self>) {
        self.leases = Some(m.0);
    }
}

impl Handler<RunJob> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: RunJob, ctx: &mut Context<Self>) {
        if self.draining {
            self.done(m.job_id, m.token, true);
            return;
        }
        if let Some((addr, token)) = self.actors.get(&m.job_id) {
            if *token == m.token {
                return;
            }
            // A newer lease on the same job: the old incarnation must not write again.
            addr.do_send(Revoke);
        }
        self.spawn(m.job_id, m.token, m.preload, ctx);
    }
}

impl Handler<RevokeJob> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: RevokeJob, _: &mut Context<Self>) {
        if let Some((addr, token)) = self.actors.get(&m.job_id) {
            if *token == m.token {
                addr.do_send(Revoke);
            }
        }
    }
}

impl Handler<ActorGone> for JobRegistry {
    type Result = ();
    fn handle(&mut self, m: ActorGone, ctx: &mut Context<Self>) {
        match self.actors.get(&m.job_id) {
            Some((_, token)) if *token == m.token => {
                self.actors.remove(&m.job_id);
            }
            // An older incarnation replaced by a newer lease: nothing to do.
            _ => return,
        }
        match m.exit {
            Exit::Finished | Exit::Passivated => {
                self.crashes.remove(&m.job_id);
                self.done(m.job_id, m.token, true);
            }
            Exit::Parked(at) => {
                self.crashes.remove(&m.job_id);
                self.done(m.job_id, m.token, true);
                if let Some(l) = &self.leases {
                    l.do_send(WakeAt(at));
                }
            }
            Exit::LeaseLost => {
                self.crashes.remove(&m.job_id);
                self.done(m.job_id, m.token, false);
            }
            Exit::Crashed(reason) => {
                self.sh.metrics.inc(
                    "aetheris_actor_restarts_total",
                    &[("kind", "job"), ("reason", &reason)],
                );
                let n = self.crashes.entry(m.job_id).or_insert(0);
                *n += 1;
                if *n > MAX_CRASH_RESTARTS || self.draining {
                    tracing::error!(job = %m.job_id, %reason, "job actor keeps crashing; giving its lease back");
                    self.crashes.remove(&m.job_id);
                    self.done(m.job_id, m.token, true);
                    return;
                }
                tracing::warn!(job = %m.job_id, %reason, restart = *n, "job actor crashed; restarting from storage");
                let delay = Duration::from_millis((50u64 << (*n).min(6)).min(3_000));
                let (job, token) = (m.job_id, m.token);
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
        for (addr, _) in self.actors.values() {
            addr.do_send(DrainJob);
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
