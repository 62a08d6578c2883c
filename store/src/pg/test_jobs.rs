//! Test helpers shared by the PostgreSQL store's unit tests: jobs to work on, and the
//! first append a worker makes for one.

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

/// The start of one-step job `job`'s step `a` (its first append, after `job_submitted`),
/// under `token`; the invocation key is made as for tenant `tenant`.
pub(super) fn step_a_started(
    tenant: &str,
    job: aetheris_runtime::JobId,
    token: u64,
) -> crate::Append {
    crate::Append {
        job_id: job,
        token,
        expected_last_seq: 1,
        events: vec![aetheris_runtime::EventBody::StepStarted {
            step: "a".into(),
            attempt: 1,
            invocation_key: aetheris_runtime::invocation_key(tenant, job, "a", 0),
            tool: "echo".into(),
            effect: aetheris_runtime::EffectClass::Pure,
            fencing_token: token,
        }],
    }
}
