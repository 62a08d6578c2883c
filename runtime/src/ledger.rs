//! The invocation ledger (G2): its state machine — `started` → `succeeded` | `failed` |
//! `outcome_unknown` → `confirmed`; a failed invocation may start again (a retry reuses the
//! key); a started one may start again only if its effect class allows re-invocation — and
//! the one mapping from events to ledger moves ([`EventBody::ledger_move`]) that the fold
//! (`JobState::apply`) and the stores' append planner (`crate::append`) both use, so the
//! ledger a store keeps and the ledger a replay computes cannot disagree.

use crate::event::EventBody;
use crate::plan::EffectClass;
use serde::{Deserialize, Serialize};

impl EffectClass {
    /// The effect class of a call whose class is not known (a step without an `effect`
    /// whose tool declares none, a ledger row moved before its `started`): the strictest,
    /// so nothing unknown is ever re-invoked silently (G2).
    pub const UNKNOWN_DEFAULT: EffectClass = EffectClass::SideEffect;
}

/// The ledger move one event makes: step `step` goes to `to`. `step_started` also names
/// the attempt, the effect class and the invocation key; the other moves keep the row's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerMove<'a> {
    pub step: &'a str,
    pub to: LedgerStatus,
    pub attempt: Option<u32>,
    pub effect: Option<EffectClass>,
    pub invocation_key: Option<&'a str>,
}

impl EventBody {
    /// The ledger move this event makes, if any.
    pub fn ledger_move(&self) -> Option<LedgerMove<'_>> {
        match self {
            EventBody::StepStarted {
                step,
                attempt,
                effect,
                invocation_key,
                ..
            } => Some(LedgerMove {
                step,
                to: LedgerStatus::Started,
                attempt: Some(*attempt),
                effect: Some(*effect),
                invocation_key: Some(invocation_key),
            }),
            EventBody::StepSucceeded { step, .. } => Some(moved(step, LedgerStatus::Succeeded)),
            EventBody::StepFailed { step, .. } => Some(moved(step, LedgerStatus::Failed)),
            EventBody::StepOutcomeUnknown { step, .. } => {
                Some(moved(step, LedgerStatus::OutcomeUnknown))
            }
            EventBody::StepConfirmed { step, .. } => Some(moved(step, LedgerStatus::Confirmed)),
            EventBody::AgentModelStarted {
                call,
                attempt,
                invocation_key,
                ..
            } => Some(LedgerMove {
                step: call,
                to: LedgerStatus::Started,
                attempt: Some(*attempt),
                // A model call changes nothing outside: asking again costs only tokens.
                effect: Some(EffectClass::Idempotent),
                invocation_key: Some(invocation_key),
            }),
            EventBody::AgentModelAnswered { call, .. } => {
                Some(moved(call, LedgerStatus::Succeeded))
            }
            EventBody::AgentModelFailed { call, .. } => Some(moved(call, LedgerStatus::Failed)),
            EventBody::AgentToolStarted {
                call,
                attempt,
                effect,
                invocation_key,
                ..
            } => Some(LedgerMove {
                step: call,
                to: LedgerStatus::Started,
                attempt: Some(*attempt),
                effect: Some(*effect),
                invocation_key: Some(invocation_key),
            }),
            EventBody::AgentToolSucceeded { call, .. } => {
                Some(moved(call, LedgerStatus::Succeeded))
            }
            EventBody::AgentToolFailed { call, .. } => Some(moved(call, LedgerStatus::Failed)),
            EventBody::AgentToolOutcomeUnknown { call, .. } => {
                Some(moved(call, LedgerStatus::OutcomeUnknown))
            }
            _ => None,
        }
    }
}

/// A move that names only the step and the new status.
fn moved(step: &str, to: LedgerStatus) -> LedgerMove<'_> {
    LedgerMove {
        step,
        to,
        attempt: None,
        effect: None,
        invocation_key: None,
    }
}

