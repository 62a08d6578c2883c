//! In-process test nodes: a whole Aetheris node (redb store, worker actors, HTTP gateway)
//! on its own actix system thread, with extra tools registered by the test.

use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_api::{start_node, NodeConfig};
use aetheris_store::{DynStore, RedbStore};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct TestNode {
    pub url: String,
    pub store: DynStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub fn start(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore =
            Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).expect("open store"));
        Self::start_on(Some(store), dir, register, worker)
    }

    /// A node on a fresh database of the per-binary throwaway PostgreSQL cluster.
    pub fn start_pg(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(None, dir, register, worker)
    }

    fn start_on(
        store: Option<DynStore>,
        dir: tempfile::TempDir,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                // The PostgreSQL pool must be created on this long-lived system (DESIGN §8).
                let node_store: DynStore = match store {
                    Some(s) => s,
                    None => {
                        let url = aetheris_store::pg_test::fresh_database_url().await;
                        let pg = aetheris_store::PgStore::connect(&url, 8)
                            .await
                            .expect("connect");
                        pg.migrate().await.expect("migrate");
                        Arc::new(pg)
                    }
                };
                let mut tools = ToolRegistry::with_builtins();
                register(&mut tools);
                let cfg = NodeConfig {
                    bind: "127.0.0.1:0".into(),
                    worker,
                    ..NodeConfig::default()
                };
                let (node, server) =
                    start_node(node_store.clone(), tools, cfg).expect("start node");
                addr_tx.send((node.addr, node_store)).expect("send addr");
                let server = actix_rt::spawn(server);
                let _ = stop_rx.await;
                node.shutdown(Duration::from_secs(2)).await;
                let _ = server.await;
            })
        });
        let (addr, store) = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not start");
        TestNode {
            url: format!("http://{addr}"),
            store,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub async fn submit(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c
        .post(format!("{url}/v1/jobs"))
        .json(body)
        .send()
        .await
        .expect("submit");
    let s = r.status().as_u16();
    (s, r.json().await.expect("json"))
}

/// Polls a job until it leaves queued/running (bounded).
pub async fn settle(c: &reqwest::Client, url: &str, id: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let j: Value = c
            .get(format!("{url}/v1/jobs/{id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        match j["status"].as_str() {
            Some("succeeded" | "failed" | "waiting" | "cancelled") => return j,
            _ if tokio::time::Instant::now() > deadline => panic!("job {id} did not settle: {j}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
