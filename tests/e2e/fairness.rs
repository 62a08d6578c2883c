//! Fairness across tenants: with tenant A's 2,000 jobs queued first, tenant B's 10 jobs
//! start within a bounded wait (on both stores), because claims round-robin across
//! tenants with runnable work (a backlog cannot starve a small tenant); and a tenant
//! whose jobs hold every slot they may cannot take a worker's last ones, so another
//! tenant's new job starts at once; on PostgreSQL the same holds for jobs handed to the
//! worker at their submission.

use crate::support::rt;
use aetheris_actors::{
    lease::tenant_share, Invocation, Tool, ToolError, ToolRegistry, Worker, WorkerConfig,
};
use aetheris_runtime::{EffectClass, JobId, JobStatus, Plan};
use aetheris_store::{DynStore, NewJob, RedbStore, Scope};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn submit_to(store: &DynStore, tenant: &str, plan: &Plan) -> JobId {
    let (s, _) = store
        .submit(
            NewJob {
                tenant: tenant.into(),
                idempotency_key: None,
                plan: plan.clone(),
                input: Value::Null,
            },
            None,
        )
        .await
        .unwrap();
    s.job_id
}

/// Calls of tenants other than `b` wait at a gate until the test opens it; `a`'s waiting
/// calls, and all waiting calls, are counted (now and at most).
#[derive(Clone)]
struct Gate {
    open: Arc<tokio::sync::Semaphore>,
    a_waiting: Arc<AtomicUsize>,
    a_most: Arc<AtomicUsize>,
    all_waiting: Arc<AtomicUsize>,
    all_most: Arc<AtomicUsize>,
    /// The jobs whose calls reached the gate, in order.
    order: Arc<std::sync::Mutex<Vec<JobId>>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: Arc::new(tokio::sync::Semaphore::new(0)),
            a_waiting: Arc::default(),
            a_most: Arc::default(),
            all_waiting: Arc::default(),
            all_most: Arc::default(),
            order: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Tool for Gate {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        self.order.lock().unwrap().push(call.job_id);
        if call.tenant != "b" {
            let all = self.all_waiting.fetch_add(1, Ordering::SeqCst) + 1;
            self.all_most.fetch_max(all, Ordering::SeqCst);
            if call.tenant == "a" {
                let now = self.a_waiting.fetch_add(1, Ordering::SeqCst) + 1;
                self.a_most.fetch_max(now, Ordering::SeqCst);
            }
            let permit = self.open.acquire().await;
            drop(permit);
            if call.tenant == "a" {
                self.a_waiting.fetch_sub(1, Ordering::SeqCst);
            }
            self.all_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(json!({}))
    }
}

/// Waits until job `id` succeeded; fails saying `what` after `limit`.
async fn until_succeeded(store: &DynStore, id: JobId, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while store
        .get_job(Scope::System, id)
        .await
        .unwrap()
        .unwrap()
        .status
        != JobStatus::Succeeded
    {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a worker of `max_jobs` slots with the `gate` tool on `store` until the returned
/// sender is used (or dropped).
fn gated_worker(
    store: &DynStore,
    gate: &Gate,
    max_jobs: usize,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (st, gate) = (store.clone(), gate.clone());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut tools = ToolRegistry::with_builtins();
            tools.register("gate", gate);
            let config = WorkerConfig {
                max_jobs,
                poll_ms: 20,
                ..WorkerConfig::default()
            };
            let _w = Worker::start(st, tools, config).await.expect("worker");
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            actix_rt::System::current().stop();
        })
    });
    (tx, thread)
}

