//! The access audit log. A change's row is written by the change itself (the `audit`
//! argument of the writes of the other traits), so it commits or rolls back with it; this
//! trait writes rows on their own and reads them.

use crate::{AuditEntry, AuditFilter, AuditRecord, Result, Scope};
use async_trait::async_trait;

#[async_trait]
pub trait Audit: Send + Sync {
    /// Writes an audit row on its own (an attempt that changed nothing, e.g. `denied`).
    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord>;

    /// Audit rows of the scope's tenant (all tenants for `System`), oldest first.
    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>>;
}
