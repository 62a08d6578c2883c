//! Tenants as data (admins of the system tenant only): create, list, and replace a
//! tenant's rate limits and retention (`limits.retention`), which every gateway and worker
//! applies without a restart. A retention that does not parse is refused with 422 and
//! changes nothing.

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec, MAX_NAME_BYTES};
use crate::auth::Permission;
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_actors::ratelimit::{LimitsConfig, TenantLimits};
use aetheris_store::{AuditEntry, Tenant};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest tenant id.
pub const MAX_TENANT_ID: usize = 64;

pub const LIST: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/tenants",
    Access::System(Permission::TenantAdmin),
    "listTenants",
    "List every tenant (admins of the system tenant)",
    Answer::json(200, "the tenants", schema::<TenantList>),
    |r| r.to(list_tenants),
);

pub const CREATE: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/tenants",
    Access::System(Permission::TenantAdmin),
    "createTenant",
    "Create a tenant (admins of the system tenant)",
    Answer::json(201, "the tenant", schema::<Tenant>),
    |r| r.to(create_tenant),
)
.body(Presence::Required, schema::<NewTenant>)
.errors(&[409, 422])
.creates("/v1/tenants/{id}", "/id");

pub const SET_LIMITS: RouteSpec = RouteSpec::new(
    HttpMethod::Put,
    "/v1/tenants/{id}/limits",
    Access::System(Permission::TenantAdmin),
    "setTenantLimits",
    "Replace a tenant's rate limits and retention (applied without restart)",
    Answer::json(200, "the tenant", schema::<Tenant>),
    |r| r.to(set_tenant_limits),
)
.body(Presence::Required, schema::<TenantLimits>)
.errors(&[404, 422]);

/// `POST /v1/tenants`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1-64 characters of `[a-z0-9_-]`: the `tenant` claim of its tokens.
    #[schemars(regex(pattern = r"^[a-z0-9_-]{1,64}$"))]
    pub id: String,
    /// Display name, 1-256 bytes (default: the id).
    #[serde(default)]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
    #[serde(default)]
    pub limits: Option<TenantLimits>,
}

#[derive(Serialize, JsonSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// A tenant id: what tokens carry and metrics are labelled with, so short and plain.
pub fn check_tenant_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TENANT_ID
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "tenant id {:?} must be 1-{MAX_TENANT_ID} characters of [a-z0-9_-]",
            crate::problem::clip(id, 64)
        )))
    }
}

fn limits_json(l: &TenantLimits) -> Value {
    serde_json::to_value(l).unwrap_or(Value::Null)
}

/// Checks limits the way a limits file is checked (positive numbers); a retention that
/// does not parse is a 422 naming the forms it takes.
fn check_limits(l: &TenantLimits) -> Result<(), ApiError> {
    if let Some(r) = &l.retention {
        aetheris_actors::gc::parse_retention(r).map_err(ApiError::Unprocessable)?;
    }
    let cfg = json!({"defaults": limits_json(l)});
    LimitsConfig::parse(&cfg.to_string())
        .map(|_| ())
        .map_err(ApiError::BadRequest)
}

async fn create_tenant(
    req: HttpRequest,
    p: Caller,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let t: NewTenant = crate::body::json_required(&req, payload, st.body, "tenant").await?;
    check_tenant_id(&t.id)?;
    let name = t.name.unwrap_or_else(|| t.id.clone());
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(ApiError::BadRequest(format!(
            "tenant name must be 1-{MAX_NAME_BYTES} bytes"
        )));
    }
    let limits = t.limits.unwrap_or_default();
    check_limits(&limits)?;
    let created = st
        .store
        .create_tenant(
            &t.id,
            &name,
            limits_json(&limits),
            Some(&AuditEntry::ok(&p.tenant, &p.sub, "tenant.create", &t.id)),
        )
        .await?;
    st.limits.set_tenant_limits(&t.id, limits);
    Ok(HttpResponse::Created().json(created))
}

async fn list_tenants(_p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenants = st.store.list_tenants().await?;
    Ok(HttpResponse::Ok().json(TenantList { tenants }))
}

async fn set_tenant_limits(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let limits: TenantLimits = crate::body::json_required(&req, payload, st.body, "limits").await?;
    check_limits(&limits)?;
    let t = st
        .store
        .set_tenant_limits(
            &id,
            limits_json(&limits),
            Some(&AuditEntry::ok(&p.tenant, &p.sub, "tenant.set_limits", &id)),
        )
        .await?;
    st.limits.set_tenant_limits(&id, limits);
    Ok(HttpResponse::Ok().json(t))
}
