//! Conformance checks of live processes, what they report, and the operator's figures.

use super::*;

/// Live processes (for shares of global limits): counted per kind while announced, gone
/// at once when retired and by themselves when their announcement expires; a process
/// always counts itself.
pub async fn live_processes_are_counted_per_kind(store: DynStore) {
    use crate::ProcessKind::{Gateway, Worker};
    let w = |n: u32| format!("conformance-worker-{n}-{}", JobId::new());
    let (w1, w2, w3) = (w(1), w(2), w(3));
    let g1 = format!("conformance-gateway-{}", JobId::new());
    let announce = |kind, id: &str, ttl| {
        let (store, id) = (store.clone(), id.to_string());
        async move {
            ok(
                store.announce_process(kind, &id, ttl, "{}").await,
                "announce",
            )
        }
    };
    // Earlier runs against the same database may have left live rows: count from here.
    let base = announce(Worker, &w1, HOUR_MS).await - 1;
    assert_eq!(
        announce(Worker, &w2, HOUR_MS).await,
        base + 2,
        "a second worker"
    );
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 2,
        "renewing counts once"
    );
    let gateways = announce(Gateway, &g1, HOUR_MS).await;
    assert!(gateways >= 1, "a gateway counts itself");
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 2,
        "gateways are not workers"
    );
    ok(store.retire_process(Worker, &w2).await, "retire");
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 1,
        "retired at once"
    );
    assert_eq!(
        announce(Worker, &w3, 1).await,
        base + 2,
        "a short announcement"
    );
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 1,
        "an expired announcement is not live"
    );
    ok(store.retire_process(Worker, &w1).await, "retire");
    ok(store.retire_process(Gateway, &g1).await, "retire");
    ok(
        store.retire_process(Worker, &w3).await,
        "retiring twice is harmless",
    );
}

/// A process's report is listed with its announcement, as the last one made; an expired
/// announcement is listed as not live (until it is forgotten); a retired one is gone.
pub async fn process_reports_are_listed(store: DynStore) {
    use crate::ProcessKind::{Gateway, Worker};
    let w = format!("conformance-report-worker-{}", JobId::new());
    let g = format!("conformance-report-gateway-{}", JobId::new());
    let find = |all: &[crate::ProcessStatus], id: &str| all.iter().find(|p| p.id == id).cloned();
    ok(
        store
            .announce_process(Worker, &w, HOUR_MS, r#"{"n":1}"#)
            .await,
        "announce",
    );
    ok(
        store
            .announce_process(Worker, &w, HOUR_MS, r#"{"n":2}"#)
            .await,
        "announce again",
    );
    ok(
        store.announce_process(Gateway, &g, 1, "{}").await,
        "announce briefly",
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let all = ok(store.list_processes().await, "list");
    let worker = find(&all, &w).expect("the worker is listed");
    assert_eq!(worker.kind, Worker);
    assert!(worker.live);
    assert_eq!(worker.report, r#"{"n":2}"#, "the last report wins");
    assert_eq!(worker.ttl_ms, Some(HOUR_MS));
    let age = worker.heartbeat_age_ms.expect("an age");
    assert!((20..60_000).contains(&age), "announced ~30 ms ago: {age}");
    let gateway = find(&all, &g).expect("an expired announcement is still listed");
    assert_eq!(gateway.kind, Gateway);
    assert!(!gateway.live, "its announcement expired");
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    assert_eq!(all, sorted, "ordered by kind and id");
    ok(store.retire_process(Worker, &w).await, "retire");
    ok(store.retire_process(Gateway, &g).await, "retire");
    let all = ok(store.list_processes().await, "list");
    assert!(
        find(&all, &w).is_none() && find(&all, &g).is_none(),
        "retired: gone"
    );
}

/// The operator's figures: a queued job is backlog until leased; a step whose outcome is
/// unknown is counted, with its age, until it is confirmed; tenants without either are
/// not listed.
pub async fn operational_figures_show_backlog_and_unknown_outcomes(store: DynStore) {
    let tenant = fresh_tenant("ops");
    let quiet = fresh_tenant("ops-quiet");
    let figures = |store: DynStore, tenant: String| async move {
        let all = ok(store.operational_figures().await, "figures");
        all.tenants.into_iter().find(|t| t.tenant == tenant)
    };
    park_claimable(&store).await;
    submit(&store, &tenant).await;
    let stuck = submit(&store, &tenant).await.job_id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = figures(store.clone(), tenant.clone())
        .await
        .expect("a tenant with backlog is listed");
    assert_eq!((b.runnable, b.outcome_unknown), (2, 0), "{b:?}");
    assert!(b.runnable_oldest_ms >= 10, "{b:?}");
    // One job leased: no longer backlog. Its step's outcome becomes unknown.
    let l = lease_job(&store, "ops-w", HOUR_MS, stuck).await;
    ok(
        store
            .append(append(
                stuck,
                l.token,
                1,
                vec![
                    started(&tenant, stuck, "c", 1, EffectClass::SideEffect, l.token),
                    EventBody::StepOutcomeUnknown {
                        step: "c".into(),
                        attempt: 1,
                        reason: "lost".into(),
                    },
                    EventBody::JobParked { wake_at_ms: None },
                ],
            ))
            .await,
        "outcome unknown",
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = figures(store.clone(), tenant.clone())
        .await
        .expect("listed");
    assert_eq!(b.outcome_unknown, 1, "{b:?}");
    assert!(b.outcome_unknown_oldest_ms >= 10, "{b:?}");
    assert_eq!(b.runnable, 1, "the leased job is no backlog: {b:?}");
    // A tenant whose only job is leased has nothing to show.
    let busy = submit(&store, &quiet).await.job_id;
    lease_job(&store, "ops-w", HOUR_MS, busy).await;
    assert_eq!(figures(store.clone(), quiet).await, None);
    let migrations = ok(store.operational_figures().await, "figures").migrations_applied;
    if let Some(n) = migrations {
        assert!(n >= 1, "a migrated database has applied migrations");
    }
}
