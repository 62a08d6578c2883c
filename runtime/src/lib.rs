//! aetheris-runtime: the pure core of Aetheris. No IO, no actix, no clocks.
//!
//! Owns the vocabulary every other crate shares — ids, the plan model and its validation,
//! the event enum, the `JobState` fold, next-step decisions and recovery, the rules that
//! turn tool outcomes and commands into events, the ledger state machine, the hash chain,
//! the append planner both stores apply, retry math and the versioned codec for persisted
//! blobs. Invariant kept here (G5): the state of a job is a pure function of its events, so
//! replaying them — from the start or from any snapshot — yields exactly the same state.

pub mod agent;
pub mod append;
pub mod bucket;
pub mod chain;
pub mod codec;
pub mod commands;
pub mod decide;
pub mod duration;
pub mod error;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod outcome;
pub mod plan;
pub mod retry;
pub mod state;
pub mod template;
#[doc(hidden)]
pub mod testkit;

pub use agent::AgentSpec;
pub use append::{plan_append, Append, AppendError, JobHead, PlannedAppend, TimerChange};
pub use commands::{command_effect, Command, CommandEffect, Ignored};
pub use decide::{decide, recover, Decision, Recovery};
pub use error::{FoldError, PlanError, RuntimeError};
pub use event::{ConfirmOutcome, EventBody, RecordedEvent};
pub use ids::{invocation_key, JobId};
pub use ledger::{LedgerMove, LedgerRow, LedgerStatus};
pub use outcome::{outcome_event, Attempt, ToolOutcome};
pub use plan::{EffectClass, Plan, RetryPolicy, StepKind, StepSpec, ToolCatalog, WaitSpec};
pub use state::{JobState, JobStatus, StepState, StepStatus};
