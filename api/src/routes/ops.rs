//! Operational routes: liveness (`/healthz`: the process answers), readiness (`/readyz`:
//! the store answers), Prometheus metrics (`/metrics`; a tenant's token sees only its own
//! series, G6) and the OpenAPI document (`/v1/openapi.json`, public, generated from
//! [`super::ROUTES`]).

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec, SYSTEM_TENANT};
use crate::auth::Permission;
use crate::problem::ApiError;
use actix_web::{web, HttpResponse};
use schemars::JsonSchema;
use serde::Serialize;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    pub status: String,
}

pub const HEALTHZ: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/healthz",
    Access::Public,
    "healthz",
    "Liveness: the process answers",
    Answer::json(200, "alive", schema::<Health>),
    |r| r.to(healthz),
);

pub const READYZ: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/readyz",
    Access::Public,
    "readyz",
    "Readiness: the store answers",
    Answer::json(200, "ready", schema::<Health>),
    |r| r.to(readyz),
);

pub const METRICS: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/metrics",
    Access::Requires(Permission::SystemRead),
    "metrics",
    "Prometheus metrics (text format); a tenant's token sees only its own series",
    Answer::text(200, "Prometheus text exposition format 0.0.4", "text/plain"),
    |r| r.to(metrics),
);

pub const OPENAPI: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/openapi.json",
    Access::Public,
    "openapi",
    "This API's OpenAPI 3.1 document",
    Answer::json(200, "the OpenAPI document", schema::<serde_json::Value>),
    |r| r.to(openapi),
);

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    st.store.now_ms().await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ready".into(),
    }))
}

/// The process's metrics (worker and gateway series: one recorder per process) plus the
/// jobs by tenant and state from the store, filtered to the caller's tenant unless it is
/// the system tenant.
async fn metrics(p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = st.store.count_by_status().await?;
    let extra: Vec<aetheris_actors::metrics::ScrapeGauge> = counts
        .into_iter()
        .map(|c| {
            (
                aetheris_actors::metrics::JOBS,
                vec![
                    ("tenant", c.tenant),
                    ("state", c.status.as_str().to_string()),
                ],
                c.count as f64,
            )
        })
        .collect();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.metrics.render_for(
            &extra,
            (p.tenant != SYSTEM_TENANT).then_some(p.tenant.as_str()),
        )))
}

async fn openapi(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(st.openapi.clone())
}
