//! Conformance checks of live processes.

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
        async move { ok(store.announce_process(kind, &id, ttl).await, "announce") }
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
