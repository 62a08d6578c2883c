//! The whole node on PostgreSQL: a throwaway cluster (started from the installed server
//! binaries; the test fails, never skips, if they are missing), migrations at start, and
//! jobs running to completion through the gateway and worker, chains verified; and a
//! worker's drain with jobs handed to it at their submission (`aetheris_store::handoff`).

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

/// A drain gives back every lease, also those of jobs handed to the worker at their
/// submission while it drains: submissions keep coming before, during and after the
/// drain, and once it returns no job is leased to the drained worker; a second worker
/// then runs every job to completion.
#[test]
fn a_drained_worker_keeps_no_job_handed_off_to_it_on_postgres() {
    use aetheris_actors::Worker;
    use aetheris_store::{NewJob, PgStore};
    const JOBS: usize = 60;
    actix_rt::System::new().block_on(async {
        let url = aetheris_store::testing::pg_cluster::fresh_database_url().await;
        let pg = PgStore::connect(&url, 8).await.expect("connect");
        pg.migrate().await.expect("migrate");
        let store: DynStore = Arc::new(pg.clone());
        let plan: aetheris_runtime::Plan = serde_json::from_value(json!({"steps": [
            {"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "needs": ["a"]}
        ]}))
        .unwrap();
        let config = WorkerConfig {
            max_jobs: 8,
            ..WorkerConfig::default()
        };
        let a = Worker::start(store.clone(), ToolRegistry::with_builtins(), config.clone())
            .await
            .expect("worker a");
        let a_id = a.worker_id().to_string();
        // Let a's first claim find nothing, so its slots are on offer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let submitter = {
            let (store, plan) = (store.clone(), plan.clone());
            actix_rt::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..JOBS {
                    let job = NewJob {
                        tenant: "t".into(),
                        idempotency_key: None,
                        plan: plan.clone(),
                        input: json!({}),
                    };
                    ids.push(store.submit(job, None).await.expect("submit").0.job_id);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ids
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        a.drain(Duration::from_millis(500)).await;
        let held = leases_held_by(&pg, &a_id).await;
        assert_eq!(held, 0, "the drained worker kept leases");
        let ids = submitter.await.expect("submitter");
        let b = Worker::start(store.clone(), ToolRegistry::with_builtins(), config)
            .await
            .expect("worker b");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for id in &ids {
            loop {
                let s = store.get_job(Scope::System, *id).await.unwrap().unwrap();
                if s.status == aetheris_runtime::JobStatus::Succeeded {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "job {id} is {:?}",
                    s.status
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let held = leases_held_by(&pg, &a_id).await;
        assert_eq!(held, 0, "a lease of the drained worker after it drained");
        // Only a hands off (b finds a's subscription to the store's hand-off taken).
        assert!(pg.handed_off() >= 1, "worker a took jobs at submission");
        b.drain(Duration::from_millis(500)).await;
    });
}

/// An idle worker's slots are on offer; its drain takes the offer down, so jobs submitted
/// after it are stored claimable, not handed to the drained worker.
#[test]
fn a_drained_worker_takes_no_job_at_submission_on_postgres() {
    use aetheris_actors::Worker;
    use aetheris_store::{NewJob, PgStore};
    actix_rt::System::new().block_on(async {
        let url = aetheris_store::testing::pg_cluster::fresh_database_url().await;
        let pg = PgStore::connect(&url, 4).await.expect("connect");
        pg.migrate().await.expect("migrate");
        let store: DynStore = Arc::new(pg.clone());
        let job = || NewJob {
            tenant: "t".into(),
            idempotency_key: None,
            plan: serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap(),
            input: json!({}),
        };
        let a = Worker::start(
            store.clone(),
            ToolRegistry::with_builtins(),
            WorkerConfig::default(),
        )
        .await
        .expect("worker");
        let a_id = a.worker_id().to_string();
        let mut finished = a.finished();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Until one is handed off (a job that meets the first claim under way is claimed).
        for _ in 0..20 {
            let id = store.submit(job(), None).await.expect("submit").0.job_id;
            while finished.recv().await.expect("finished").0 != id {}
            if pg.handed_off() > 0 {
                break;
            }
        }
        let handed = pg.handed_off();
        assert!(handed >= 1, "the idle worker took a job at its submission");
        // Idle again: its slots are on offer until the drain.
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.drain(Duration::from_millis(200)).await;
        for _ in 0..5 {
            store.submit(job(), None).await.expect("submit");
        }
        assert_eq!(
            pg.handed_off(),
            handed,
            "a job was handed to the drained worker"
        );
        let held = leases_held_by(&pg, &a_id).await;
        assert_eq!(held, 0);
    });
}

/// Jobs leased to `worker` in `pg`'s database now.
async fn leases_held_by(pg: &aetheris_store::PgStore, worker: &str) -> i64 {
    let c = pg.pool().get().await.expect("conn");
    c.query_one(
        "SELECT count(*) FROM jobs WHERE lease_owner = $1",
        &[&worker],
    )
    .await
    .expect("count")
    .get(0)
}
