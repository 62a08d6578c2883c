//! Retention checks: only finished jobs past their tenant's retention are deleted, a batch
//! is bounded and all-or-nothing (also when it fails midway), a deleted job reads as one
//! that never existed while its transparency leaf stays, and deleting again is a no-op.

use super::*;
use crate::{DueJob, RetentionPolicy};
use std::collections::BTreeMap;
use std::future::Future;

/// A policy deleting `short`'s finished jobs 1 ms after they finish, keeping `forever`'s
/// forever and `long`'s for an hour; every other tenant's jobs are kept (no default), so a
/// shared store's other checks are never touched.
fn policy(short: &str, forever: &str, long: &str) -> RetentionPolicy {
    RetentionPolicy {
        default_ms: None,
        tenants: BTreeMap::from([
            (short.to_string(), Some(1)),
            (forever.to_string(), None),
            (long.to_string(), Some(HOUR_MS)),
        ]),
    }
}

/// A finished (failed) job of `tenant` with a ledger row, a snapshot and an idempotency
/// key, so deleting it has every kind of row to remove.
async fn finished_job(store: &DynStore, tenant: &str, key: &str) -> JobId {
    let (s, _) = ok(
        store.submit(new_job(tenant, Some(key)), None).await,
        "submit",
    );
    let id = s.job_id;
    let l = lease_and_run_a(store, tenant, "gc-w", id).await;
    ok(
        store
            .put_snapshot(id, l.token, 3, b"state@3".to_vec())
            .await,
        "put_snapshot",
    );
    ok(
        store
            .append(append(
                id,
                l.token,
                3,
                vec![EventBody::JobFailed {
                    error: "stop".into(),
                    step: None,
                }],
            ))
            .await,
        "finish",
    );
    id
}

/// A job left waiting on a signal (parked, with a pending command not yet applied).
async fn waiting_job(store: &DynStore, tenant: &str) -> JobId {
    let id = submit(store, tenant).await.job_id;
    let l = lease_and_run_a(store, tenant, "gc-w", id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                3,
                vec![EventBody::JobParked { wake_at_ms: None }],
            ))
            .await,
        "park",
    );
    ok(store.release("gc-w", &[(id, l.token)]).await, "release");
    id
}

/// Lets every finished job pass a 1 ms retention at the store's clock.
async fn let_time_pass() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// `due_jobs` restricted to `tenants` (a shared store holds other checks' jobs).
async fn due_of(
    store: &DynStore,
    policy: &RetentionPolicy,
    limit: usize,
    tenants: &[&str],
) -> Vec<DueJob> {
    let due = ok(store.due_jobs(policy, limit).await, "due_jobs");
    due.into_iter()
        .filter(|d| tenants.contains(&d.tenant.as_str()))
        .collect()
}

/// Asserts that nothing of `id` can be read any more, as for a job that never existed.
async fn assert_gone(store: &DynStore, tenant: &str, id: JobId) {
    assert_eq!(
        ok(store.get_job(Scope::System, id).await, "get_job"),
        None,
        "a deleted job {id} must read as missing"
    );
    match store.read_events(Scope::Tenant(tenant), id, 0, 1000).await {
        Ok(evs) => assert!(evs.is_empty(), "a deleted job {id} keeps events"),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => panic!("conformance: events of deleted job {id}: {e:?}"),
    }
    match store.ledger(Scope::Tenant(tenant), id).await {
        Ok(rows) => assert!(rows.is_empty(), "a deleted job {id} keeps ledger rows"),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => panic!("conformance: ledger of deleted job {id}: {e:?}"),
    }
    assert_eq!(
        ok(store.latest_snapshot(id, u64::MAX).await, "latest_snapshot"),
        None,
        "a deleted job {id} keeps a snapshot"
    );
    assert!(
        matches!(
            store.job_leaf(Scope::Tenant(tenant), id).await,
            Err(StoreError::NotFound(_))
        ),
        "a deleted job {id} must read as missing through job_leaf"
    );
}

/// Asserts that `id` is whole: its row, log, ledger and snapshot all still there.
async fn assert_whole(store: &DynStore, tenant: &str, id: JobId) {
    assert_consistent(store, id).await;
    assert!(
        !ok(store.ledger(Scope::Tenant(tenant), id).await, "ledger").is_empty(),
        "job {id} lost its ledger rows"
    );
    assert!(
        ok(store.latest_snapshot(id, u64::MAX).await, "latest_snapshot").is_some(),
        "job {id} lost its snapshot"
    );
}

