//! Tenants as data: id, display name, rate limits (applied without restart) and the
//! redaction policy of their evidence exports.

use crate::{AuditEntry, PolicyRule, Result, Tenant};
use async_trait::async_trait;

#[async_trait]
pub trait Tenants: Send + Sync {
    /// Creates a tenant; `Conflict` if the id exists. With `audit`, its row is written in
    /// the same transaction.
    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant>;

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>>;

    async fn list_tenants(&self) -> Result<Vec<Tenant>>;

    /// Replaces a tenant's limits; `NotFound` if it does not exist.
    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant>;

    /// The tenant's evidence redaction policy (empty for a tenant without one, or without
    /// a row).
    async fn evidence_policy(&self, id: &str) -> Result<Vec<PolicyRule>>;

    /// Replaces the tenant's evidence redaction policy (the caller has checked its paths),
    /// with `audit` in the same transaction; `NotFound` if the tenant does not exist.
    async fn set_evidence_policy(
        &self,
        id: &str,
        rules: Vec<PolicyRule>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<PolicyRule>>;
}
