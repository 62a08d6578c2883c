//! The admin listener of a worker process (`aetheris worker --admin-bind`, default
//! `127.0.0.1:7421`): `GET /healthz` (the process answers), `GET /readyz` (the store
//! answers; 503 problem+json if not) and `GET /metrics` (the process's Prometheus text:
//! step and tool latency, ledger outcomes, leases, supervision, rate limits).
//!
//! It has no authentication, on purpose: it is an operator's port, bound to loopback by
//! default, and shows no tenant data beyond metric labels (tenant ids, tool names). Bind
//! it elsewhere only on a private network your Prometheus scrapes from. It does not report
//! the jobs-by-state gauge: that comes from the store, so the gateways report it once for
//! the whole deployment rather than every worker repeating it.
//!
//! Small and bounded like the gateway: one HTTP worker thread, few connections, a head
//! deadline and keep-alive limit.

use crate::conn::{HEAD_DEADLINE, KEEP_ALIVE};
use crate::problem::ApiError;
use actix_web::{web, App, HttpResponse, HttpServer};
use aetheris_actors::Metrics;
use aetheris_store::DynStore;
use serde_json::json;
use std::net::SocketAddr;

/// Connections the admin listener serves at once (a scraper and an operator or two).
const MAX_CONNECTIONS: usize = 64;

/// A running admin listener.
pub struct AdminHandle {
    /// The address it listens on (the port chosen when binding port 0).
    pub addr: SocketAddr,
    pub server: actix_web::dev::ServerHandle,
}

struct AdminState {
    store: DynStore,
    metrics: Metrics,
}

/// Binds `bind` and returns the handle and the server future, which the caller must
/// spawn; an error is `cannot listen on BIND: …`. Must be called inside an actix system.
pub fn start_admin(
    bind: &str,
    store: DynStore,
    metrics: Metrics,
) -> std::io::Result<(AdminHandle, actix_web::dev::Server)> {
    let listen_error =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}"));
    let state = web::Data::new(AdminState { store, metrics });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
    })
    .workers(1)
    .max_connections(MAX_CONNECTIONS)
    .client_request_timeout(HEAD_DEADLINE)
    .keep_alive(KEEP_ALIVE)
    .disable_signals()
    .bind(bind)
    .map_err(listen_error)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| listen_error(std::io::Error::other("no bound address")))?;
    let running = server.run();
    Ok((
        AdminHandle {
            addr,
            server: running.handle(),
        },
        running,
    ))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(st: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    st.store
        .now_ms()
        .await
        .map_err(|e| ApiError::Unavailable(format!("store unavailable: {e}")))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

async fn metrics_text(st: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.metrics.render(&[]))
}
