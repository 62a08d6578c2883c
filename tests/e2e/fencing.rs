//! Two workers, one job (G3): worker A's lease expires while its side_effect call is in
//! flight; worker B claims the job under a newer fencing token. A's late result and its
//! next `step_started` are rejected by the store, A stops, and A never calls the next tool.
//! B, finding the started step without a result, marks it `outcome_unknown` (G2).

use crate::support::{rt, sample};
use aetheris_actors::{Invocation, Metrics, Tool, ToolError, ToolRegistry, Worker, WorkerConfig};
use aetheris_runtime::{EffectClass, JobStatus, Plan};
use aetheris_store::{DynStore, NewJob, RedbStore, Scope};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A side_effect tool that takes `delay` and counts calls per (worker, invocation key).
struct SlowEffect {
    worker: &'static str,
    delay: Duration,
    calls: Arc<Mutex<HashMap<(String, String), u32>>>,
}

#[async_trait::async_trait]
impl Tool for SlowEffect {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((self.worker.to_string(), call.step.clone()))
            .or_insert(0) += 1;
        tokio::time::sleep(self.delay).await;
        Ok(json!({"done": call.step}))
    }
}

#[test]
fn a_stale_worker_is_fenced_and_calls_nothing_after_losing_its_lease() {
    // It counts A's fenced appends and both workers' grants: alone in its process.
    crate::support::own_process!(a_stale_worker_is_fenced_and_calls_nothing_after_losing_its_lease);
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let calls = Arc::new(Mutex::new(HashMap::new()));
    let (c2, st) = (calls.clone(), store.clone());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let plan: Plan = serde_json::from_value(json!({"steps": [
                {"id": "charge", "tool": "slow"},
                {"id": "notify", "tool": "slow", "needs": ["charge"]}
            ]}))
            .unwrap();
            let (job, _) = st
                .submit(
                    NewJob {
                        tenant: "t".into(),
                        idempotency_key: None,
                        plan,
                        input: Value::Null,
                    },
                    None,
                )
                .await
                .unwrap();
            // Worker A: short lease, heartbeats far apart, so its lease lapses mid-call.
            let mut tools_a = ToolRegistry::with_builtins();
            tools_a.register(
                "slow",
                SlowEffect {
                    worker: "a",
                    delay: Duration::from_millis(1500),
                    calls: c2.clone(),
                },
            );
            let cfg_a = WorkerConfig {
                worker_id: "a".into(),
                lease_ttl_ms: 300,
                heartbeat_ms: 60_000,
                poll_ms: 60_000,
                ..WorkerConfig::default()
            };
            let _a = Worker::start(st.clone(), tools_a, cfg_a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await; // A claimed and called; its lease expired
            let mut tools_b = ToolRegistry::with_builtins();
            tools_b.register(
                "slow",
                SlowEffect {
                    worker: "b",
                    delay: Duration::from_millis(1),
                    calls: c2,
                },
            );
            let cfg_b = WorkerConfig {
                worker_id: "b".into(),
                poll_ms: 50,
                ..WorkerConfig::default()
            };
            let _b = Worker::start(st.clone(), tools_b, cfg_b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2000)).await; // A's call returns and is fenced
            done_tx.send(job.job_id).unwrap();
            actix_rt::System::current().stop();
        })
    });
    let job = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("scenario finished");
    thread.join().unwrap();
    rt().block_on(async {
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls.get(&("a".into(), "charge".into())),
            Some(&1),
            "{calls:?}"
        );
        assert_eq!(
            calls.get(&("a".into(), "notify".into())),
            None,
            "stale worker called a tool after losing its lease: {calls:?}"
        );
        assert_eq!(
            calls.get(&("b".into(), "charge".into())),
            None,
            "side effect repeated by the new owner: {calls:?}"
        );
        let summary = store.get_job(Scope::System, job).await.unwrap().unwrap();
        assert_eq!(
            summary.status,
            JobStatus::Waiting,
            "the in-flight side effect is outcome_unknown"
        );
        let events = store.read_events(Scope::System, job, 0, 100).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
        assert_eq!(
            kinds,
            [
                "job_submitted",
                "step_started",
                "step_outcome_unknown",
                "job_parked"
            ],
            "A's late writes were rejected; B parked the job for a human"
        );
        aetheris_proof::verify_chain(job, &events).unwrap();
        // Only A can be fenced here (B holds the newest token); both were granted the job.
        let m = Metrics::install().render(&[]);
        let fenced = sample(&m, "aetheris_lease_losses_total{reason=\"fenced\"}");
        assert!(fenced >= Some(1.0), "A saw itself fenced: {m}");
        let grants = sample(&m, "aetheris_lease_grants_total");
        assert!(grants >= Some(2.0), "A and B were granted the job: {m}");
    });
}
