//! `JobActor`: runs one job while this worker holds its lease (token `t`).
//!
//! Life: load the latest snapshot plus later events and fold them (G5); recover steps left
//! `running` by an earlier incarnation (re-invoke pure/idempotent ones with the same key,
//! mark side_effect ones `outcome_unknown`, G2); then loop: decide, append the outcomes of
//! finished calls together with the `step_started` events of newly ready steps in ONE
//! fenced append (one durable round trip per step), and only after that append succeeds
//! invoke the started tools. Appends never interleave (`ctx.wait`). A fenced append means
//! the lease is gone: the actor stops without calling anything. A tool panic is recorded,
//! then the actor stops as crashed so the registry restarts it from storage.

use crate::clock::local_ms;
use crate::context::WorkerContext;
use crate::messages::{
    ActorGone, CheckCommands, CrashReason, DrainJob, Exit, Invoke, Reconcile, Revoke,
};
use crate::metrics as m;
use crate::tools::{Invocation, Reconciled, ToolError, ToolErrorKind};
use actix::prelude::*;
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::retry::backoff_ms;
use aetheris_runtime::template::resolve;
use aetheris_runtime::{
    decide, invocation_key, recover, EffectClass, EventBody, JobId, JobState, RecordedEvent,
    Recovery, StepStatus,
};
use aetheris_store::{load_job_state, state_from_load, Append, LoadedJob, StoreError};
use serde_json::Value;
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
        self.registry.do_send(ActorGone {
            job_id: self.job_id,
            token: self.token,
            exit,
        });
    }
}

pub struct JobActor {
    job_id: JobId,
    token: u64,
    sh: WorkerContext,
    state: Option<JobState>,
    /// Outcome events of finished calls not yet appended.
    pending: Vec<EventBody>,
    appending: bool,
    stopping: bool,
    /// Drain requested: start nothing new, record in-flight calls, then stop.
    draining: bool,
    /// Set when a tool panicked: stop as crashed once its outcome is durable.
    crash_after_flush: Option<CrashReason>,
    /// A cancel command to append after the pending outcomes (always last: terminal).
    cancel: Option<(u64, EventBody)>,
    /// Commands whose events are durable (or that need no event) and which must be
    /// marked applied.
    applied_commands: Vec<u64>,
    /// Commands whose events sit in `pending`.
    pending_command_ids: Vec<u64>,
    /// Every command id this incarnation has taken, so a re-read never applies one twice.
    taken_commands: std::collections::HashSet<u64>,
    last_snapshot_seq: u64,
    /// store clock − local clock, learned from each append's recorded time.
    clock_offset_ms: i64,
    wake: Option<SpawnHandle>,
    /// The load the claim brought, taken by `started` (then the store is not read).
    preload: Option<aetheris_store::JobLoad>,
    guard: GoneGuard,
}

/// A timer due within this long is waited for in the actor (lease kept); later ones park
/// the job.
const PARK_AFTER_MS: i64 = 1_000;

impl JobActor {
    pub fn new(
        job_id: JobId,
        token: u64,
        sh: WorkerContext,
        registry: Recipient<ActorGone>,
    ) -> Self {
        JobActor {
            job_id,
            token,
            sh,
            state: None,
            pending: Vec::new(),
            appending: false,
            stopping: false,
            draining: false,
            crash_after_flush: None,
            cancel: None,
            applied_commands: Vec::new(),
            pending_command_ids: Vec::new(),
            taken_commands: std::collections::HashSet::new(),
            last_snapshot_seq: 0,
            clock_offset_ms: 0,
            wake: None,
            preload: None,
            guard: GoneGuard {
                registry,
                job_id,
                token,
                exit: None,
            },
        }
    }

    /// Starts from `preload` (see `RunJob::preload`) instead of reading the store.
    pub fn with_preload(mut self, preload: Option<aetheris_store::JobLoad>) -> Self {
        self.preload = preload;
        self
    }

    fn now_est(&self) -> i64 {
        local_ms() + self.clock_offset_ms
    }

