//! The invocation ledger's state machine (G2): `started` → `succeeded` | `failed` |
//! `outcome_unknown` → `confirmed`. A failed invocation may start again (a retry reuses the
//! key); a started one may start again only if its effect class allows re-invocation.

use crate::plan::EffectClass;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
