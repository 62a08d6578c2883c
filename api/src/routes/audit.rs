//! The caller's tenant's access audit log (roles admin and auditor), oldest first, paged
//! with `?after=<next_after>`. Rows are written by the store in the same transaction as
//! the change they record; a refused permission writes a `denied` row.

use super::{page_limit, schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec};
use crate::auth::Permission;
use crate::problem::ApiError;
use actix_web::{web, HttpResponse};
use aetheris_store::{AuditFilter, AuditRecord, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const LIST: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/audit",
    Access::Requires(Permission::AuditRead),
    "listAudit",
    "The tenant's access audit log, oldest first",
    Answer::json(200, "one page of audit rows", schema::<AuditPage>),
    |r| r.to(audit),
)
.query(schema::<AuditQuery>);

/// `GET /v1/audit` query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only rows with a larger id (`next_after` of the previous page).
    #[schemars(range(max = i64::MAX))]
    pub after: Option<u64>,
    /// Page size, 1-1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
    /// Only this action (`job.cancel`-style, or a permission such as `job:create` for
    /// denials): 1-64 characters of `[a-z_.:]`.
    #[schemars(regex(pattern = r"^[a-z_.:]{1,64}$"))]
    pub action: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    pub next_after: Option<u64>,
}

async fn audit(
    p: Caller,
    q: web::Query<AuditQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(q.limit, 100)?;
    if let Some(a) = q.action.as_deref() {
        if a.is_empty()
            || a.len() > 64
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || "_.:".contains(c))
        {
            return Err(ApiError::BadRequest(format!(
                "action {:?} must be 1-64 characters of [a-z_.:]",
                crate::problem::clip(a, 64)
            )));
        }
    }
    let rows = st
        .store
        .list_audit(
            Scope::Tenant(&p.tenant),
            AuditFilter {
                after_id: q.after.unwrap_or(0),
                limit,
                action: q.action.clone(),
            },
        )
        .await?;
    let next_after = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(HttpResponse::Ok().json(AuditPage {
        entries: rows,
        next_after,
    }))
}