/// Two claims are under way at once, yet a worker never runs more than `max_jobs` jobs:
/// two tenants' backlogs fill exactly its slots, each within its share.
#[test]
fn a_worker_never_runs_more_than_max_jobs() {
    const MAX_JOBS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("m.redb")).unwrap());
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "hold", "tool": "gate"}]})).unwrap();
    let gate = Gate::default();
    let ids: Vec<JobId> = rt().block_on(async {
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(submit_to(&store, if i % 2 == 0 { "a" } else { "c" }, &plan).await);
        }
        ids
    });
    let (stop, thread) = gated_worker(&store, &gate, MAX_JOBS);
    rt().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.all_waiting.load(Ordering::SeqCst) < MAX_JOBS {
            assert!(Instant::now() < deadline, "the jobs did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Many claims later, still no more than the worker's slots.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(gate.all_most.load(Ordering::SeqCst), MAX_JOBS);
        // Jobs finish one at a time: every finish triggers a claim while others are under
        // way, and still the worker never holds more than its slots.
        for _ in 0..25 {
            gate.open.add_permits(1);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        assert_eq!(gate.all_most.load(Ordering::SeqCst), MAX_JOBS);
        assert!(gate.a_most.load(Ordering::SeqCst) <= tenant_share(MAX_JOBS));
        gate.open.add_permits(1_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in &ids {
            while store
                .get_job(Scope::System, *id)
                .await
                .unwrap()
                .unwrap()
                .status
                != JobStatus::Succeeded
            {
                assert!(Instant::now() < deadline, "the jobs did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(gate.all_most.load(Ordering::SeqCst), MAX_JOBS);
    });
    let _ = stop.send(());
    thread.join().unwrap();
}

#[test]
fn one_tenant_cannot_take_every_slot_of_a_worker() {
    const MAX_JOBS: usize = 8;
    let share = tenant_share(MAX_JOBS);
    assert!(share < MAX_JOBS, "a worker of {MAX_JOBS} keeps a slot free");
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "hold", "tool": "gate"}]})).unwrap();
    let gate = Gate::default();
    let (open, a_waiting, a_most) = (
        gate.open.clone(),
        gate.a_waiting.clone(),
        gate.a_most.clone(),
    );
    let a_ids: Vec<JobId> = rt().block_on(async {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(submit_to(&store, "a", &plan).await);
        }
        ids
    });
    let (tx, thread) = gated_worker(&store, &gate, MAX_JOBS);
    let status = |id: JobId| {
        let store = store.clone();
        async move {
            store
                .get_job(Scope::System, id)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    rt().block_on(async {
        // a's jobs fill the worker up to a's share, and no further, even after many polls.
        let deadline = Instant::now() + Duration::from_secs(20);
        while a_waiting.load(Ordering::SeqCst) < share {
            assert!(Instant::now() < deadline, "a's jobs did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            a_most.load(Ordering::SeqCst),
            share,
            "tenant a holds at most its share of the worker's {MAX_JOBS} slots"
        );
        // b's new job takes a free slot while every one of a's is still held.
        let b = submit_to(&store, "b", &plan).await;
        until_succeeded(
            &store,
            b,
            Duration::from_secs(10),
            "tenant b's job waited behind a's",
        )
        .await;
        assert_eq!(
            a_waiting.load(Ordering::SeqCst),
            share,
            "a's jobs still hold"
        );
        // Open the gate: all of a's jobs finish, never more than its share at once.
        open.add_permits(1_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in &a_ids {
            while status(*id).await != JobStatus::Succeeded {
                assert!(Instant::now() < deadline, "a's jobs did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(a_most.load(Ordering::SeqCst), share);
    });
    let _ = tx.send(());
    thread.join().unwrap();
}

/// The store under test, opened on the worker's actix system (a PostgreSQL pool must live
/// on the system that uses it, DESIGN §8).
type OpenStore = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, DynStore> + Send>;

#[test]
fn a_small_tenant_is_not_starved_by_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.redb");
    small_tenant_is_not_starved(Box::new(move || {
        Box::pin(async move { Arc::new(RedbStore::open(&path).unwrap()) as DynStore })
    }));
}

#[test]
fn a_small_tenant_is_not_starved_by_a_backlog_on_postgres() {
    small_tenant_is_not_starved(Box::new(|| {
        Box::pin(async {
            let url = aetheris_store::testing::pg_cluster::fresh_database_url().await;
            let pg = aetheris_store::PgStore::connect(&url, 8)
                .await
                .expect("connect");
            pg.migrate().await.expect("migrate");
            Arc::new(pg) as DynStore
        })
    }));
}

/// Tenant A's 2,000 jobs are stored before any worker runs, then tenant B's 10; B's all
/// finish while A has finished fewer than half of its own.
fn small_tenant_is_not_starved(open: OpenStore) {
    let plan: Plan = serde_json::from_value(json!({"steps": [
        {"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "needs": ["a"]}
    ]}))
    .unwrap();
    let (store_tx, store_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let st = open().await;
            store_tx.send(st.clone()).unwrap();
            // The backlog is stored before the worker starts.
            let go = tokio::task::spawn_blocking(move || go_rx.recv()).await;
            if !matches!(go, Ok(Ok(()))) {
                return;
            }
            let config = WorkerConfig {
                max_jobs: 16,
                ..WorkerConfig::default()
            };
            let _w = Worker::start(st, ToolRegistry::with_builtins(), config)
                .await
                .expect("worker");
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            actix_rt::System::current().stop();
        })
    });
    let store: DynStore = store_rx.recv().expect("the store opens");
    // One runtime for every call from here: PostgreSQL connections made on it live as long
    // as it does, and the worker may be handed them by the pool.
    let rt = rt();
    let b_ids = rt.block_on(async {
        for _ in 0..2000 {
            submit_to(&store, "a", &plan).await;
        }
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(submit_to(&store, "b", &plan).await);
        }
        ids
    });
    go_tx.send(()).unwrap();
    let t0 = Instant::now();
    rt.block_on(async {
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

/// On PostgreSQL a worker with free slots takes new jobs at their submission (hand-off:
/// leased in the submission's commit, no claim; `aetheris_store::handoff`). Tenant a's
/// jobs, submitted while the worker is idle, still fill it only up to a's share: the offer
/// carries the share, and the job that does not fit closes it and waits for a claim.
/// Tenant b's new job then starts in the slot kept free while a's still hold. And while
/// jobs finish one at a time and new ones arrive (hand-offs and claims mixed), the worker
/// never runs more jobs than its slots.
#[test]
fn handed_off_jobs_keep_to_the_share_and_the_slots_on_postgres() {
    const MAX_JOBS: usize = 8;
    let share = tenant_share(MAX_JOBS);
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "hold", "tool": "gate"}]})).unwrap();
    let gate = Gate::default();
    let (pg, store, stop_tx, thread) = pg_gated_worker(
        &gate,
        WorkerConfig {
            max_jobs: MAX_JOBS,
            ..WorkerConfig::default()
        },
    );
    let rt = rt();
    let submit_many = |tenant: &'static str, n: usize| {
        let (store, plan) = (store.clone(), plan.clone());
        async move {
            let subs = (0..n).map(|_| {
                let (store, plan) = (store.clone(), plan.clone());
                async move { submit_to(&store, tenant, &plan).await }
            });
            futures::future::join_all(subs).await
        }
    };
    rt.block_on(async {
        // The worker is idle (its first claim found nothing): its slots are on offer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ids = submit_many("a", 20).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.a_waiting.load(Ordering::SeqCst) < share {
            assert!(Instant::now() < deadline, "a's jobs did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            gate.a_most.load(Ordering::SeqCst),
            share,
            "tenant a holds at most its share of the worker's {MAX_JOBS} slots"
        );
        assert!(
            pg.handed_off() >= 1,
            "the idle worker took jobs at submission"
        );
        // b's new job takes the free slot while every one of a's is still held.
        let b = submit_to(&store, "b", &plan).await;
        until_succeeded(
            &store,
            b,
            Duration::from_secs(10),
            "tenant b's job waited behind a's",
        )
        .await;
        assert_eq!(
            gate.a_waiting.load(Ordering::SeqCst),
            share,
            "a's jobs still hold"
        );
        // Jobs finish one at a time while new ones of two tenants arrive.
        for i in 0..24 {
            gate.open.add_permits(1);
            ids.extend(submit_many(if i % 2 == 0 { "a" } else { "c" }, 1).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gate.all_most.load(Ordering::SeqCst) <= MAX_JOBS);
        assert_eq!(gate.a_most.load(Ordering::SeqCst), share);
        gate.open.add_permits(1_000);
        for id in &ids {
            until_succeeded(
                &store,
                *id,
                Duration::from_secs(30),
                "the jobs did not finish",
            )
            .await;
        }
        assert!(
            gate.all_most.load(Ordering::SeqCst) <= MAX_JOBS,
            "never more jobs than slots: {}",
            gate.all_most.load(Ordering::SeqCst)
        );
        assert_eq!(gate.a_most.load(Ordering::SeqCst), share);
    });
    let _ = stop_tx.send(());
    thread.join().unwrap();
}

