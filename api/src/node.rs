//! Wiring of one Aetheris process: the store, the worker's actor tree and the HTTP
//! gateway, started on the current actix system. Used by `aetheris dev` and by tests that
//! need a whole node in-process (with extra tools registered).
//!
//! Singletons (the worker's actors, the tool actors) are started outside the
//! `HttpServer::new` factory, which runs once per HTTP worker thread. The HTTP server is
//! bounded in connections, head time, body time and keep-alive (`conn.rs`, `body.rs`).

use crate::body::BodyRules;
use crate::conn::{ConnectionCounter, ConnectionLimits, HEAD_DEADLINE, KEEP_ALIVE};
use crate::routes::{configure, query_error_handler, AppState};
use actix::Addr;
use actix_web::{web, App, HttpServer};
use aetheris_actors::ratelimit::Announcement;
use aetheris_actors::{
    start_worker, Drain, LeaseManager, Metrics, Shared, ToolRegistry, WorkerConfig,
};
use aetheris_store::{DynStore, ProcessKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct NodeConfig {
    pub bind: String,
    pub worker: WorkerConfig,
    pub http_workers: usize,
    /// Request body size limit and deadline.
    pub body: BodyRules,
    /// Bound on the connections this process serves.
    pub connections: ConnectionLimits,
    /// Run the worker's actor tree (false: gateway only).
    pub run_worker: bool,
    /// Bearer-token authentication; `None` = none (dev and tests only).
    pub auth: Option<crate::auth::AuthConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            bind: "127.0.0.1:7420".into(),
            worker: WorkerConfig::default(),
            http_workers: 2,
            body: BodyRules::default(),
            connections: ConnectionLimits::default(),
            run_worker: true,
            auth: None,
        }
    }
}

pub struct NodeHandle {
    pub addr: SocketAddr,
    pub server: actix_web::dev::ServerHandle,
    pub leases: Option<Addr<LeaseManager>>,
    pub metrics: Arc<Metrics>,
    /// Jobs finished by this node's worker.
    pub finished:
        tokio::sync::broadcast::Sender<(aetheris_runtime::JobId, aetheris_runtime::JobStatus)>,
    /// This node's announcements as a live gateway (and worker), which size its share of
    /// every tenant's global limits; withdrawn on shutdown.
    pub announcements: Vec<Announcement>,
}

impl NodeHandle {
    /// Graceful stop: drain the worker (release leases), then stop the HTTP server.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(l) = &self.leases {
            let _ = l.send(Drain { grace }).await;
        }
        for a in &self.announcements {
            a.retire().await;
        }
        self.server.stop(true).await;
    }
}

/// Starts a node on the current actix system. `tools` must have been built inside it. The
/// returned server future must be spawned (or awaited) by the caller.
pub fn start_node(
    store: DynStore,
    tools: ToolRegistry,
    cfg: NodeConfig,
) -> std::io::Result<(NodeHandle, actix_web::dev::Server)> {
    let metrics = Arc::new(Metrics::default());
    let names = tools.names();
    let tool_names: Vec<&str> = names.iter().map(String::as_str).collect();
    let catalog = Arc::new(
        tools
            .names()
            .into_iter()
            .filter_map(|n| tools.get(&n).map(|e| (n, e.effect)))
            .collect(),
    );
    let (finished, _) = tokio::sync::broadcast::channel(4096);
    let limits = cfg.worker.rate_limits.clone().with_metrics(metrics.clone());
    let state = web::Data::new(AppState {
        auth: cfg.auth.map(Arc::new),
        limits: limits.clone(),
        store: store.clone(),
        tools: catalog,
        metrics: metrics.clone(),
        body: cfg.body,
        openapi: web::Bytes::from(crate::openapi::document(&tool_names).to_string()),
        validation: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
    });
    // Bind first: a node that cannot listen must fail before any actor or task exists
    // (an actor started and then dropped with its system panics outside a runtime).
    crate::conn::raise_fd_limit();
    let counter = ConnectionCounter::default();
    let workers = cfg.http_workers.max(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::QueryConfig::default().error_handler(query_error_handler))
            .app_data(web::PathConfig::default())
            .wrap_fn(crate::conn::admit)
            .configure(configure)
    })
    .on_connect(counter.on_connect(cfg.connections.effective_max()))
    .max_connections(cfg.connections.hard_cap().div_ceil(workers))
    .client_request_timeout(HEAD_DEADLINE)
    .keep_alive(KEEP_ALIVE)
    .workers(workers)
    .disable_signals()
    .bind(&cfg.bind)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no bound address"))?;
    aetheris_actors::ratelimit::spawn_limits_refresh(store.clone(), limits.clone());
    let (every, ttl) = (
        Duration::from_millis(cfg.worker.heartbeat_ms),
        Duration::from_millis(cfg.worker.lease_ttl_ms),
    );
    let announce =
        |kind, id| Announcement::start(store.clone(), limits.clone(), kind, id, every, ttl);
    let mut announcements = vec![announce(
        ProcessKind::Gateway,
        format!("gateway-{}", uuid::Uuid::now_v7()),
    )];
    if cfg.run_worker {
        announcements.push(announce(ProcessKind::Worker, cfg.worker.worker_id.clone()));
    }
    let shared = Shared {
        store,
        tools,
        metrics: metrics.clone(),
        config: Arc::new(cfg.worker),
        finished: finished.clone(),
    };
    let leases = cfg.run_worker.then(|| start_worker(shared).0);
    let running = server.run();
    Ok((
        NodeHandle {
            addr,
            server: running.handle(),
            leases,
            metrics,
            finished,
            announcements,
        },
        running,
    ))
}
