//! Test helpers shared by the PostgreSQL store's unit tests: jobs to work on.

use super::PgStore;
use crate::{JobLog, NewJob};

/// `n` one-step jobs of `tenant`, submitted concurrently (so in shared batches).
pub(super) async fn queue_jobs(store: &PgStore, tenant: &str, n: usize) {
    let plan: aetheris_runtime::Plan =
        serde_json::from_value(serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}))
            .expect("plan");
    let submits: Vec<_> = (0..n)
        .map(|_| {
            let (store, plan, tenant) = (store.clone(), plan.clone(), tenant.to_string());
            tokio::spawn(async move {
                let job = NewJob {
                    tenant,
                    idempotency_key: None,
                    plan,
                    input: serde_json::json!({}),
                };
                store.submit(job, None).await
            })
        })
        .collect();
    for s in submits {
        s.await.expect("task").expect("submit");
    }
}