/// Only finished jobs past their tenant's retention are found and deleted; queued,
/// running and waiting jobs, jobs of tenants that keep them longer or forever, and
/// jobs named explicitly but not due are never touched. A deleted job reads as missing,
/// its idempotency key is free again, and its transparency leaf stays in the tenant's log.
pub async fn retention_deletes_only_expired_finished_jobs(store: DynStore) {
    let (short, forever, long) = (
        fresh_tenant("gc-short"),
        fresh_tenant("gc-forever"),
        fresh_tenant("gc-long"),
    );
    let p = policy(&short, &forever, &long);
    let f1 = finished_job(&store, &short, "k1").await;
    let f2 = finished_job(&store, &short, "k2").await;
    let queued = submit(&store, &short).await.job_id;
    let running = submit(&store, &short).await.job_id;
    lease_and_run_a(&store, &short, "gc-w", running).await;
    let waiting = waiting_job(&store, &short).await;
    let kept_forever = finished_job(&store, &forever, "k1").await;
    let kept_long = finished_job(&store, &long, "k1").await;
    let leaves_before = ok(store.log_leaves(&short, None).await, "log_leaves");
    assert_eq!(leaves_before.len(), 2, "two finished jobs, two leaves");
    let_time_pass().await;

    let due = due_of(&store, &p, 100, &[&short, &forever, &long]).await;
    let due_ids: BTreeSet<JobId> = due.iter().map(|d| d.job_id).collect();
    assert_eq!(
        due_ids,
        BTreeSet::from([f1, f2]),
        "due_jobs must list exactly the finished jobs past retention"
    );
    for d in &due {
        assert_eq!(d.tenant, short, "a due job names its tenant");
        assert!(d.finished_at_ms > 0, "a due job says when it finished");
    }

    // Naming jobs that are not due changes nothing: status and age are checked again.
    let asked = [f1, f2, queued, running, waiting, kept_forever, kept_long];
    let deleted = ok(store.delete_jobs(&p, &asked).await, "delete_jobs");
    assert_eq!(
        deleted.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([f1, f2]),
        "delete_jobs must delete exactly the due jobs it was given"
    );
    assert_gone(&store, &short, f1).await;
    assert_gone(&store, &short, f2).await;
    for id in [queued, running, waiting] {
        let row = job(&store, id).await;
        assert!(
            !row.status.is_terminal(),
            "an unfinished job {id} must stay as it was"
        );
    }
    assert_eq!(job(&store, waiting).await.status, JobStatus::Waiting);
    assert_consistent(&store, running).await;
    assert_consistent(&store, waiting).await;
    assert_whole(&store, &forever, kept_forever).await;
    assert_whole(&store, &long, kept_long).await;

    // The deletion is visible, not silent: the log keeps both leaves.
    assert_eq!(
        ok(store.log_leaves(&short, None).await, "log_leaves"),
        leaves_before,
        "a deleted job's transparency leaf must stay in its tenant's log"
    );

    // Again: nothing left to delete.
    assert!(
        ok(store.delete_jobs(&p, &asked).await, "delete again").is_empty(),
        "deleting is idempotent"
    );
    assert!(due_of(&store, &p, 100, &[&short]).await.is_empty());

    // The idempotency key of a deleted job is free: the same key makes a new job.
    let (again, created) = ok(
        store.submit(new_job(&short, Some("k1")), None).await,
        "submit with a freed key",
    );
    assert!(
        created && again.job_id != f1,
        "a deleted job's idempotency key must be free again"
    );
}

/// `due_jobs` returns at most `limit` jobs, the most overdue first; deleting batch after
/// batch empties the tenant's finished jobs, each batch deleting what it was given.
pub async fn retention_batches_are_bounded(store: DynStore) {
    let (short, forever, long) = (
        fresh_tenant("gc-batch"),
        fresh_tenant("gc-batch-f"),
        fresh_tenant("gc-batch-l"),
    );
    let p = policy(&short, &forever, &long);
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(finished_job(&store, &short, &format!("b{i}")).await);
    }
    let_time_pass().await;
    let mut deleted = BTreeSet::new();
    for round in 0..10 {
        let due = due_of(&store, &p, 2, &[&short]).await;
        if due.is_empty() {
            break;
        }
        assert!(due.len() <= 2, "round {round}: a batch over its limit");
        assert!(
            due.windows(2).all(|w| w[0].overdue_ms >= w[1].overdue_ms),
            "round {round}: the most overdue come first: {due:?}"
        );
        let ids: Vec<JobId> = due.iter().map(|d| d.job_id).collect();
        let gone = ok(store.delete_jobs(&p, &ids).await, "delete batch");
        assert_eq!(
            gone.len(),
            ids.len(),
            "round {round}: a due batch deletes all"
        );
        deleted.extend(gone);
    }
    assert_eq!(
        deleted,
        jobs.iter().copied().collect::<BTreeSet<_>>(),
        "batch after batch deletes every due job"
    );
    assert_eq!(
        ok(store.log_leaves(&short, None).await, "log_leaves").len(),
        5,
        "every leaf stays"
    );
}

/// A batch that fails midway inside its transaction (a crash before its commit) leaves
/// every one of its jobs whole; running it again deletes them all. `crash` runs a batch
/// that fails midway (each backend's failpoint).
pub async fn retention_crash_midway_leaves_jobs_whole<F, Fut>(store: DynStore, crash: F)
where
    F: FnOnce(RetentionPolicy, Vec<JobId>) -> Fut,
    Fut: Future<Output = crate::Result<Vec<JobId>>>,
{
    let (short, forever, long) = (
        fresh_tenant("gc-crash"),
        fresh_tenant("gc-crash-f"),
        fresh_tenant("gc-crash-l"),
    );
    let p = policy(&short, &forever, &long);
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(finished_job(&store, &short, &format!("c{i}")).await);
    }
    let_time_pass().await;
    assert!(
        crash(p.clone(), jobs.clone()).await.is_err(),
        "the failpoint must fail the batch"
    );
    for id in &jobs {
        assert_whole(&store, &short, *id).await;
    }
    let deleted = ok(store.delete_jobs(&p, &jobs).await, "delete after the crash");
    assert_eq!(
        deleted.into_iter().collect::<BTreeSet<_>>(),
        jobs.iter().copied().collect::<BTreeSet<_>>(),
        "re-running the batch after a crash deletes every job"
    );
    for id in &jobs {
        assert_gone(&store, &short, *id).await;
    }
}
