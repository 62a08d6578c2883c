//! The embedded redb backend: every conformance check as its own test (each on a store in
//! a temporary directory of its own), and what one `RedbStore` wrote survives closing and
//! reopening the file (G1).

use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobStatus, Plan};
use aetheris_store::{Append, DynStore, NewJob, RedbStore, Scope, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A fresh store in a temporary directory (removed when the returned guard is dropped).
async fn open() -> (tempfile::TempDir, DynStore) {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).unwrap());
    (dir, store)
}

aetheris_store::conformance_tests!(open);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("aetheris.redb");
    let tenant = "durable";
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap();

    let store: DynStore = Arc::new(RedbStore::open(&path).unwrap());
    let (job, created) = store
        .submit(
            NewJob {
                tenant: tenant.into(),
                idempotency_key: Some("once".into()),
                plan: plan.clone(),
                input: json!({"x": 1}),
            },
            None,
        )
        .await
        .unwrap();
    assert!(created);
    let id = job.job_id;
    let lease = store.claim("w1", 60_000, 10).await.unwrap();
    assert_eq!(lease.len(), 1);
    let token = lease[0].token;
    store
        .append(Append {
            job_id: id,
            token,
            expected_last_seq: 1,
            events: vec![
                EventBody::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                    invocation_key: invocation_key(tenant, id, "a", 0),
                    tool: "echo".into(),
                    effect: EffectClass::SideEffect,
                    fencing_token: token,
                },
                EventBody::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: json!({"echo": 1}),
                },
            ],
        })
        .await
        .unwrap();
    store
        .put_snapshot(id, token, 3, b"state@3".to_vec())
        .await
        .unwrap();
    let row = store.get_job(Scope::System, id).await.unwrap().unwrap();
    let events = store.read_events(Scope::System, id, 0, 100).await.unwrap();
    let ledger = store.ledger(Scope::System, id).await.unwrap();
    drop(store);

    // Reopen at once: dropping the store must have closed the database file.
    let store: DynStore = Arc::new(RedbStore::open(&path).unwrap());
    assert_eq!(store.get_job(Scope::System, id).await.unwrap(), Some(row));
    let again = store.read_events(Scope::System, id, 0, 100).await.unwrap();
    assert_eq!(again, events);
    aetheris_proof::verify_chain(id, &again).unwrap();
    assert_eq!(store.ledger(Scope::System, id).await.unwrap(), ledger);
    assert_eq!(
        store.latest_snapshot(id, u64::MAX).await.unwrap(),
        Some((3, b"state@3".to_vec()))
    );
    let (same, created) = store
        .submit(
            NewJob {
                tenant: tenant.into(),
                idempotency_key: Some("once".into()),
                plan,
                input: json!({"x": 2}),
            },
            None,
        )
        .await
        .unwrap();
    assert!(!created, "the idempotency key survives a reopen");
    assert_eq!(same.job_id, id);

    // The lease and its token survive too: the job is still held, and a later claim
    // continues the token sequence instead of restarting it (no token reuse).
    assert!(store.claim("w2", 60_000, 10).await.unwrap().is_empty());
    store.release("w1", &[(id, token)]).await.unwrap();
    let l2 = store.claim("w2", 60_000, 10).await.unwrap();
    assert_eq!(l2.len(), 1);
    assert!(l2[0].token > token);
    let stale = store
        .append(Append {
            job_id: id,
            token,
            expected_last_seq: 3,
            events: vec![EventBody::JobSucceeded { output: json!(1) }],
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    store
        .append(Append {
            job_id: id,
            token: l2[0].token,
            expected_last_seq: 3,
            events: vec![EventBody::JobSucceeded { output: json!(1) }],
        })
        .await
        .unwrap();
    drop(store);

    // Reopen once more, right after a write, several times in a row.
    for _ in 0..5 {
        let store: DynStore = Arc::new(RedbStore::open(&path).unwrap());
        let row = store.get_job(Scope::System, id).await.unwrap().unwrap();
        assert_eq!(row.status, JobStatus::Succeeded);
        assert_eq!(row.last_seq, 4);
        store.claim("w3", 60_000, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A retention batch that fails inside the writer's transaction leaves every job whole;
/// a second run deletes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_retention_crash_midway_leaves_jobs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).unwrap());
    let crashing = store.clone();
    aetheris_store::testing::conformance::retention_crash_midway_leaves_jobs_whole(
        store,
        |policy, ids| async move { crashing.delete_jobs_crashing_midway(&policy, &ids).await },
    )
    .await;
}
