//! aetheris-store: the storage contract of Aetheris and its backends.
//!
//! The contract is one small trait per concern (`contract`: [`JobLog`], [`Leases`],
//! [`Commands`], [`Tenants`], [`Users`], [`Audit`], [`Presence`], [`Operations`],
//! [`TransparencyLog`], [`LlmStore`], [`Retention`])
//! and [`Store`], all of them; it is the only way the rest of the system touches durable
//! state. Two backends implement it with one file per concern: PostgreSQL ([`pg`],
//! production, many processes) and redb ([`redb`], embedded, one process). Both plan every
//! append with the one planner of the pure core (`aetheris_runtime::plan_append`), and
//! both pass one conformance suite (`testing::conformance`, behind the `test-util`
//! feature), so they cannot drift apart.
//! The invariants every backend keeps are listed in `contract`.
//!
//! Also here: the data the contract speaks in (`model`), its one error enum (`error`), the
//! fold of a stored job into its state (`load`), the fair queue both backends serve
//! tenants with (`fair`), the PostgreSQL migration runner (`migrate`), the rule for the
//! transparency leaf a finishing append adds (`transparency`), the evidence export
//! every caller uses (`evidence`) and the hand-off of new jobs to a worker's free slots
//! at submission (`handoff`).

mod contract;
mod error;
pub mod evidence;
mod fair;
pub mod handoff;
pub mod load;
pub mod migrate;
mod model;
pub mod pg;
pub mod redb;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod transparency;

pub use self::redb::RedbStore;
pub use contract::{
    Audit, Commands, DynStore, JobLog, Leases, LlmStore, Operations, Presence, Retention, Store,
    Tenants, TransparencyLog, Users, FORGET_AFTER_MS,
};
pub(crate) use error::append_refused;
pub use error::{unavailable_errors, Entity, Result, StoreError};
pub use load::{load_job_state, state_from_load, LoadedJob};
pub use model::*;
pub use pg::PgStore;