    fn exit(&mut self, exit: Exit, ctx: &mut Context<Self>) {
        if self.guard.exit.is_none() {
            self.guard.exit = Some(exit);
        }
        self.stopping = true;
        ctx.stop();
    }

    fn fail_store(&mut self, e: StoreError, ctx: &mut Context<Self>) {
        match e {
            StoreError::Fenced { .. } => {
                metrics::counter!(m::LEASE_LOSSES, "reason" => "fenced").increment(1);
                self.exit(Exit::LeaseLost, ctx)
            }
            StoreError::NotFound(_) => self.exit(Exit::Finished, ctx),
            other => {
                tracing::warn!(job = %self.job_id, error = %other, "store error; restarting job actor from storage");
                self.exit(Exit::Crashed(CrashReason::Store(store_reason(&other))), ctx)
            }
        }
    }

    /// The state with pending outcomes applied, to decide what starts next in the same
    /// append.
    fn tentative(&self) -> Option<JobState> {
        let mut t = self.state.clone()?;
        let now = self.now_est();
        for body in self
            .pending
            .iter()
            .chain(self.cancel.as_ref().map(|(_, e)| e))
        {
            let fake = RecordedEvent {
                job_id: self.job_id,
                seq: t.last_seq + 1,
                recorded_at_ms: now,
                body: body.clone(),
                prev_hash: [0; 32],
                hash: [0; 32],
            };
            if t.apply(&fake).is_err() {
                return None;
            }
        }
        Some(t)
    }

    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.appending || self.stopping || self.state.is_none() {
            return;
        }
        let Some(t) = self.tentative() else {
            self.exit(Exit::Crashed(CrashReason::Fold), ctx);
            return;
        };
        let now = self.now_est();
        let mut events = std::mem::take(&mut self.pending);
        self.applied_commands.append(&mut self.pending_command_ids);
        if let Some((id, cancel)) = self.cancel.take() {
            events.push(cancel);
            self.applied_commands.push(id);
        }
        let hold = self.crash_after_flush.is_some() || self.draining || t.status.is_terminal();
        let d = decide(&t, now, self.sh.config.max_parallel_steps);
        if !hold {
            if let Some(f) = d.finish {
                events.push(f);
            } else {
                events.extend(d.resolve);
                for step in d.start {
                    match self.start_event(&t, &step) {
                        Some(e) => events.push(e),
                        None => {
                            self.exit(Exit::Crashed(CrashReason::UnknownTool), ctx);
                            return;
                        }
                    }
                }
            }
        }
        if events.is_empty() {
            if t.status.is_terminal() {
                // Finished (or cancelled): stopping drops any in-flight call's future,
                // which is how a running tool is told to stop.
                self.exit(Exit::Finished, ctx);
                return;
            }
            let running = t.steps.values().any(|s| s.status == StepStatus::Running);
            if !running {
                if let Some(flush) = self.crash_after_flush.take() {
                    self.exit(Exit::Crashed(flush), ctx);
                } else if self.draining {
                    self.exit(Exit::Passivated, ctx);
                } else if !self.applied_commands.is_empty() {
                    // Commands that needed no event (duplicates, late confirms).
                    self.flush_applied(ctx);
                } else if let Some(at) = d.wake_at_ms.filter(|at| at - now <= PARK_AFTER_MS) {
                    // Due soon: keep the lease and wait here rather than park.
                    if let Some(h) = self.wake.take() {
                        ctx.cancel_future(h);
                    }
                    let delay = Duration::from_millis((at - now).max(1) as u64);
                    self.wake = Some(ctx.run_later(delay, |act, ctx| {
                        act.wake = None;
                        act.drive(ctx)
                    }));
                } else if t.status == aetheris_runtime::JobStatus::Waiting {
                    // Parked and nothing changed: hold nothing. With a timer, ask the
                    // lease manager to claim again when it is due (local clock).
                    match d.wake_at_ms {
                        Some(at) => self.exit(Exit::Parked(at - self.clock_offset_ms), ctx),
                        None => self.exit(Exit::Passivated, ctx),
                    }
                } else {
                    // Nothing running, nothing ready: park (a signal, a confirmation or
                    // the timer wakes it), then hold no actor and no lease.
                    self.append(
                        vec![EventBody::JobParked {
                            wake_at_ms: d.wake_at_ms,
                        }],
                        ctx,
                    );
                }
            }
            return;
        }
        self.append(events, ctx);
    }

    fn start_event(&self, t: &JobState, step: &str) -> Option<EventBody> {
        let spec = t.plan.step(step)?;
        if let Some(w) = &spec.wait {
            return Some(EventBody::WaitStarted {
                step: step.to_string(),
                timeout_ms: w.timeout.as_ref().map(|d| d.as_millis()),
            });
        }
        if let Some(d) = &spec.sleep {
            return Some(EventBody::SleepStarted {
                step: step.to_string(),
                duration_ms: d.as_millis(),
            });
        }
        let tool = spec.tool.clone()?;
        let effect = t.plan.effect_of(spec, &self.sh.tools);
        let st = t.steps.get(step)?;
        Some(EventBody::StepStarted {
            step: step.to_string(),
            attempt: st.attempt + 1,
            invocation_key: invocation_key(&t.tenant, self.job_id, step, 0),
            tool,
            effect,
            fencing_token: self.token,
        })
    }

    fn append(&mut self, events: Vec<EventBody>, ctx: &mut Context<Self>) {
        let Some(state) = &self.state else { return };
        let req = Append {
            job_id: self.job_id,
            token: self.token,
            expected_last_seq: state.last_seq,
            events,
        };
        self.send_append(req, Instant::now(), ctx);
    }

    /// Sends `req`. A transient store error (connection lost, database restarting) leaves
    /// the append's fate unknown, so the same append (same token, same expected seq) is
    /// sent again, with backoff, for up to one lease TTL: if the first one committed, the
    /// retry fails with a seq conflict and the actor restarts from storage, which has it;
    /// if the lease moved on, the retry is fenced. Nothing is written twice, and a call
    /// that finished is not turned into `outcome_unknown` by a database blip.
    fn send_append(&mut self, req: Append, first_try: Instant, ctx: &mut Context<Self>) {
        self.appending = true;
        let store = self.sh.store.clone();
        let again = req.clone();
        let started = Instant::now();
        let sent_at = local_ms();
        ctx.wait(
            actix::fut::wrap_future(async move { store.append(req).await }).map(
                move |res, act: &mut JobActor, ctx| {
                    act.appending = false;
                    metrics::histogram!(m::STORE_APPEND_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    let retry_for = Duration::from_millis(act.sh.config.lease_ttl_ms);
                    match res {
                        Ok(recorded) => act.on_appended(recorded, sent_at, ctx),
                        // Only a transient failure is retried: anything else (a refusal,
                        // a fenced token, a statement the server refuses) will not heal.
                        Err(e @ StoreError::Unavailable { .. })
                            if !act.stopping && first_try.elapsed() < retry_for =>
                        {
                            tracing::warn!(job = %act.job_id, error = %e, "append failed; retrying");
                            act.appending = true; // nothing else may append meanwhile
                            let delay = first_try
                                .elapsed()
                                .clamp(Duration::from_millis(20), Duration::from_millis(500));
                            ctx.run_later(delay, move |act, ctx| {
                                act.appending = false;
                                if !act.stopping {
                                    act.send_append(again, first_try, ctx);
                                }
                            });
                        }
                        Err(e) => act.fail_store(e, ctx),
                    }
                },
            ),
        );
    }

    fn on_appended(&mut self, recorded: Vec<RecordedEvent>, sent_at: i64, ctx: &mut Context<Self>) {
        if let Some(last) = recorded.last() {
            self.clock_offset_ms = last.recorded_at_ms - sent_at;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        for e in &recorded {
            if let Err(err) = state.apply(e) {
                tracing::error!(job = %self.job_id, error = %err, "appended event does not fold");
                self.exit(Exit::Crashed(CrashReason::Fold), ctx);
                return;
            }
        }
        for e in &recorded {
            match &e.body {
                EventBody::StepStarted {
                    step,
                    attempt,
                    invocation_key,
                    effect,
                    ..
                } => self.invoke(step.clone(), *attempt, invocation_key.clone(), *effect, ctx),
                EventBody::StepSucceeded { .. } => self.ledger_metric("succeeded"),
                EventBody::StepFailed { .. } => self.ledger_metric("failed"),
                EventBody::StepOutcomeUnknown { .. } => self.ledger_metric("outcome_unknown"),
                EventBody::JobSucceeded { .. }
                | EventBody::JobFailed { .. }
                | EventBody::JobCancelled { .. } => {
                    let status = self
                        .state
                        .as_ref()
                        .map(|s| s.status)
                        .unwrap_or(aetheris_runtime::JobStatus::Failed);
                    let _ = self.sh.finished.send((self.job_id, status));
                }
                _ => {}
            }
        }
        self.maybe_snapshot(ctx);
        if !self.applied_commands.is_empty() {
            self.flush_applied(ctx);
            return;
        }
        self.drive(ctx);
    }

    /// Marks applied commands (their events are durable), fenced, then drives on.
    fn flush_applied(&mut self, ctx: &mut Context<Self>) {
        {
            let ids = std::mem::take(&mut self.applied_commands);
            let (store, job, token) = (self.sh.store.clone(), self.job_id, self.token);
            self.appending = true;
            ctx.wait(
                actix::fut::wrap_future(async move {
                    store.mark_commands_applied(job, token, &ids).await
                })
                .map(|res, act: &mut JobActor, ctx| {
                    act.appending = false;
                    match res {
                        Ok(()) => act.drive(ctx),
                        Err(e) => act.fail_store(e, ctx),
                    }
                }),
            );
        }
    }

    /// Reads the job's unapplied commands and turns them into events (the fallback poll).
    fn check_commands(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(self.read_commands());
    }

    /// The read of `check_commands`, as a future that ends once the commands are applied
    /// (the registry waits for it before it asks again: see `CheckCommands`).
    fn read_commands(&mut self) -> ResponseActFuture<Self, ()> {
        if self.stopping || self.state.is_none() {
            return Box::pin(actix::fut::ready(()));
        }
        let (store, job) = (self.sh.store.clone(), self.job_id);
        Box::pin(
            actix::fut::wrap_future(async move { store.pending_commands(job).await }).map(
                |res, act: &mut JobActor, ctx| match res {
                    Ok(cmds) => act.apply_commands(cmds, ctx),
                    Err(e) => {
                        tracing::warn!(job = %act.job_id, error = %e, "reading commands failed")
                    }
                },
            ),
        )
    }

    fn apply_commands(
        &mut self,
        cmds: Vec<aetheris_store::StoredCommand>,
        ctx: &mut Context<Self>,
    ) {
        let terminal = self.state.as_ref().is_none_or(|s| s.status.is_terminal());
        for c in cmds {
            if !self.taken_commands.insert(c.id) {
                continue;
            }
            match c.body {
                aetheris_store::CommandBody::Cancel { by, reason } => {
                    if terminal || self.cancel.is_some() {
                        // Already finished or cancelling: nothing left to cancel.
                        if !self.applied_commands.contains(&c.id) {
                            self.applied_commands.push(c.id);
                        }
                    } else {
                        self.cancel = Some((
                            c.id,
                            EventBody::JobCancelled {
                                by,
                                reason,
                                command_id: c.id,
                            },
                        ));
                    }
                }
                aetheris_store::CommandBody::Signal {
                    signal,
                    signal_id,
                    payload,
                    by,
                } => {
                    let t = self.tentative();
                    let dup = t.as_ref().is_none_or(|t| t.signal_ids.contains(&signal_id));
                    if terminal || dup {
                        self.applied_commands.push(c.id); // applied once, by id
                    } else {
                        self.pending.push(EventBody::SignalReceived {
                            signal,
                            signal_id,
                            payload,
                            by,
                            command_id: c.id,
                        });
                        self.pending_command_ids.push(c.id);
                    }
                }
                aetheris_store::CommandBody::Confirm {
                    step,
                    outcome,
                    output,
                    by,
                    note,
                } => {
                    let t = self.tentative();
                    let unknown = t
                        .as_ref()
                        .and_then(|t| t.steps.get(&step))
                        .is_some_and(|s| s.status == StepStatus::OutcomeUnknown);
                    if terminal || !unknown {
                        self.applied_commands.push(c.id); // nothing to confirm any more
                    } else {
                        self.pending.push(EventBody::StepConfirmed {
                            step,
                            outcome,
                            output,
                            by,
                            note,
                            command_id: c.id,
                        });
                        self.pending_command_ids.push(c.id);
                    }
                }
            }
        }
        if !self.appending {
            self.drive(ctx);
        }
    }

    fn ledger_metric(&self, outcome: &'static str) {
        metrics::counter!(m::LEDGER_OUTCOMES, "outcome" => outcome).increment(1);
    }

    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = &self.state else { return };
        if state.last_seq < self.last_snapshot_seq + self.sh.config.snapshot_every {
            return;
        }
        let blob = match encode_versioned(SNAPSHOT_FORMAT, state) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(job = %self.job_id, error = %e, "snapshot encode failed");
                return;
            }
        };
        let seq = state.last_seq;
        self.last_snapshot_seq = seq;
        let (store, job, token) = (self.sh.store.clone(), self.job_id, self.token);
        ctx.spawn(actix::fut::wrap_future(async move {
            match store.put_snapshot(job, token, seq, blob).await {
                Ok(()) => metrics::counter!(m::SNAPSHOTS_WRITTEN).increment(1),
                Err(e) => tracing::warn!(job = %job, error = %e, "snapshot write failed"),
            }
        }));
    }

    fn invoke(
        &mut self,
        step: String,
        attempt: u32,
        key: String,
        effect: EffectClass,
        ctx: &mut Context<Self>,
    ) {
        let Some(state) = &self.state else { return };
        let Some(spec) = state.plan.step(&step) else {
            return;
        };
        let tool_name = spec.tool.clone().unwrap_or_default();
        let timeout = spec
            .timeout
            .as_ref()
            .map(|d| d.duration)
            .unwrap_or(Duration::from_millis(
                self.sh.config.default_step_timeout_ms,
            ));
        let args = match resolve(&spec.args, &state.input, &state.outputs()) {
            Ok(a) => a,
            Err(msg) => {
                self.pending.push(EventBody::StepFailed {
                    step,
                    attempt,
                    error: format!("arguments: {msg}"),
                    retryable: false,
                    retry_after_ms: None,
                });
                return;
            }
        };
        let Some(entry) = self.sh.tools.get(&tool_name).cloned() else {
            self.pending.push(EventBody::StepFailed {
                step,
                attempt,
                error: format!("tool {tool_name:?} is not registered on this worker"),
                retryable: false,
                retry_after_ms: None,
            });
            return;
        };
        let call = Invocation {
            job_id: self.job_id,
            tenant: state.tenant.clone(),
            step: step.clone(),
            attempt,
            invocation_key: key,
            fencing_token: self.token,
            effect,
            args,
        };
        let started = Instant::now();
        let limits = self.sh.config.rate_limits.clone();
        let (tenant, tool_for_limit) = (state.tenant.clone(), tool_name.clone());
        let fut = async move {
            // Over the tenant's tool-call rate the call waits its turn; it never fails.
            limits.tool_call(&tenant, &tool_for_limit).await;
            match tokio::time::timeout(timeout, entry.recipient.send(Invoke(call))).await {
                Ok(Ok(r)) => r,
                Ok(Err(mailbox)) => Err(ToolError::outcome_unknown(format!(
                    "tool actor unavailable: {mailbox}"
                ))),
                Err(_) => Err(ToolError::outcome_unknown(format!(
                    "timed out after {}ms",
                    timeout.as_millis()
                ))),
            }
        };
        ctx.spawn(
            actix::fut::wrap_future(fut).map(move |res, act: &mut JobActor, ctx| {
                act.on_result(step, attempt, effect, &tool_name, res, started, ctx)
            }),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_result(
        &mut self,
        step: String,
        attempt: u32,
        effect: EffectClass,
        tool: &str,
        res: Result<Value, ToolError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        if self.stopping {
            return; // stopping: the next incarnation recovers this step from the ledger
        }
        metrics::histogram!(m::STEP_DURATION, "tool" => tool.to_string())
            .record(started.elapsed().as_secs_f64());
        let policy = self
            .state
            .as_ref()
            .and_then(|s| s.plan.step(&step))
            .map(|s| s.retry_policy())
            .unwrap_or_default();
        let retry_or_fail = |error: String| {
            let retry_after_ms = (attempt < policy.max_attempts)
                .then(|| backoff_ms(&policy, attempt, rand::random::<f64>()));
            EventBody::StepFailed {
                step: step.clone(),
                attempt,
                error,
                retryable: true,
                retry_after_ms,
            }
        };
        let event = match res {
            Ok(output) => {
                metrics::counter!(m::TOOL_CALLS, "tool" => tool.to_string(), "outcome" => "succeeded")
                    .increment(1);
                EventBody::StepSucceeded {
                    step: step.clone(),
                    attempt,
                    output,
                }
            }
            Err(e) => {
                if e.panicked {
                    metrics::counter!(m::ACTOR_PANICS, "kind" => "tool", "reason" => "panic")
                        .increment(1);
                    self.crash_after_flush = Some(CrashReason::ToolPanic);
                }
                let outcome = match e.kind {
                    ToolErrorKind::Retryable => "retryable_error",
                    ToolErrorKind::Permanent => "permanent_error",
                    ToolErrorKind::OutcomeUnknown => "outcome_unknown",
                };
                metrics::counter!(m::TOOL_CALLS, "tool" => tool.to_string(), "outcome" => outcome)
                    .increment(1);
                match e.kind {
                    ToolErrorKind::Permanent => EventBody::StepFailed {
                        step: step.clone(),
                        attempt,
                        error: e.message,
                        retryable: false,
                        retry_after_ms: None,
                    },
                    ToolErrorKind::OutcomeUnknown if !effect.reinvocable() => {
                        EventBody::StepOutcomeUnknown {
                            step: step.clone(),
                            attempt,
                            reason: e.message,
                        }
                    }
                    _ => retry_or_fail(e.message),
                }
            }
        };
        self.pending.push(event);
        self.drive(ctx);
    }

    fn recovery_events(&self, state: &JobState) -> Vec<EventBody> {
        recover(state)
            .into_iter()
            .filter_map(|r| match r {
                Recovery::Reinvoke { step } => {
                    let st = state.steps.get(&step)?;
                    let spec = state.plan.step(&step)?;
                    Some(EventBody::StepStarted {
                        invocation_key: st.invocation_key.clone()?,
                        attempt: st.attempt,
                        tool: spec.tool.clone()?,
                        effect: st.effect?,
                        fencing_token: self.token,
                        step,
                    })
                }
                // side_effect: first asked of the tool's reconcile hook (see `reconcile`).
                Recovery::OutcomeUnknown { .. } => None,
            })
            .collect()
    }

    /// G2 for side_effect steps found started without a result: ask each tool's
    /// `reconcile` hook, by invocation key, what happened; a tool that cannot tell (the
    /// default) leaves the step `outcome_unknown` for a human. Blocks the actor until
    /// answered (bounded), then drives on.
    fn reconcile(&mut self, state: &JobState, ctx: &mut Context<Self>) {
        let mut asks = Vec::new();
        for r in recover(state) {
            let Recovery::OutcomeUnknown { step } = r else {
                continue;
            };
            let Some(st) = state.steps.get(&step) else {
                continue;
            };
            let unknown = EventBody::StepOutcomeUnknown {
                step: step.clone(),
                attempt: st.attempt,
                reason: "started by an earlier incarnation that stopped before recording a result"
                    .into(),
            };
            let tool = state
                .plan
                .step(&step)
                .and_then(|s| s.tool.clone())
                .unwrap_or_default();
            let (Some(entry), Some(key)) =
                (self.sh.tools.get(&tool).cloned(), st.invocation_key.clone())
            else {
                self.pending.push(unknown);
                continue;
            };
            let args = state
                .plan
                .step(&step)
                .and_then(|s| resolve(&s.args, &state.input, &state.outputs()).ok())
                .unwrap_or(Value::Null);
            let call = Invocation {
                job_id: self.job_id,
                tenant: state.tenant.clone(),
                step: step.clone(),
                attempt: st.attempt,
                invocation_key: key,
                fencing_token: self.token,
                effect: st.effect.unwrap_or(EffectClass::UNKNOWN_DEFAULT),
                args,
            };
            let max_attempts = state
                .plan
                .step(&step)
                .map(|s| s.retry_policy().max_attempts)
                .unwrap_or(1);
            asks.push((entry, call, unknown, max_attempts));
        }
        if asks.is_empty() {
            return;
        }
        let fut = futures::future::join_all(asks.into_iter().map(
            |(entry, call, unknown, max)| async move {
                let (step, attempt) = (call.step.clone(), call.attempt);
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    entry.reconcile.send(Reconcile(call)),
                )
                .await;
                match answer {
                    Ok(Ok(Some(Reconciled::Succeeded(output)))) => EventBody::StepSucceeded {
                        step,
                        attempt,
                        output,
                    },
                    Ok(Ok(Some(Reconciled::NotExecuted))) => EventBody::StepFailed {
                        step,
                        attempt,
                        error: "reconciled: the call was not executed".into(),
                        retryable: true,
                        retry_after_ms: (attempt < max).then_some(0),
                    },
                    _ => unknown,
                }
            },
        ));
        self.appending = true; // nothing else may append until the answers are in
        ctx.wait(
            actix::fut::wrap_future(fut).map(|events, act: &mut JobActor, ctx| {
                act.appending = false;
                act.pending.extend(events);
                act.drive(ctx);
            }),
        );
    }
}

