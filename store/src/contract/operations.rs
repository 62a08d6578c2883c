//! What an operator watches in the stored data, read at scrape time by the gateways: each
//! tenant's backlog (jobs runnable now that no live lease holds) and its steps waiting for
//! a human because their outcome is unknown, with the age of the oldest of each, and how
//! many migrations the database has applied. Reads only; no tenant scope (the callers are
//! the deployment's operators, and every figure is labelled with its tenant).

use crate::{OperationalFigures, Result};
use async_trait::async_trait;

#[async_trait]
pub trait Operations: Send + Sync {
    /// The figures now (ages on the store clock). A tenant appears if it has any job.
    async fn operational_figures(&self) -> Result<OperationalFigures>;
}
