//! The whole node on PostgreSQL: a throwaway cluster (started from the installed server
//! binaries; the test fails, never skips, if they are missing), migrations at start, and
//! jobs running to completion through the gateway and worker, chains verified.

use crate::support::{rt, settle, submit};
use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_api::{start_node, NodeConfig};
use aetheris_store::{DynStore, PgStore, Scope};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn jobs_run_to_completion_on_postgres() {
    let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let pg = PgStore::connect(&url, 8).await.expect("connect");
            pg.migrate().await.expect("migrate");
            let handed = pg.clone();
            let store: DynStore = Arc::new(pg);
            let cfg = NodeConfig {
                bind: "127.0.0.1:0".into(),
                worker: WorkerConfig::default(),
                ..NodeConfig::default()
            };
            let (node, server) = start_node(store.clone(), ToolRegistry::with_builtins(), cfg)
                .await
                .expect("node");
            addr_tx.send((node.addr, store, handed)).expect("send");
            let server = actix_rt::spawn(server);
            let _ = stop_rx.await;
            node.shutdown(Duration::from_secs(2)).await;
            let _ = server.await;
        })
    });
    let (addr, store, pg) = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node started");
    let base = format!("http://{addr}");
    rt().block_on(async {
        let c = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..20 {
            let (s, j) = submit(&c, &base, &json!({"input": {"i": i}, "idempotency_key": format!("k{i}"), "plan": {"steps": [
                {"id": "a", "tool": "echo", "args": {"i": "${input.i}"}},
                {"id": "b", "tool": "echo", "needs": ["a"], "args": {"twice": ["${steps.a.output.i}", "${steps.a.output.i}"]}}
            ]}})).await;
            assert_eq!(s, 201, "{j}");
            ids.push(j["job_id"].as_str().unwrap().to_string());
        }
        let (s, j) = submit(&c, &base, &json!({"input": {"i": 3}, "idempotency_key": "k3", "plan": {"steps": [
            {"id": "a", "tool": "echo", "args": {"i": "${input.i}"}},
            {"id": "b", "tool": "echo", "needs": ["a"], "args": {"twice": ["${steps.a.output.i}", "${steps.a.output.i}"]}}
        ]}})).await;
        assert_eq!(s, 200, "an identical repeat of a key returns the existing job");
        assert_eq!(j["job_id"].as_str(), Some(ids[3].as_str()));
        let (s, p) = submit(&c, &base, &json!({"idempotency_key": "k3", "plan": {"steps": [{"id": "a", "tool": "echo"}]}})).await;
        assert_eq!(s, 409, "the same key with another request is a conflict: {p}");
        for (i, id) in ids.iter().enumerate() {
            let j = settle(&c, &base, id, Duration::from_secs(60)).await;
            assert_eq!(j["status"], "succeeded", "{j}");
            assert_eq!(j["output"]["b"]["twice"], json!([i, i]));
            let job = id.parse().unwrap();
            let events = store.read_events(Scope::System, job, 0, 100).await.unwrap();
            aetheris_proof::verify_chain(job, &events).expect("chain");
        }
        // The node's worker was idle between these one-at-a-time submissions: they were
        // handed to it in their own commits, with no claim (some may have met a poll's
        // claim under way, and been claimed instead).
        assert!(pg.handed_off() >= 1, "no job was handed off");
    });
    let _ = stop_tx.send(());
    thread.join().unwrap();
}
