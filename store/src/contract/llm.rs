//! LLM providers per tenant, and each tenant's daily token usage (docs/agents.md).
//!
//! A provider row holds where a worker finds the API key, never the key. Daily usage is a
//! counter per (tenant, UTC day of the store clock) that survives restarts: a model call
//! reserves its tokens before it is sent (refused, changing nothing, if the day's total
//! would pass the limit) and settles with its usage after; a call cut off by a crash keeps
//! its reservation, so the count errs on the side of the budget.

use crate::{AuditEntry, LlmProvider, LlmReservation, Result};
use async_trait::async_trait;

#[async_trait]
pub trait LlmStore: Send + Sync {
    /// Creates or replaces provider `p.name` of `tenant`, with `audit` in the same
    /// transaction; `NotFound` if the tenant does not exist.
    async fn put_llm_provider(
        &self,
        tenant: &str,
        p: LlmProvider,
        audit: Option<&AuditEntry>,
    ) -> Result<LlmProvider>;

    /// The tenant's providers, by name.
    async fn llm_providers(&self, tenant: &str) -> Result<Vec<LlmProvider>>;

    /// Deletes a provider; `false` if there was none (nothing is audited then).
    async fn delete_llm_provider(
        &self,
        tenant: &str,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool>;

    /// Adds `tokens` to the tenant's count for today (store clock) if the total stays at
    /// most `limit`; `None` (and no change) if it would not.
    async fn reserve_llm_tokens(
        &self,
        tenant: &str,
        tokens: u64,
        limit: u64,
    ) -> Result<Option<LlmReservation>>;

    /// Replaces a reservation of `reserved` tokens on `day` by the `used` ones (never
    /// below zero).
    async fn settle_llm_tokens(
        &self,
        tenant: &str,
        day: i64,
        reserved: u64,
        used: u64,
    ) -> Result<()>;

    /// The tenant's tokens of today (store clock), reservations included.
    async fn llm_tokens_today(&self, tenant: &str) -> Result<u64>;
}
