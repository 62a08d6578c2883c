//! Tenants as data: id, display name and rate limits (applied without restart).

use crate::{AuditEntry, Result, Tenant};
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
}
