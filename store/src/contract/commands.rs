//! Commands for jobs (cancel, signal, confirmation): stored durably before the gateway
//! answers (G1), applied by the lease holder under its fencing token.

use crate::{AuditEntry, CommandBody, Result, Scope, StoredCommand};
use aetheris_runtime::JobId;
use async_trait::async_trait;

#[async_trait]
pub trait Commands: Send + Sync {
    /// Stores a command for a job, durably. A job that is not finished becomes claimable
    /// (even if waiting) until the command is applied, and the command hint fires.
    /// `Conflict` if the job already finished; `NotFound` outside the scope.
    /// With `audit`, its row is written in the same transaction as the command.
    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<StoredCommand>;

    /// The job's commands not yet applied, oldest first.
    async fn pending_commands(&self, id: JobId) -> Result<Vec<StoredCommand>>;

    /// Marks commands applied (their events are already appended), fenced.
    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()>;

    /// Job ids that just received a command (a hint: lost while disconnected; workers
    /// also re-check).
    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId>;
}