fn store_reason(e: &StoreError) -> &'static str {
    match e {
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

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::ACTORS_ALIVE, "kind" => "job").increment(1.0);
        let store = self.sh.store.clone();
        let job = self.job_id;
        let preload = self.preload.take();
        let t0 = Instant::now();
        ctx.wait(
            // One store call (one round trip on PostgreSQL): on a loaded database each
            // round trip queues, and the job's first step waits for all of them.
            actix::fut::wrap_future(async move {
                match preload {
                    Some(load) => state_from_load(&store, job, load).await,
                    None => load_job_state(&store, job).await,
                }
            })
            .map(move |res, act: &mut JobActor, ctx| match res {
                Ok(Some(LoadedJob {
                    state,
                    snapshot_seq: snap_seq,
                    events_replayed: replayed,
                    pending_commands: cmds,
                })) => {
                    metrics::histogram!(m::REPLAY_DURATION).record(t0.elapsed().as_secs_f64());
                    metrics::counter!(m::REPLAY_EVENTS).increment(replayed as u64);
                    act.last_snapshot_seq = snap_seq;
                    if state.status.is_terminal() {
                        act.exit(Exit::Finished, ctx);
                        return;
                    }
                    act.pending = act.recovery_events(&state);
                    act.reconcile(&state, ctx);
                    act.state = Some(state);
                    // Commands stored while no actor ran (e.g. a cancel that woke a
                    // waiting job) are applied before anything else is decided.
                    act.apply_commands(cmds, ctx);
                    // Fallback for command hints lost while disconnected.
                    ctx.run_interval(Duration::from_secs(2), |act, ctx| act.check_commands(ctx));
                }
                Ok(None) => act.exit(Exit::Finished, ctx),
                Err(e) => {
                    tracing::warn!(job = %act.job_id, error = %e, "loading job failed");
                    act.exit(Exit::Crashed(CrashReason::Load), ctx)
                }
            }),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::ACTORS_ALIVE, "kind" => "job").decrement(1.0);
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
        self.draining = true;
        if self.state.is_none() {
            self.exit(Exit::Passivated, ctx);
        } else {
            self.drive(ctx);
        }
    }
}
