//! Users of a tenant as data, and the one-read lookup every authenticated request makes.

use crate::{Access, AuditEntry, Result, User};
use async_trait::async_trait;

#[async_trait]
pub trait Users: Send + Sync {
    /// Creates or replaces the user `id` of `tenant` (keeping its creation time), with
    /// `audit` in the same transaction. `NotFound` if the tenant does not exist.
    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<User>;

    /// The tenant's users, by id.
    async fn list_users(&self, tenant: &str) -> Result<Vec<User>>;

    /// The tenant and user a request's token names (see `Access`).
    async fn access(&self, tenant: &str, user: &str) -> Result<Access>;
}
