//! Fairness across tenants: with tenant A's 2,000 jobs queued first, tenant B's 10 jobs
//! start within a bounded wait, because claims round-robin across tenants with runnable
//! work (a backlog cannot starve a small tenant).

use crate::support::rt;
use aetheris_actors::{start_worker, Metrics, Shared, ToolRegistry, WorkerConfig};
use aetheris_runtime::{JobStatus, Plan};
use aetheris_store::{DynStore, NewJob, RedbStore, Scope};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_small_tenant_is_not_starved_by_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("f.redb")).unwrap());
    let plan: Plan = serde_json::from_value(json!({"steps": [
        {"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "needs": ["a"]}
    ]}))
    .unwrap();
    // The backlog is stored before any worker runs.
    let b_ids = rt().block_on(async {
        for _ in 0..2000 {
            store
                .submit(
                    NewJob {
                        tenant: "a".into(),
                        idempotency_key: None,
                        plan: plan.clone(),
                        input: Value::Null,
                    },
                    None,
                )
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        for _ in 0..10 {
            let (s, _) = store
                .submit(
                    NewJob {
                        tenant: "b".into(),
                        idempotency_key: None,
                        plan: plan.clone(),
                        input: Value::Null,
                    },
                    None,
                )
                .await
                .unwrap();
            ids.push(s.job_id);
        }
        ids
    });
    let st = store.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let (finished, _) = tokio::sync::broadcast::channel(16);
            let shared = Shared {
                store: st,
                tools: ToolRegistry::with_builtins(),
                metrics: Arc::new(Metrics::default()),
                config: Arc::new(WorkerConfig {
                    max_jobs: 16,
                    ..WorkerConfig::default()
                }),
                finished,
            };
            let _w = start_worker(shared);
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            actix_rt::System::current().stop();
        })
    });
    let t0 = Instant::now();
    rt().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut done = 0;
            for id in &b_ids {
                if store.get_job(Scope::System, *id).await.unwrap().unwrap().status == JobStatus::Succeeded {
                    done += 1;
                }
            }
            if done == b_ids.len() {
                break;
            }
            assert!(Instant::now() < deadline, "tenant b's jobs starved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waited = t0.elapsed();
        let a_done = store
            .count_by_status()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.tenant == "a" && c.status == JobStatus::Succeeded)
            .map(|c| c.count)
            .sum::<u64>();
        println!("tenant b's 10 jobs all finished after {waited:?}, while tenant a finished {a_done} of 2000");
        // Round robin: b's 10 jobs are among the first claims, not behind a's 2,000.
        assert!(a_done < 1000, "b finished only after {a_done} of a's jobs");
    });
    let _ = tx.send(());
    thread.join().unwrap();
}
