//! Next-step decisions: given a folded state and the current time (from the store's clock,
//! passed in), which steps start now (ready steps in plan order, bounded parallelism per
//! job), whether the job finishes, and when to look again. Also the recovery rule of G2 for
//! steps found `running` when a job is (re)loaded by a new incarnation.

use crate::event::EventBody;
use crate::plan::EffectClass;
use crate::state::{JobState, StepStatus};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Steps to start now, in plan order.
    pub start: Vec<String>,
    /// The terminal event to append, if the job is done.
    pub finish: Option<EventBody>,
    /// Waits and sleeps that resolve now: `wait_completed` (a buffered signal matches),
    /// `wait_timed_out`, `sleep_finished`.
    pub resolve: Vec<EventBody>,
    /// The earliest future time something becomes due (a retry, a timeout, a timer).
    pub wake_at_ms: Option<i64>,
}

impl Decision {
    fn wake(&mut self, t: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(t, |w| w.min(t)));
    }
}

pub fn decide(state: &JobState, now_ms: i64, max_parallel: usize) -> Decision {
    let mut d = Decision::default();
    if state.status.is_terminal() {
        return d;
    }
    let running = state
        .steps
        .values()
        .filter(|s| s.status == StepStatus::Running)
        .count();
    if let Some((id, st)) = state
        .steps
        .iter()
        .find(|(_, s)| s.status == StepStatus::Failed)
    {
        if running == 0 {
            d.finish = Some(EventBody::JobFailed {
                error: format!(
                    "step {id:?} failed: {}",
                    st.error.as_deref().unwrap_or("unknown error")
                ),
                step: Some(id.clone()),
            });
        }
        return d;
    }
    if state
        .steps
        .values()
        .all(|s| s.status == StepStatus::Succeeded)
    {
        let mut out = Map::new();
        for sink in state.plan.sinks() {
            if let Some(o) = state.steps.get(sink).and_then(|s| s.output.clone()) {
                out.insert(sink.to_string(), o);
            }
        }
        d.finish = Some(EventBody::JobSucceeded {
            output: Value::Object(out),
        });
        return d;
    }
    let mut room = max_parallel.max(1).saturating_sub(running);
    let mut consumed: Vec<&str> = Vec::new();
    for spec in &state.plan.steps {
        let Some(st) = state.steps.get(&spec.id) else {
            continue;
        };
        match st.status {
            StepStatus::Waiting => {
                let name = spec.wait.as_ref().map(|w| w.signal.as_str()).unwrap_or("");
                let signal = state
                    .signals
                    .get(name)
                    .and_then(|v| v.iter().find(|b| !consumed.contains(&b.signal_id.as_str())));
                if let Some(b) = signal {
                    consumed.push(&b.signal_id);
                    d.resolve.push(EventBody::WaitCompleted {
                        step: spec.id.clone(),
                        signal_id: b.signal_id.clone(),
                        output: serde_json::json!({"signal": name, "payload": b.payload, "by": b.by}),
                    });
                } else if let Some(t) = st.deadline_ms {
                    if t <= now_ms {
                        d.resolve.push(EventBody::WaitTimedOut {
                            step: spec.id.clone(),
                        });
                    } else {
                        d.wake(t);
                    }
                }
                continue;
            }
            StepStatus::Sleeping => {
                match st.deadline_ms {
                    Some(t) if t > now_ms => d.wake(t),
                    _ => d.resolve.push(EventBody::SleepFinished {
                        step: spec.id.clone(),
                    }),
                }
                continue;
            }
            StepStatus::Pending => {}
            _ => continue,
        }
        let needs_met = spec.needs.iter().all(|n| {
            state
                .steps
                .get(n)
                .map(|s| s.status == StepStatus::Succeeded)
                .unwrap_or(false)
        });
        if !needs_met {
            continue;
        }
        match st.retry_at_ms {
            Some(t) if t > now_ms => d.wake(t),
            // Waits and sleeps cost nothing while pending: they need no parallel slot.
            _ if spec.tool.is_none() => d.start.push(spec.id.clone()),
            _ if room > 0 => {
                d.start.push(spec.id.clone());
                room -= 1;
            }
            _ => {}
        }
    }
    d
}

/// What a new incarnation does with a step it finds `running` (started, no result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// pure / idempotent: call again with the same invocation key.
    Reinvoke { step: String },
    /// side_effect: never a silent re-run; record `outcome_unknown` and wait for a human.
    OutcomeUnknown { step: String },
}

pub fn recover(state: &JobState) -> Vec<Recovery> {
    state
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Running)
        .map(
            |(id, s)| match s.effect.unwrap_or(EffectClass::UNKNOWN_DEFAULT) {
                e if e.reinvocable() => Recovery::Reinvoke { step: id.clone() },
                _ => Recovery::OutcomeUnknown { step: id.clone() },
            },
        )
        .collect()
}
