//! Wiring of one Aetheris process with a gateway: the HTTP gateway (the API and the trace
//! UI at `/ui`) and, unless it is a
//! gateway only (`aetheris server`), a worker started through the one worker start-up
//! (`aetheris_actors::Worker::start`, which `aetheris worker` uses too). Used by
//! `aetheris dev`, `aetheris server` and by tests that need a whole node in-process (with
//! extra tools registered).
//!
//! Singletons (the worker's actors, the tool actors) are started outside the
//! `HttpServer::new` factory, which runs once per HTTP worker thread. The listener is bound
//! before any actor or task exists, so a node that cannot listen fails cleanly. The HTTP
//! server is bounded in connections, head time, body time and keep-alive (`conn.rs`,
//! `body.rs`).

use crate::body::BodyRules;
use crate::conn::{ConnectionCounter, ConnectionLimits, HEAD_DEADLINE, KEEP_ALIVE};
use crate::routes::{configure, query_error_handler, AppState};
use actix_web::{web, App, HttpServer};
use aetheris_actors::ratelimit::Announcement;
use aetheris_actors::{Metrics, ToolRegistry, Worker, WorkerConfig, WorkerHandle};
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
    /// The key evidence packages and checkpoints are signed with; `None`: the evidence
    /// export and checkpoint routes answer 503, everything else works.
    pub evidence_key: Option<Arc<aetheris_proof::SigningKey>>,
    /// The trace UI's settings (where evidence packages come from).
    pub ui: crate::ui::UiConfig,
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
            evidence_key: None,
            ui: crate::ui::UiConfig::default(),
        }
    }
}

pub struct NodeHandle {
    pub addr: SocketAddr,
    pub server: actix_web::dev::ServerHandle,
    /// This node's worker (`None` for a gateway only).
    pub worker: Option<WorkerHandle>,
    /// This node's announcement as a live gateway, which sizes its share of every
    /// tenant's admission limits; withdrawn on shutdown.
    pub gateway: Announcement,
}

impl NodeHandle {
    /// Graceful stop: drain the worker (release leases), then stop the HTTP server.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(worker) = self.worker {
            worker.drain(grace).await;
        }
        self.gateway.retire().await;
        self.server.stop(true).await;
    }
}

/// Starts a node on the current actix system. `tools` must have been built inside it. The
/// returned server future must be spawned (or awaited) by the caller. An error says what
/// failed (`cannot listen on ADDR: …`, or that the worker could not announce itself).
pub async fn start_node(
    store: DynStore,
    tools: ToolRegistry,
    cfg: NodeConfig,
) -> std::io::Result<(NodeHandle, actix_web::dev::Server)> {
    let metrics = Metrics::install();
    // At zero from the start, so an alert on their rate finds them.
    for stage in crate::routes::evidence::EXPORT_STAGES {
        metrics::counter!(aetheris_actors::metrics::EVIDENCE_EXPORT_FAILURES, "stage" => stage)
            .increment(0);
    }
    let names = tools.names();
    let tool_names: Vec<&str> = names.iter().map(String::as_str).collect();
    let catalog = Arc::new(
        tools
            .names()
            .into_iter()
            .filter_map(|n| tools.get(&n).map(|e| (n, e.effect)))
            .collect(),
    );
    let limits = cfg.worker.rate_limits.clone();
    let llm = aetheris_actors::llm::LlmRuntime::new(
        cfg.worker.llm.clone(),
        Some(store.clone()),
        limits.clone(),
    );
    let agent_tools = Arc::new(tools.declarations());
    let state = web::Data::new(AppState {
        llm,
        agent_tools,
        auth: cfg.auth.map(Arc::new),
        limits: limits.clone(),
        store: store.clone(),
        tools: catalog,
        metrics: Arc::new(metrics),
        body: cfg.body,
        openapi: web::Bytes::from(crate::openapi::document(&tool_names).to_string()),
        validation: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
        evidence_key: cfg.evidence_key,
    });
    let mut ui_config = cfg.ui;
    if ui_config.evidence.is_none() {
        // With a signing key the UI offers the gateway's own export.
        ui_config.evidence = state.evidence_key.as_ref().map(|k| {
            Arc::new(crate::routes::evidence::GatewayEvidence {
                public_key: k.public_key(),
            }) as Arc<dyn crate::ui::EvidenceExport>
        });
    }
    let ui = web::Data::new(crate::ui::UiState { config: ui_config });
    // Bind first: a node that cannot listen must fail before any actor or task exists
    // (an actor started and then dropped with its system panics outside a runtime).
    crate::conn::raise_fd_limit();
    let counter = ConnectionCounter::default();
    let workers = cfg.http_workers.max(1);
    let bind = cfg.bind.clone();
    let listen_error =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}"));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(ui.clone())
            .app_data(web::QueryConfig::default().error_handler(query_error_handler))
            .app_data(web::PathConfig::default())
            .wrap_fn(crate::conn::admit)
            .configure(crate::ui::configure)
            .configure(configure)
    })
    .on_connect(counter.on_connect(cfg.connections.effective_max()))
    .max_connections(cfg.connections.hard_cap().div_ceil(workers))
    .client_request_timeout(HEAD_DEADLINE)
    .keep_alive(KEEP_ALIVE)
    .workers(workers)
    .disable_signals()
    .bind(&cfg.bind)
    .map_err(listen_error)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| listen_error(std::io::Error::other("no bound address")))?;
    limits.keep_refreshed(store.clone());
    let gateway = Announcement::start(
        store.clone(),
        limits,
        ProcessKind::Gateway,
        format!("gateway-{}", uuid::Uuid::now_v7()),
        Duration::from_millis(cfg.worker.heartbeat_ms),
        Duration::from_millis(cfg.worker.lease_ttl_ms),
    );
    let worker = if cfg.run_worker {
        let started = Worker::start(store, tools, cfg.worker).await;
        Some(started.map_err(|e| {
            std::io::Error::other(format!("announcing the worker in the store: {e}"))
        })?)
    } else {
        None
    };
    let running = server.run();
    Ok((
        NodeHandle {
            addr,
            server: running.handle(),
            worker,
            gateway,
        },
        running,
    ))
}