/// A worker with the `gate` tool on a fresh PostgreSQL database, its pool opened on the
/// worker's own actix system (DESIGN §8); runs until the returned sender is used.
fn pg_gated_worker(
    gate: &Gate,
    config: WorkerConfig,
) -> (
    aetheris_store::PgStore,
    DynStore,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (store_tx, store_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let gate = gate.clone();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let url = aetheris_store::testing::pg_cluster::fresh_database_url().await;
            let pg = aetheris_store::PgStore::connect(&url, 8)
                .await
                .expect("connect");
            pg.migrate().await.expect("migrate");
            let st: DynStore = Arc::new(pg.clone());
            let mut tools = ToolRegistry::with_builtins();
            tools.register("gate", gate);
            let _w = Worker::start(st.clone(), tools, config)
                .await
                .expect("worker");
            store_tx.send((pg, st)).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            actix_rt::System::current().stop();
        })
    });
    let (pg, store) = store_rx.recv().expect("the store opens");
    (pg, store, stop_tx, thread)
}

/// A job that found no free slot at its submission waits for a claim, and a job submitted
/// after a slot frees up must not take that slot first by hand-off: the first job closed
/// the worker's offer, so the freed slot goes to a claim, which takes the oldest job. (No
/// poll runs in this test: only the closed offer can get the waiting job started.)
#[test]
fn a_job_waiting_for_a_slot_is_not_overtaken_by_a_later_hand_off_on_postgres() {
    const MAX_JOBS: usize = 2;
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "hold", "tool": "gate"}]})).unwrap();
    let gate = Gate::default();
    let (pg, store, stop_tx, thread) = pg_gated_worker(
        &gate,
        WorkerConfig {
            max_jobs: MAX_JOBS,
            poll_ms: 600_000,
            ..WorkerConfig::default()
        },
    );
    rt().block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = [
            submit_to(&store, "a", &plan).await,
            submit_to(&store, "a", &plan).await,
        ];
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.all_waiting.load(Ordering::SeqCst) < MAX_JOBS {
            assert!(Instant::now() < deadline, "the first jobs did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The second at least: the first may meet the worker's first claim under way.
        assert!(
            pg.handed_off() >= 1,
            "taken at submission by the idle worker"
        );
        // The worker is full: this job waits, claimable.
        let waiting = submit_to(&store, "a", &plan).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(gate.order.lock().unwrap().len(), 2, "no third slot");
        // One slot frees up; a later job is submitted once the worker has seen it.
        gate.open.add_permits(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = submit_to(&store, "a", &plan).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.order.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "no job took the freed slot");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let order = gate.order.lock().unwrap().clone();
        let mut first = order[..2].to_vec();
        first.sort();
        let mut held = held.to_vec();
        held.sort();
        assert_eq!(first, held, "the first two, handed off, in either order");
        assert_eq!(
            order[2], waiting,
            "the waiting job got the freed slot, not {later}"
        );
        gate.open.add_permits(1_000);
    });
    let _ = stop_tx.send(());
    thread.join().unwrap();
}
