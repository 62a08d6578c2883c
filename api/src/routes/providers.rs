//! A tenant's LLM providers as data (admins of the system tenant, like its limits): list,
//! create or replace one, delete one. A provider names where the workers read its API key
//! (an environment variable or a file on the workers), never the key itself, so no key
//! ever reaches the store, an event, a log or an evidence package (docs/agents.md).

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec};
use crate::auth::Permission;
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_actors::llm::{check_provider, LlmProvider, LlmProviderKind};
use aetheris_store::AuditEntry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const LIST: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/tenants/{id}/providers",
    Access::System(Permission::TenantAdmin),
    "listProviders",
    "A tenant's own LLM providers (those for every tenant come from configuration)",
    Answer::json(200, "the providers", schema::<ProviderList>),
    |r| r.to(list),
)
.errors(&[404]);

pub const PUT: RouteSpec = RouteSpec::new(
    HttpMethod::Put,
    "/v1/tenants/{id}/providers/{name}",
    Access::System(Permission::TenantAdmin),
    "putProvider",
    "Create or replace one of a tenant's LLM providers (used by workers within seconds)",
    Answer::json(200, "the provider", schema::<LlmProvider>),
    |r| r.to(put),
)
.body(Presence::Required, schema::<ProviderSpec>)
.errors(&[404]);

pub const DELETE: RouteSpec = RouteSpec::new(
    HttpMethod::Delete,
    "/v1/tenants/{id}/providers/{name}",
    Access::System(Permission::TenantAdmin),
    "deleteProvider",
    "Delete one of a tenant's LLM providers",
    Answer::json(200, "it was deleted", schema::<Deleted>),
    |r| r.to(delete),
)
.errors(&[404]);

/// `PUT /v1/tenants/{id}/providers/{name}`: the provider (its name is in the path).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub kind: LlmProviderKind,
    /// `http(s)://host[:port][/prefix]` (for `scripted`: a script file on the workers,
    /// or empty).
    #[schemars(length(max = 2048))]
    pub base_url: String,
    /// Models agent steps may ask for (empty: any).
    #[serde(default)]
    pub models: Vec<String>,
    /// The workers' environment variable holding the API key.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,128}$"))]
    pub api_key_env: Option<String>,
    /// The file on the workers holding the API key.
    #[serde(default)]
    #[schemars(length(min = 1, max = 4096))]
    pub api_key_file: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct ProviderList {
    pub providers: Vec<LlmProvider>,
}

#[derive(Serialize, JsonSchema)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

/// The tenant of the path, which must exist (a malformed id names none: 404).
async fn tenant(st: &AppState, id: &str) -> Result<(), ApiError> {
    match st.store.get_tenant(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!(
            "tenant {:?} not found",
            crate::problem::clip(id, 64)
        ))),
    }
}

async fn list(
    _p: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    tenant(&st, &id).await?;
    Ok(HttpResponse::Ok().json(ProviderList {
        providers: st.store.llm_providers(&id).await?,
    }))
}

async fn put(
    req: HttpRequest,
    p: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let spec: ProviderSpec = crate::body::json_required(&req, payload, st.body, "provider").await?;
    let provider = LlmProvider {
        name: name.clone(),
        kind: spec.kind,
        base_url: spec.base_url,
        models: spec.models,
        api_key_env: spec.api_key_env,
        api_key_file: spec.api_key_file,
    };
    check_provider(&provider).map_err(ApiError::BadRequest)?;
    tenant(&st, &id).await?;
    let saved = st
        .store
        .put_llm_provider(
            &id,
            provider,
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "tenant.provider.put",
                format!("{id}/{name}"),
            )),
        )
        .await?;
    st.llm.forget_tenant(&id);
    Ok(HttpResponse::Ok().json(saved))
}

async fn delete(
    p: Caller,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    tenant(&st, &id).await?;
    let deleted = st
        .store
        .delete_llm_provider(
            &id,
            &name,
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "tenant.provider.delete",
                format!("{id}/{name}"),
            )),
        )
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!(
            "tenant {id:?} has no provider {:?}",
            crate::problem::clip(&name, 64)
        )));
    }
    st.llm.forget_tenant(&id);
    Ok(HttpResponse::Ok().json(Deleted { name, deleted }))
}
