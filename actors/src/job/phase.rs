//! The job actor's phase: where it is in its life, as one value, so that no impossible
//! combination (draining before the job is loaded, writing while stopping, crashing and
//! passivating at once) can be represented. The only transitions:
//!
//! ```text
//! Loading ──loaded, not finished─────────────────────────────▶ Active(Normal)
//! Loading ──finished, unknown job, load failed, drained───────▶ Stopping
//! Active(Normal) ──DrainJob───────────────────────────────────▶ Active(Draining)
//! Active(Normal | Draining) ──a tool panicked─────────────────▶ Active(Crashing)
//! Active(_) ──finished, parked, passivated, lease lost, crash─▶ Stopping
//! ```
//!
//! While active, `writing` says an append, a mark-applied or the recovery's reconcile round
//! is awaited; it is set and cleared around each of them, in any mode.

use crate::messages::CrashReason;
use aetheris_runtime::JobState;

pub(super) enum Phase {
    /// Reading the snapshot and later events: nothing is decided or written yet.
    Loading,
    /// The job's state is loaded: deciding, writing and calling tools.
    Active(Box<Active>),
    /// `exit` was called: nothing more is written or called. A call still in flight is
    /// dropped; the next incarnation recovers it from the ledger.
    Stopping,
}

/// A loaded job's actor.
pub(super) struct Active {
    /// The job folded from every durable event.
    pub(super) state: JobState,
    pub(super) mode: Mode,
    /// An append, a mark-applied or the recovery's reconcile round is awaited: nothing
    /// else is written until it answers, so writes never interleave.
    pub(super) writing: bool,
}

/// How an active actor ends once nothing is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Start ready steps; finish, wait for a near timer or park when there is nothing to do.
    Normal,
    /// A drain was asked: start nothing new, record the calls in flight, then stop
    /// passivated.
    Draining,
    /// A tool panicked: start nothing new, record the calls in flight, then stop as crashed
    /// so the registry restarts the job from storage. Wins over a drain.
    Crashing(CrashReason),
}

impl Phase {
    /// Loading → Active(Normal) with the loaded state. Any other phase stays as it is.
    pub(super) fn activate(&mut self, state: JobState) {
        if let Phase::Loading = self {
            *self = Phase::Active(Box::new(Active {
                state,
                mode: Mode::Normal,
                writing: false,
            }));
        }
    }

    /// `DrainJob`: Active(Normal) → Active(Draining). A crash under way stays one.
    pub(super) fn drain(&mut self) {
        if let Some(active) = self.active_mut() {
            if active.mode == Mode::Normal {
                active.mode = Mode::Draining;
            }
        }
    }

    /// A tool panicked: Active(Normal | Draining) → Active(Crashing).
    pub(super) fn crash_after_flush(&mut self, reason: CrashReason) {
        if let Some(active) = self.active_mut() {
            active.mode = Mode::Crashing(reason);
        }
    }

    /// Any phase → Stopping.
    pub(super) fn stop(&mut self) {
        *self = Phase::Stopping;
    }

    pub(super) fn active(&self) -> Option<&Active> {
        match self {
            Phase::Active(active) => Some(active),
            Phase::Loading | Phase::Stopping => None,
        }
    }

    pub(super) fn active_mut(&mut self) -> Option<&mut Active> {
        match self {
            Phase::Active(active) => Some(active),
            Phase::Loading | Phase::Stopping => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::{EventBody, JobId, RecordedEvent};

    fn state() -> JobState {
        JobState::genesis(&RecordedEvent {
            job_id: JobId::new(),
            seq: 1,
            recorded_at_ms: 0,
            body: EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(
                    serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}),
                )
                .expect("plan"),
                input: serde_json::Value::Null,
                idempotency_key: None,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        })
        .expect("genesis")
    }

    fn mode(phase: &Phase) -> Option<Mode> {
        phase.active().map(|active| active.mode)
    }

    #[test]
    fn loading_becomes_active_in_normal_mode_once() {
        let mut phase = Phase::Loading;
        phase.activate(state());
        assert_eq!(mode(&phase), Some(Mode::Normal));
        assert!(!phase.active().is_some_and(|active| active.writing));
        phase.drain();
        phase.activate(state()); // a second load does not reset the mode
        assert_eq!(mode(&phase), Some(Mode::Draining));
    }

    #[test]
    fn a_drain_or_a_crash_before_the_load_changes_nothing() {
        let mut phase = Phase::Loading;
        phase.drain();
        phase.crash_after_flush(CrashReason::ToolPanic);
        assert!(matches!(phase, Phase::Loading));
    }

    #[test]
    fn a_crash_wins_over_a_drain_whichever_comes_first() {
        let mut drained_first = Phase::Loading;
        drained_first.activate(state());
        drained_first.drain();
        drained_first.crash_after_flush(CrashReason::ToolPanic);
        assert_eq!(
            mode(&drained_first),
            Some(Mode::Crashing(CrashReason::ToolPanic))
        );
        let mut crashed_first = Phase::Loading;
        crashed_first.activate(state());
        crashed_first.crash_after_flush(CrashReason::ToolPanic);
        crashed_first.drain();
        assert_eq!(
            mode(&crashed_first),
            Some(Mode::Crashing(CrashReason::ToolPanic))
        );
    }

    #[test]
    fn stopping_is_final() {
        let mut phase = Phase::Loading;
        phase.activate(state());
        phase.stop();
        phase.activate(state());
        phase.drain();
        assert!(matches!(phase, Phase::Stopping));
        assert!(phase.active().is_none());
    }
}
