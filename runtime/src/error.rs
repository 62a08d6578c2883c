//! Errors of the pure core: one enum for the crate, with the plan-validation and fold
//! errors it wraps. Plan errors always name the JSON path that is wrong (G8).

use serde::Serialize;

/// One problem found in a submitted plan, located by a JSON path such as
/// `plan.steps[2].needs[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a sequence of events cannot be folded into a job state. Any of these means the
/// stored log is corrupt or was written by a buggy writer; the fold never guesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("event seq {got} does not follow {expected_after}")]
    SeqGap { expected_after: u64, got: u64 },
    #[error("the first event of a job must be job_submitted (seq {seq})")]
    NotSubmittedFirst { seq: u64 },
    #[error("job_submitted repeated at seq {seq}")]
    SubmittedTwice { seq: u64 },
    #[error("event at seq {seq} names unknown step {step:?}")]
    UnknownStep { seq: u64, step: String },
    #[error("event at seq {seq}: illegal ledger transition for step {step:?}: {detail}")]
    IllegalTransition {
        seq: u64,
        step: String,
        detail: String,
    },
    #[error("event at seq {seq} arrives after the job finished")]
    AfterTerminal { seq: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid plan: {0}")]
    Plan(PlanError),
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("codec: {0}")]
    Codec(String),
    #[error("invalid duration {0:?}: use a number with a unit, e.g. 200ms, 30s, 5m, 24h")]
    Duration(String),
}