impl LedgerMove<'_> {
    /// The status and effect class after this move, from the row's current status and
    /// effect class (`None`: no row yet). A move without an effect class keeps the row's,
    /// and a row without one counts as [`EffectClass::UNKNOWN_DEFAULT`]. `Err` names the
    /// illegal transition.
    pub fn next(
        &self,
        status: Option<LedgerStatus>,
        effect: Option<EffectClass>,
    ) -> Result<(LedgerStatus, EffectClass), String> {
        let effect = self
            .effect
            .or(effect)
            .unwrap_or(EffectClass::UNKNOWN_DEFAULT);
        Ok((LedgerStatus::transition(status, self.to, effect)?, effect))
    }
}

/// One ledger row as the stores keep it: the invocation of a step. (Persisted by the
/// embedded store with bincode: never reorder these fields.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub invocation_key: String,
    pub attempt: u32,
    pub effect: EffectClass,
    pub status: LedgerStatus,
    pub updated_at_ms: i64,
}

impl LedgerRow {
    /// The row after `mv` at time `now` (`current`: the row before, if any): the status
    /// by the state machine, the effect class, attempt and key from the move or else kept.
    pub fn advance(
        current: Option<&LedgerRow>,
        mv: &LedgerMove<'_>,
        now: i64,
    ) -> Result<LedgerRow, String> {
        let (status, effect) = mv.next(current.map(|c| c.status), current.map(|c| c.effect))?;
        Ok(LedgerRow {
            invocation_key: mv
                .invocation_key
                .map(str::to_string)
                .or_else(|| current.map(|c| c.invocation_key.clone()))
                .unwrap_or_default(),
            attempt: mv.attempt.or(current.map(|c| c.attempt)).unwrap_or(0),
            effect,
            status,
            updated_at_ms: now,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    Started,
    Succeeded,
    Failed,
    OutcomeUnknown,
    Confirmed,
}

impl LedgerStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            LedgerStatus::Started => "started",
            LedgerStatus::Succeeded => "succeeded",
            LedgerStatus::Failed => "failed",
            LedgerStatus::OutcomeUnknown => "outcome_unknown",
            LedgerStatus::Confirmed => "confirmed",
        }
    }

    /// The next status, or why the move is illegal. `from == None` is a fresh key.
    pub fn transition(
        from: Option<LedgerStatus>,
        to: LedgerStatus,
        effect: EffectClass,
    ) -> Result<LedgerStatus, String> {
        use LedgerStatus::*;
        let ok = match (from, to) {
            (None, Started) => true,
            (Some(Failed), Started) => true,
            (Some(Started), Started) => effect.reinvocable(),
            (Some(Started), Succeeded | Failed | OutcomeUnknown) => true,
            (Some(OutcomeUnknown), Confirmed) => true,
            // Confirmed `not_executed`: the step runs again with the same key. (The fold
            // makes the step runnable only for that outcome.)
            (Some(Confirmed), Started) => true,
            _ => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(format!(
                "{} -> {} ({})",
                from.map(|f| f.as_str()).unwrap_or("none"),
                to.as_str(),
                effect.as_str()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LedgerStatus::*;
    use super::*;

    #[test]
    fn side_effects_never_restart_without_a_result() {
        assert!(LedgerStatus::transition(Some(Started), Started, EffectClass::SideEffect).is_err());
        assert!(LedgerStatus::transition(Some(Started), Started, EffectClass::Idempotent).is_ok());
        assert!(LedgerStatus::transition(Some(Succeeded), Started, EffectClass::Pure).is_err());
        assert!(
            LedgerStatus::transition(Some(OutcomeUnknown), Started, EffectClass::SideEffect)
                .is_err()
        );
        assert!(
            LedgerStatus::transition(Some(OutcomeUnknown), Confirmed, EffectClass::SideEffect)
                .is_ok()
        );
        assert!(LedgerStatus::transition(Some(Failed), Started, EffectClass::SideEffect).is_ok());
        assert!(LedgerStatus::transition(None, Succeeded, EffectClass::Pure).is_err());
        assert!(
            LedgerStatus::transition(Some(Confirmed), Succeeded, EffectClass::SideEffect).is_err()
        );
    }
}
