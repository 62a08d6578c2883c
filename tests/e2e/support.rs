//! In-process test nodes: a whole Aetheris node (redb store, worker actors, HTTP gateway)
//! on its own actix system thread, with extra tools registered by the test; and
//! `own_process!`, for tests that count metrics.
//!
//! The metrics recorder is process-wide (one per process, as in production), so every node
//! of this test binary adds to the same series. A test that asserts on what its node
//! counted starts with `own_process!(its_name)`: it then runs again, alone, in a child
//! process of this test binary, and passes if that run passed.

use aetheris_actors::{ToolRegistry, WorkerConfig};
use aetheris_api::{start_node, NodeConfig};
use aetheris_store::{DynStore, RedbStore};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct TestNode {
    /// The database of a PostgreSQL node (a restart connects anew: a pool dies with the
    /// actix system that created it, DESIGN §8).
    pg_url: Option<String>,
    pub url: String,
    pub store: DynStore,
    /// true: drain (graceful); false: stop the actor system abruptly (a crash).
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub fn start(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        Self::start_with_auth(register, worker, None)
    }

    /// A node on the embedded store with bearer-token authentication.
    pub fn start_with_auth(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
        auth: Option<aetheris_api::auth::AuthConfig>,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore =
            Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).expect("open store"));
        Self::start_on_auth(
            Some(store),
            None,
            dir,
            register,
            worker,
            auth,
            Box::new(|_| {}),
        )
    }

    /// A node on the embedded store (no auth) whose gateway configuration `tune` adjusts
    /// (connection limits, body deadline).
    pub fn start_tuned(tune: impl FnOnce(&mut NodeConfig) + Send + 'static) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore =
            Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).expect("open store"));
        Self::start_on_auth(
            Some(store),
            None,
            dir,
            |_| {},
            WorkerConfig::default(),
            None,
            Box::new(tune),
        )
    }

    /// A node on a fresh database of the per-binary throwaway PostgreSQL cluster.
    pub fn start_pg(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
        Self::start_on(None, Some(url), dir, register, worker)
    }

    /// A node (gateway and worker) on the existing PostgreSQL database `url`, next to
    /// other processes using it.
    pub fn start_pg_at(
        url: &str,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_on(None, Some(url.to_string()), dir, register, worker)
    }

    /// A node on a fresh PostgreSQL database with bearer-token authentication.
    pub fn start_pg_with_auth(
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
        auth: Option<aetheris_api::auth::AuthConfig>,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
        Self::start_on_auth(
            None,
            Some(url),
            dir,
            register,
            worker,
            auth,
            Box::new(|_| {}),
        )
    }

    /// A node on the embedded store or (`pg`) a fresh PostgreSQL database, with `auth`,
    /// whose configuration `tune` adjusts (e.g. an evidence signing key).
    pub fn start_configured(
        pg: bool,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
        auth: Option<aetheris_api::auth::AuthConfig>,
        tune: impl FnOnce(&mut NodeConfig) + Send + 'static,
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, url) = if pg {
            let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
            (None, Some(url))
        } else {
            let store: DynStore =
                Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).expect("open store"));
            (Some(store), None)
        };
        Self::start_on_auth(store, url, dir, register, worker, auth, Box::new(tune))
    }

    fn start_on(
        store: Option<DynStore>,
        pg_url: Option<String>,
        dir: tempfile::TempDir,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        Self::start_on_auth(store, pg_url, dir, register, worker, None, Box::new(|_| {}))
    }

    fn start_on_auth(
        store: Option<DynStore>,
        pg_url: Option<String>,
        dir: tempfile::TempDir,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
        auth: Option<aetheris_api::auth::AuthConfig>,
        tune: Box<dyn FnOnce(&mut NodeConfig) + Send>,
    ) -> TestNode {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let url_for_node = pg_url.clone();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                // The PostgreSQL pool must be created on this long-lived system (DESIGN §8).
                let node_store: DynStore = match store {
                    Some(s) => s,
                    None => {
                        let url = url_for_node.expect("a store or a database url");
                        let pg = aetheris_store::PgStore::connect(&url, 8)
                            .await
                            .expect("connect");
                        pg.migrate().await.expect("migrate");
                        Arc::new(pg)
                    }
                };
                let mut tools = ToolRegistry::with_builtins();
                register(&mut tools);
                let mut cfg = NodeConfig {
                    bind: "127.0.0.1:0".into(),
                    worker,
                    auth,
                    ..NodeConfig::default()
                };
                tune(&mut cfg);
                let (node, server) = start_node(node_store.clone(), tools, cfg)
                    .await
                    .expect("start node");
                addr_tx.send((node.addr, node_store)).expect("send addr");
                let server = actix_rt::spawn(server);
                match stop_rx.await {
                    Ok(false) => {
                        // Crash: no drain, no lease release; the HTTP server stops.
                        node.server.stop(false).await;
                        actix_rt::System::current().stop();
                    }
                    _ => {
                        node.shutdown(Duration::from_secs(2)).await;
                        let _ = server.await;
                    }
                }
            })
        });
        let (addr, store) = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not start");
        TestNode {
            pg_url,
            url: format!("http://{addr}"),
            store,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl TestNode {
    /// Kills the node's actors and gateway without draining (leases stay held until they
    /// expire), waits `down`, and starts a new node on the same store with `register`.
    pub fn crash_and_restart(
        mut self,
        down: Duration,
        register: impl FnOnce(&mut ToolRegistry) + Send + 'static,
        worker: WorkerConfig,
    ) -> TestNode {
        if let Some(s) = self.stop.take() {
            let _ = s.send(false);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::thread::sleep(down);
        let dir = tempfile::tempdir().expect("tempdir");
        let old_dir = std::mem::replace(&mut self._dir, dir);
        match self.pg_url.clone() {
            Some(url) => Self::start_on(None, Some(url), old_dir, register, worker),
            None => Self::start_on(Some(self.store.clone()), None, old_dir, register, worker),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
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

/// An HTTP server of a test on loopback, on a thread with its own actix system; stopped and
/// joined when dropped. `bind` builds it there (an `HttpServer` bound to `127.0.0.1:0`)
/// and returns its address and the running server.
pub struct LoopbackServer {
    pub url: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    pub fn start(
        what: &'static str,
        bind: impl FnOnce() -> std::io::Result<(std::net::SocketAddr, actix_web::dev::Server)>
            + Send
            + 'static,
    ) -> LoopbackServer {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let (addr, running) = bind().unwrap_or_else(|e| panic!("bind {what}: {e}"));
                tx.send((addr, running.handle())).expect("send");
                let _ = running.await;
            })
        });
        let (addr, handle) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} started"));
        LoopbackServer {
            url: format!("http://{addr}"),
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        rt().block_on(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A counting HTTP stub (a real server on loopback): counts calls per `Idempotency-Key`
/// and answers 503 to the first `fail_first` calls of each key, then 200.
pub struct Stub {
    pub url: String,
    pub calls: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    _server: LoopbackServer,
}

impl Stub {
    pub fn start(fail_first: u32) -> Stub {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let calls: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
        let c2 = calls.clone();
        let server = LoopbackServer::start("stub", move || {
            let server = HttpServer::new(move || {
                let calls = c2.clone();
                App::new().default_service(web::to(move |req: HttpRequest| {
                    let calls = calls.clone();
                    async move {
                        let key = req
                            .headers()
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let n = {
                            let mut m = calls.lock().unwrap();
                            let n = m.entry(key).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if n <= fail_first {
                            HttpResponse::ServiceUnavailable().json(serde_json::json!({"n": n}))
                        } else {
                            HttpResponse::Ok().json(serde_json::json!({"ok": true, "n": n}))
                        }
                    }
                }))
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")?;
            Ok((server.addrs()[0], server.run()))
        });
        Stub {
            url: server.url.clone(),
            calls,
            _server: server,
        }
    }
}

/// A number in `0..modulus` fixed by `key`: a job body drawn at random must be the same for
/// every submission that reuses an idempotency key (a different body is a 409).
pub fn keyed_draw(key: &str, modulus: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() % modulus.max(1)
}

/// Runs the calling test (`module::name` in this binary) in a child process of its own and
/// returns false when that run passed (the caller returns), or true inside the child (the
/// caller goes on with its body). Panics with the child's output if it failed, or if the
/// name matched no test.
pub fn in_own_process(test: &str) -> bool {
    const CHILD: &str = "AETHERIS_E2E_OWN_PROCESS";
    if std::env::var(CHILD).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, test)
        .output()
        .expect("run the test in its own process");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}

/// `own_process!(name)` at the top of `#[test] fn name`: see `in_own_process`.
macro_rules! own_process {
    ($name:ident) => {
        let module = module_path!()
            .split_once("::")
            .map_or("", |(_, m)| m)
            .to_string();
        if !$crate::support::in_own_process(&format!("{module}::{}", stringify!($name))) {
            return;
        }
    };
}
pub(crate) use own_process;

/// The value of the sample `series` (name and labels exactly as rendered) in a Prometheus
/// text, if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
