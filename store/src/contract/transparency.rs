//! Each tenant's transparency log: one leaf per finished job, appended by the store in the
//! transaction that appends the job's terminal event (`JobLog::append_many`), numbered
//! 0, 1, 2, … per tenant without gaps, never changed afterwards. Signed checkpoints and
//! proofs are computed from the leaves by `aetheris_proof` (docs/evidence.md); this trait
//! only reads them.

use crate::{LogLeaf, Result, Scope};
use aetheris_runtime::JobId;
use async_trait::async_trait;

#[async_trait]
pub trait TransparencyLog: Send + Sync {
    /// The first `size` leaves of `tenant`'s log (every leaf for `None`), in index order,
    /// as of one point in time. A log with a missing index is `Corrupt` (a leaf was
    /// deleted); asking for more leaves than the log has returns the whole log.
    async fn log_leaves(&self, tenant: &str, size: Option<u64>) -> Result<Vec<LogLeaf>>;

    /// The leaf job `id` added when it finished (`None`: not finished). Scoped: another
    /// tenant's job is `NotFound`, as is an unknown one.
    async fn job_leaf(&self, scope: Scope<'_>, id: JobId) -> Result<Option<LogLeaf>>;
}
