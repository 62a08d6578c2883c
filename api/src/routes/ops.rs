//! Operational routes: liveness (`/healthz`: the process answers), readiness (`/readyz`:
//! the store answers), Prometheus metrics (`/metrics`: the process's own series plus what
//! the store says of the whole deployment; a tenant's token sees only its own series, G6)
//! and the OpenAPI document (`/v1/openapi.json`, public, generated from
//! [`super::ROUTES`]).

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec, SYSTEM_TENANT};
use crate::auth::Permission;
use crate::problem::ApiError;
use actix_web::{web, HttpResponse};
use aetheris_actors::metrics::{self as m, ScrapeGauge};
use aetheris_store::ProcessKind;
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

/// The process's metrics (worker and gateway series: one recorder per process) plus what
/// the gateways report for the whole deployment from the store at scrape time: jobs by
/// tenant and state, each tenant's backlog and outcome_unknown steps, and — for the
/// system tenant only — the migrations applied and every announced process. Filtered to
/// the caller's tenant unless it is the system tenant. A store that does not answer
/// leaves out only those series (the process's own are still worth scraping, and
/// `aetheris_store_up` says why).
async fn metrics(p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let system = p.tenant == SYSTEM_TENANT;
    let extra = match store_series(&st, system).await {
        Ok(extra) => extra,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the store did not answer; its series are left out");
            Vec::new()
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(
            st.metrics
                .render_for(&extra, (!system).then_some(p.tenant.as_str())),
        ))
}

/// The series the gateway computes from the store (see [`metrics`]).
async fn store_series(st: &AppState, system: bool) -> Result<Vec<ScrapeGauge>, ApiError> {
    let counts = st.store.count_by_status().await?;
    let figures = st.store.operational_figures().await?;
    let mut out: Vec<ScrapeGauge> = counts
        .iter()
        .map(|c| {
            (
                m::JOBS,
                vec![
                    ("tenant", c.tenant.clone()),
                    ("state", c.status.as_str().to_string()),
                ],
                c.count as f64,
            )
        })
        .collect();
    // Every tenant with jobs has these series (at 0 without backlog), so a dashboard and
    // an alert find them before the first backlog.
    let mut tenants: Vec<&str> = counts.iter().map(|c| c.tenant.as_str()).collect();
    tenants.extend(figures.tenants.iter().map(|t| t.tenant.as_str()));
    tenants.sort_unstable();
    tenants.dedup();
    for tenant in tenants {
        let b = figures
            .tenants
            .iter()
            .find(|t| t.tenant == tenant)
            .cloned()
            .unwrap_or_default();
        let label = || vec![("tenant", tenant.to_string())];
        out.push((m::RUNNABLE_JOBS, label(), b.runnable as f64));
        out.push((m::RUNNABLE_OLDEST, label(), seconds(b.runnable_oldest_ms)));
        out.push((m::OUTCOME_UNKNOWN_STEPS, label(), b.outcome_unknown as f64));
        out.push((
            m::OUTCOME_UNKNOWN_OLDEST,
            label(),
            seconds(b.outcome_unknown_oldest_ms),
        ));
    }
    if !system {
        return Ok(out);
    }
    if let Some(applied) = figures.migrations_applied {
        out.push((m::MIGRATIONS_APPLIED, vec![], applied as f64));
        out.push((
            m::MIGRATIONS_EXPECTED,
            vec![],
            aetheris_store::migrate::MIGRATIONS.len() as f64,
        ));
    }
    out.extend(process_series(&st.store.list_processes().await?));
    Ok(out)
}

/// Live processes per kind, and per announced process whether it is live, its heartbeat
/// age and its TTL.
fn process_series(processes: &[aetheris_store::ProcessStatus]) -> Vec<ScrapeGauge> {
    let mut out = Vec::new();
    for kind in [ProcessKind::Gateway, ProcessKind::Worker] {
        let live = processes
            .iter()
            .filter(|p| p.kind == kind && p.live)
            .count();
        out.push((
            m::PROCESSES,
            vec![("kind", kind.as_str().into())],
            live as f64,
        ));
    }
    let labels = |p: &aetheris_store::ProcessStatus| {
        vec![("kind", p.kind.as_str().to_string()), ("id", p.id.clone())]
    };
    for p in processes {
        out.push((m::PROCESS_UP, labels(p), f64::from(u8::from(p.live))));
    }
    for p in processes {
        if let Some(age) = p.heartbeat_age_ms {
            out.push((m::PROCESS_HEARTBEAT_AGE, labels(p), seconds(age)));
        }
    }
    for p in processes {
        if let Some(ttl) = p.ttl_ms {
            out.push((m::PROCESS_TTL, labels(p), seconds(ttl)));
        }
    }
    out
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

async fn openapi(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(st.openapi.clone())
}
