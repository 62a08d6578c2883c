//! The job actor's loop: decide from the state the pending events lead to, append those
//! events together with what the decision starts in one fenced append, then act on what was
//! recorded (call started tools, report the end of the job) and decide again. When there is
//! nothing to append the actor finishes, stops (drain, crash), waits for a timer due soon,
//! or parks the job.
//!
//! Invariant kept here (G2, G3): a tool is called only for a `step_started` the store has
//! recorded under this actor's token; an append's fate unknown (the store unreachable) is
//! settled by sending the very same append again, never a different one.

use super::phase::Mode;
use super::JobActor;
use crate::clock::local_ms;
use crate::messages::{CrashReason, Exit};
use crate::metrics as metric;
use actix::prelude::*;
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{
    decide, invocation_key, Attempt, Decision, EventBody, JobState, JobStatus, RecordedEvent,
};
use aetheris_store::{Append, StoreError};
use std::time::{Duration, Instant};

/// A timer due within this long is waited for in the actor (lease kept); later ones park
/// the job.
const PARK_AFTER_MS: i64 = 1_000;

/// What settling needs of the decided-from state (so the state need not outlive the
/// decision: it may be borrowed from the actor).
#[derive(Debug, Clone, Copy)]
struct Settled {
    status: JobStatus,
    /// A call is in flight: its outcome drives again.
    in_flight: bool,
}

impl Settled {
    fn of(state: &JobState) -> Settled {
        Settled {
            status: state.status,
            in_flight: state.steps.values().any(|s| s.in_flight()),
        }
    }
}

impl JobActor {
    /// The state once the pending events (and, `with_cancel`, a taken cancel) are appended:
    /// what the next decision is made from. `None` if they do not fold, or the actor is not
    /// active.
    pub(super) fn projected(&self, with_cancel: bool) -> Option<JobState> {
        let state = self.state()?;
        state
            .projected(self.outbox.pending(with_cancel), self.now_est())
            .ok()
    }

