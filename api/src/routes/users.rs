//! A tenant's users (its own admins manage them): the roles a user's tokens may use and
//! whether it is disabled, taking effect on the next request (no token is reissued). An
//! admin cannot lock itself out (disable itself or drop its own admin role): 409.

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec, MAX_NAME_BYTES};
use crate::auth::{Permission, Role};
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_store::{AuditEntry, User};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const LIST: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/users",
    Access::Requires(Permission::TenantAdmin),
    "listUsers",
    "The caller's tenant's users",
    Answer::json(200, "the users", schema::<UserList>),
    |r| r.to(list_users),
);

pub const PUT: RouteSpec = RouteSpec::new(
    HttpMethod::Put,
    "/v1/users/{id}",
    Access::Requires(Permission::TenantAdmin),
    "putUser",
    "Create or replace a user of the caller's tenant",
    Answer::json(200, "the user", schema::<User>),
    |r| r.to(put_user),
)
.body(Presence::Required, schema::<UserRequest>)
.errors(&[409]);

/// `PUT /v1/users/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// Role names: admin, operator, submitter, viewer, auditor.
    #[schemars(schema_with = "role_names")]
    pub roles: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
}

/// A list of role names, from [`Role::ALL`].
fn role_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "string", "enum": names},
        "maxItems": names.len(),
    })
}

#[derive(Serialize, JsonSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

async fn list_users(p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let users = st.store.list_users(&p.tenant).await?;
    Ok(HttpResponse::Ok().json(UserList { users }))
}

async fn put_user(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let ok_id = !id.is_empty()
        && id.len() <= MAX_NAME_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@+".contains(c));
    if !ok_id {
        return Err(ApiError::BadRequest(format!(
            "user id {:?} must be 1-{MAX_NAME_BYTES} characters of [A-Za-z0-9_.@+-]",
            crate::problem::clip(&id, 64)
        )));
    }
    let r: UserRequest = crate::body::json_required(&req, payload, st.body, "user").await?;
    if r.roles.len() > Role::ALL.len() {
        return Err(ApiError::BadRequest(format!(
            "at most {} roles",
            Role::ALL.len()
        )));
    }
    for role in &r.roles {
        Role::parse(role).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown role {:?}: use admin, operator, submitter, viewer or auditor",
                crate::problem::clip(role, 32)
            ))
        })?;
    }
    // No self-lockout: the last way back in would be a new signing key.
    if id == p.sub && (r.disabled || !r.roles.iter().any(|x| x == Role::Admin.as_str())) {
        return Err(ApiError::Conflict(format!(
            "user {id:?} is the caller: an admin may not disable itself or drop its own \
             admin role; ask another admin"
        )));
    }
    let user = st
        .store
        .put_user(
            &p.tenant,
            &id,
            r.roles,
            r.disabled,
            Some(&AuditEntry::ok(&p.tenant, &p.sub, "user.put", &id)),
        )
        .await?;
    Ok(HttpResponse::Ok().json(user))
}