    /// Appends what is pending plus what the decision adds; with nothing to append, settles.
    pub(super) fn drive(&mut self, ctx: &mut Context<Self>) {
        let Some(mode) = self
            .active()
            .filter(|active| !active.writing)
            .map(|active| active.mode)
        else {
            return;
        };
        // With nothing pending (as after every append, while the started call runs) the
        // state the decision is made from is the state itself: borrowed, not cloned.
        let projected = if self.outbox.pending(true).next().is_none() {
            None
        } else {
            match self.projected(true) {
                Some(next) => Some(next),
                None => return self.exit(Exit::Crashed(CrashReason::Fold), ctx),
            }
        };
        let Some(next) = projected.as_ref().or(self.phase.active().map(|a| &a.state)) else {
            return;
        };
        let now = self.now_est();
        let mut events = self.outbox.take_events();
        let decision = decide(next, now, self.worker.config.max_parallel_steps);
        let mut wake_at_ms = decision.wake_at_ms;
        // Draining, crashing or finished: record what is pending, start nothing new.
        if mode == Mode::Normal && !next.status.is_terminal() {
            let finishing = decision.finish.is_some();
            match self.decided_events(next, decision) {
                Ok(decided) => events.extend(decided),
                Err(reason) => return self.exit(Exit::Crashed(reason), ctx),
            }
            if !finishing {
                // Agent steps decide for themselves, in the same append (agent.rs).
                let agents = self.agent_decision(next, now);
                events.extend(agents.events);
                wake_at_ms = match (wake_at_ms, agents.wake_at_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let settled = Settled::of(next);
        if events.is_empty() {
            self.settle(settled, mode, wake_at_ms, now, ctx);
        } else {
            self.append(events, ctx);
        }
    }

    /// The events `decision` adds: the job's end, or the waits and sleeps that resolve now
    /// and the starts of ready steps.
    fn decided_events(
        &self,
        next: &JobState,
        decision: Decision,
    ) -> Result<Vec<EventBody>, CrashReason> {
        if let Some(finish) = decision.finish {
            return Ok(vec![finish]);
        }
        let mut events = decision.resolve;
        for step in &decision.start {
            events.push(
                self.start_event(next, step)
                    .ok_or(CrashReason::UnknownTool)?,
            );
        }
        Ok(events)
    }

    /// Nothing to append: stop when finished, drained or crashing; otherwise mark taken
    /// commands applied, wait for a timer due soon, or park.
    fn settle(
        &mut self,
        next: Settled,
        mode: Mode,
        wake_at_ms: Option<i64>,
        now: i64,
        ctx: &mut Context<Self>,
    ) {
        if next.status.is_terminal() {
            // Finished (or cancelled) by our own append (a loaded job that was already
            // finished never gets here: `on_loaded`), which gave the lease back. Stopping
            // drops any in-flight call's future, which is how a running tool is told to
            // stop.
            return self.exit(Exit::Finished, ctx);
        }
        if next.in_flight {
            return; // its outcome drives again
        }
        match mode {
            Mode::Crashing(reason) => self.exit(Exit::Crashed(reason), ctx),
            Mode::Draining => self.exit(Exit::Passivated, ctx),
            // Commands that needed no event (duplicates, late confirms).
            Mode::Normal if self.outbox.has_applied() => self.flush_applied(ctx),
            Mode::Normal => self.wait_or_park(next.status, wake_at_ms, now, ctx),
        }
    }

    fn wait_or_park(
        &mut self,
        status: JobStatus,
        wake_at_ms: Option<i64>,
        now: i64,
        ctx: &mut Context<Self>,
    ) {
        match wake_at_ms {
            Some(at) if at - now <= PARK_AFTER_MS => {
                // Due soon: keep the lease and wait here rather than park.
                if let Some(handle) = self.wake.take() {
                    ctx.cancel_future(handle);
                }
                let delay = Duration::from_millis((at - now).max(1) as u64);
                self.wake = Some(ctx.run_later(delay, |act, ctx| {
                    act.wake = None;
                    act.drive(ctx)
                }));
            }
            // Parked and nothing changed: hold nothing. With a timer, ask the lease
            // manager to claim again when it is due (local clock).
            _ if status == JobStatus::Waiting => match wake_at_ms {
                Some(at) => self.exit(Exit::Parked(at - self.clock_offset_ms), ctx),
                None => self.exit(Exit::Passivated, ctx),
            },
            // Nothing running, nothing ready: park (a signal, a confirmation or the timer
            // wakes it), then hold no actor and no lease.
            _ => self.append(vec![EventBody::JobParked { wake_at_ms }], ctx),
        }
    }

    /// The event that starts `step`: `wait_started`, `sleep_started`, or the `step_started`
    /// of the step's next attempt. `None` for a step the plan or state does not have.
    fn start_event(&self, next: &JobState, step: &str) -> Option<EventBody> {
        let spec = next.plan.step(step)?;
        if let Some(wait) = &spec.wait {
            return Some(EventBody::WaitStarted {
                step: step.to_string(),
                timeout_ms: wait.timeout.as_ref().map(|t| t.as_millis()),
            });
        }
        if let Some(duration) = &spec.sleep {
            return Some(EventBody::SleepStarted {
                step: step.to_string(),
                duration_ms: duration.as_millis(),
            });
        }
        if spec.agent.is_some() {
            return aetheris_runtime::agent::start_event(next, step);
        }
        let call = Attempt {
            step: step.to_string(),
            attempt: next.steps.get(step)?.attempt + 1,
            invocation_key: invocation_key(&next.tenant, self.job_id, step, 0),
            tool: spec.tool.clone()?,
            effect: next.plan.effect_of(spec, &self.worker.tools),
        };
        Some(call.started_event(self.token))
    }

    pub(super) fn append(&mut self, events: Vec<EventBody>, ctx: &mut Context<Self>) {
        let Some(state) = self.state() else { return };
        let request = Append {
            job_id: self.job_id,
            token: self.token,
            expected_last_seq: state.last_seq,
            events,
        };
        self.send_append(request, Instant::now(), ctx);
    }

    /// Sends `request`. A transient store error (connection lost, database restarting)
    /// leaves the append's fate unknown, so the same append (same token, same expected seq)
    /// is sent again, with backoff, for up to one lease TTL: if the first one committed, the
    /// retry fails with a seq conflict and the actor restarts from storage, which has it;
    /// if the lease moved on, the retry is fenced. Nothing is written twice, and a call
    /// that finished is not turned into `outcome_unknown` by a database blip.
    fn send_append(&mut self, request: Append, first_try: Instant, ctx: &mut Context<Self>) {
        self.set_writing(true);
        let store = self.worker.store.clone();
        let again = request.clone();
        let sent = Instant::now();
        let sent_at_ms = local_ms();
        ctx.wait(
            actix::fut::wrap_future(async move { store.append(request).await }).map(
                move |appended, act: &mut JobActor, ctx| {
                    act.set_writing(false);
                    metrics::histogram!(metric::STORE_APPEND_DURATION)
                        .record(sent.elapsed().as_secs_f64());
                    let retry_for = Duration::from_millis(act.worker.config.lease_ttl_ms);
                    match appended {
                        Ok(recorded) => act.on_appended(recorded, sent_at_ms, ctx),
                        // Only a transient failure is retried: anything else (a refusal,
                        // a fenced token, a statement the server refuses) will not heal.
                        Err(error @ StoreError::Unavailable { .. })
                            if act.active().is_some() && first_try.elapsed() < retry_for =>
                        {
                            tracing::warn!(job = %act.job_id, error = %error, "append failed; retrying");
                            act.set_writing(true); // nothing else may append meanwhile
                            let delay = first_try
                                .elapsed()
                                .clamp(Duration::from_millis(20), Duration::from_millis(500));
                            ctx.run_later(delay, move |act, ctx| {
                                act.set_writing(false);
                                if act.active().is_some() {
                                    act.send_append(again, first_try, ctx);
                                }
                            });
                        }
                        Err(error) => act.fail_store(error, ctx),
                    }
                },
            ),
        );
    }

    /// Folds what the store recorded, calls the tools it started, reports the job's end,
    /// then marks taken commands applied or drives on.
    fn on_appended(
        &mut self,
        recorded: Vec<RecordedEvent>,
        sent_at_ms: i64,
        ctx: &mut Context<Self>,
    ) {
        if let Some(last) = recorded.last() {
            self.clock_offset_ms = last.recorded_at_ms - sent_at_ms;
        }
        let Some(active) = self.phase.active_mut() else {
            return;
        };
        let queued = metric::nothing_started(&active.state);
        if let Err(error) = recorded.iter().try_for_each(|e| active.state.apply(e)) {
            tracing::error!(job = %self.job_id, error = %error, "appended event does not fold");
            return self.exit(Exit::Crashed(CrashReason::Fold), ctx);
        }
        if queued {
            metric::record_queue_wait(&active.state);
        }
        self.close_finished_steps();
        for event in &recorded {
            match Attempt::from_started(&event.body) {
                Some(call) => self.invoke(call, ctx),
                None if self.on_agent_event(&event.body, ctx) => {}
                None => self.report(&event.body),
            }
        }
        let parked = recorded
            .iter()
            .any(|e| matches!(e.body, EventBody::JobParked { .. }));
        self.maybe_snapshot(parked, ctx);
        if self.outbox.has_applied() {
            self.flush_applied(ctx);
            return;
        }
        self.drive(ctx);
    }

    /// Metrics of recorded outcomes, and the end of the job to its watchers.
    fn report(&self, body: &EventBody) {
        let outcome = match body {
            EventBody::StepSucceeded { .. } => "succeeded",
            EventBody::StepFailed { .. } => "failed",
            EventBody::StepOutcomeUnknown { .. } => "outcome_unknown",
            EventBody::JobSucceeded { .. }
            | EventBody::JobFailed { .. }
            | EventBody::JobCancelled { .. } => {
                if let Some(state) = self.state() {
                    crate::trace::spans::job_root(state);
                }
                let status = self.state().map_or(JobStatus::Failed, |s| s.status);
                let _ = self.worker.finished.send((self.job_id, status));
                return;
            }
            _ => return,
        };
        metrics::counter!(metric::LEDGER_OUTCOMES, "outcome" => outcome).increment(1);
    }

    /// Marks taken commands applied (their events are durable), fenced, then drives on.
    fn flush_applied(&mut self, ctx: &mut Context<Self>) {
        let ids = self.outbox.take_applied();
        let (store, job, token) = (self.worker.store.clone(), self.job_id, self.token);
        self.set_writing(true);
        ctx.wait(
            actix::fut::wrap_future(
                async move { store.mark_commands_applied(job, token, &ids).await },
            )
            .map(|marked, act: &mut JobActor, ctx| {
                act.set_writing(false);
                match marked {
                    Ok(()) => act.drive(ctx),
                    Err(error) => act.fail_store(error, ctx),
                }
            }),
        );
    }

    /// Writes a snapshot every `snapshot_every` events, and whenever the job parks (a
    /// parked job may wait long and is reloaded when it wakes: its reload then reads no
    /// events). The write is fenced by the store, so it may outlive this actor: a parked
    /// job's actor stops right after this, and the write goes on without it.
    fn maybe_snapshot(&mut self, parked: bool, ctx: &mut Context<Self>) {
        let Some(state) = self.state() else { return };
        let due = state.last_seq >= self.last_snapshot_seq + self.worker.config.snapshot_every;
        let newer = state.last_seq > self.last_snapshot_seq;
        if !(due || (parked && newer)) {
            return;
        }
        let blob = match encode_versioned(SNAPSHOT_FORMAT, state) {
            Ok(blob) => blob,
            Err(error) => {
                metrics::counter!(metric::SNAPSHOT_FAILURES).increment(1);
                tracing::error!(job = %self.job_id, error = %error, "snapshot encode failed");
                return;
            }
        };
        let seq = state.last_seq;
        self.last_snapshot_seq = seq;
        let (store, job, token) = (self.worker.store.clone(), self.job_id, self.token);
        let write = async move {
            match store.put_snapshot(job, token, seq, blob).await {
                Ok(()) => metrics::counter!(metric::SNAPSHOTS_WRITTEN).increment(1),
                Err(error) => {
                    metrics::counter!(metric::SNAPSHOT_FAILURES).increment(1);
                    tracing::warn!(job = %job, error = %error, "snapshot write failed")
                }
            }
        };
        if parked {
            actix::spawn(write);
        } else {
            ctx.spawn(actix::fut::wrap_future(write));
        }
    }
}
