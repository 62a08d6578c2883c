//! The gateway's one route table and what it drives. Each [`RouteSpec`] says method, path,
//! who may call it, its body and answers, and which handler serves it; from that one list
//! come the router ([`configure`]), the permission check of every request ([`Caller`]),
//! the route table of docs/auth.md ([`render_route_table`]) and the OpenAPI document
//! (`openapi.rs`). A permission is therefore written once and is the one enforced.
//!
//! Handlers live one file per resource (jobs, commands, evidence, tenants, providers,
//! agents, users, audit, ops, system). They parse and validate fully before touching the
//! store, scope every store call by the
//! caller's tenant (G6), and answer errors as problem+json. Every mutating call hands the
//! store an `AuditEntry` written in the same transaction as the change; a refused
//! permission writes a `denied` row. Who acted (`by` of cancels, signals and
//! confirmations) is the token's `sub`; without auth (dev/tests) every caller is an admin
//! of `default`.

pub mod agents;
pub mod audit;
pub mod commands;
pub mod evidence;
pub mod jobs;
pub mod ops;
pub mod providers;
pub mod system;
pub mod tenants;
pub mod users;

use crate::auth::{Permission, Principal};
use crate::body::{BodyRules, Presence};
use crate::problem::ApiError;
use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::{guard, web, FromRequest, HttpRequest};
use aetheris_runtime::{EffectClass, JobId, ToolCatalog};
use aetheris_store::{AuditEntry, DynStore};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub const DEFAULT_TENANT: &str = "default";
/// The deployment operators' tenant: only its admins manage tenants, and only its
/// `system:read` sees every tenant's metrics. Any other tenant sees its own (G6).
pub const SYSTEM_TENANT: &str = DEFAULT_TENANT;
/// Every list route takes `limit` in this range (400 outside it, never clamped).
pub const MAX_PAGE_LIMIT: usize = 1000;

/// What the handlers share: the store, the auth configuration (`None` runs without
/// authentication: dev and tests only, every caller acts as an admin of `default`), the
/// tool catalog plans are checked against, metrics, body rules and rate limits.
pub struct AppState {
    pub auth: Option<Arc<crate::auth::AuthConfig>>,
    pub store: DynStore,
    pub tools: Arc<BTreeMap<String, EffectClass>>,
    pub metrics: Arc<aetheris_actors::Metrics>,
    pub body: BodyRules,
    pub limits: aetheris_actors::ratelimit::RateLimiters,
    /// Bounds how many big bodies are parsed and validated at once, off the HTTP workers.
    pub validation: Arc<tokio::sync::Semaphore>,
    /// This node's OpenAPI document (its tools are part of it), built once at start.
    pub openapi: web::Bytes,
    /// The key evidence packages and checkpoints are signed with (`None`: those routes
    /// answer 503).
    pub evidence_key: Option<Arc<aetheris_proof::SigningKey>>,
    /// Model calls of replay-diff (the providers this process knows, tenants' own too).
    pub llm: aetheris_actors::llm::LlmRuntime,
    /// The tools as models are offered them (replay-diff offers the recorded steps' tools).
    pub agent_tools: Arc<aetheris_actors::tools::ToolDecls>,
}

/// The tool catalog of a node, as plan validation sees it.
pub struct Catalog(pub Arc<BTreeMap<String, EffectClass>>);
impl ToolCatalog for Catalog {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self.0.get(tool).copied()
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token whose roles grant this permission.
    Requires(Permission),
    /// As `Requires`, and the caller's tenant must be the system tenant (tenant
    /// administration: a tenant's own admin may not list others nor raise its limits).
    System(Permission),
}

impl Access {
    pub fn permission(self) -> Option<Permission> {
        match self {
            Access::Public => None,
            Access::Requires(p) | Access::System(p) => Some(p),
        }
    }
}

/// The HTTP methods the API uses (a `Copy` enum, so route rows are built by `const fn`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Delete,
}

impl HttpMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The same method as actix sees it.
    pub fn to_actix(self) -> Method {
        match self {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Delete => Method::DELETE,
        }
    }
}

impl std::fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a JSON Schema for the OpenAPI document.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (a `$ref` into the document's components).
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A route's request body.
#[derive(Clone, Copy)]
pub struct BodySpec {
    pub presence: Presence,
    pub schema: SchemaFn,
}

/// A route's success answer.
#[derive(Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    /// Media type of the answer (`application/json` for all but `/metrics`).
    pub media: &'static str,
    pub schema: SchemaFn,
    /// Also answers `text/event-stream` when asked to (`Accept`).
    pub event_stream: bool,
}

/// One row of the route table.
pub struct RouteSpec {
    pub method: HttpMethod,
    /// actix pattern, also the OpenAPI path (`{id}` is one path segment).
    pub path: &'static str,
    pub access: Access,
    /// OpenAPI `operationId`.
    pub operation: &'static str,
    pub summary: &'static str,
    pub body: Option<BodySpec>,
    /// The query-string parameters (a struct's schema), if any.
    pub query: Option<SchemaFn>,
    pub answer: Answer,
    /// Error statuses particular to this route; those implied by its access, body, query
    /// and the store are added by [`RouteSpec::error_statuses`].
    pub errors: &'static [u16],
    /// What a success creates, for OpenAPI links: the routes under this path prefix take
    /// its `{id}` from this JSON pointer into the answer (e.g. `("/v1/jobs/{id}", "/job_id")`).
    pub creates: Option<(&'static str, &'static str)>,
    /// Attaches the handler to the route.
    pub mount: fn(actix_web::Route) -> actix_web::Route,
}

impl Answer {
    /// A JSON answer.
    pub const fn json(status: u16, description: &'static str, schema: SchemaFn) -> Answer {
        Answer {
            status,
            description,
            media: "application/json",
            schema,
            event_stream: false,
        }
    }

    /// A text answer of `media` (`/metrics`).
    pub const fn text(status: u16, description: &'static str, media: &'static str) -> Answer {
        Answer {
            status,
            description,
            media,
            schema: schema::<String>,
            event_stream: false,
        }
    }

    /// Also answers `text/event-stream` when the client asks for it.
    pub const fn or_event_stream(self) -> Answer {
        Answer {
            event_stream: true,
            ..self
        }
    }
}

/// Builders for the rows of [`ROUTES`]: a row names its method, path, access, operation,
/// summary, answer and handler; body, query, particular statuses and what it creates are
/// added when the route has them.
impl RouteSpec {
    pub const fn new(
        method: HttpMethod,
        path: &'static str,
        access: Access,
        operation: &'static str,
        summary: &'static str,
        answer: Answer,
        mount: fn(actix_web::Route) -> actix_web::Route,
    ) -> RouteSpec {
        RouteSpec {
            method,
            path,
            access,
            operation,
            summary,
            body: None,
            query: None,
            answer,
            errors: &[],
            creates: None,
            mount,
        }
    }

    /// The route takes a JSON object body.
    pub const fn body(self, presence: Presence, schema: SchemaFn) -> RouteSpec {
        RouteSpec {
            body: Some(BodySpec { presence, schema }),
            ..self
        }
    }

    /// The route takes the query parameters of this struct's schema.
    pub const fn query(self, schema: SchemaFn) -> RouteSpec {
        RouteSpec {
            query: Some(schema),
            ..self
        }
    }

    /// Statuses particular to this route (below 400: another success with the same body).
    pub const fn errors(self, errors: &'static [u16]) -> RouteSpec {
        RouteSpec { errors, ..self }
    }

    /// A success creates what the routes under `prefix` take as `{id}`, found at
    /// `pointer` in the answer.
    pub const fn creates(self, prefix: &'static str, pointer: &'static str) -> RouteSpec {
        RouteSpec {
            creates: Some((prefix, pointer)),
            ..self
        }
    }

    /// Every problem+json status this route can answer.
    pub fn error_statuses(&self) -> Vec<u16> {
        let mut s: Vec<u16> = self.errors.to_vec();
        if self.access != Access::Public {
            s.extend([401, 403]);
        }
        if self.body.is_some() {
            s.extend([400, 408, 413, 415]);
        }
        if self.query.is_some() {
            s.push(400);
        }
        // Over the connection limit, or the store unavailable. /healthz answers always.
        if self.path != "/healthz" {
            s.push(503);
        }
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The path parameters, in order (`{id}` → `id`).
    pub fn path_params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }
}

/// Index of a route in [`ROUTES`], stored on its actix resource.
#[derive(Clone, Copy)]
struct RouteIndex(usize);

/// Every route the gateway serves.
pub static ROUTES: &[RouteSpec] = &[
    ops::HEALTHZ,
    ops::READYZ,
    ops::METRICS,
    ops::OPENAPI,
    jobs::SUBMIT,
    jobs::LIST,
    jobs::GET,
    jobs::EVENTS,
    jobs::LEDGER,
    evidence::EXPORT,
    commands::CANCEL,
    commands::SIGNAL,
    commands::CONFIRM,
    tenants::LIST,
    tenants::CREATE,
    tenants::SET_LIMITS,
    providers::LIST,
    providers::PUT,
    providers::DELETE,
    agents::REPLAY,
    evidence::GET_POLICY,
    evidence::SET_POLICY,
    evidence::CHECKPOINT,
    evidence::CONSISTENCY,
    users::LIST,
    users::PUT,
    audit::LIST,
    system::ACTORS,
];

/// Registers every route of [`ROUTES`] and the problem+json 404 for anything else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (i, r) in ROUTES.iter().enumerate() {
        cfg.service(
            web::resource(r.path)
                .guard(guard::Method(r.method.to_actix()))
                .app_data(RouteIndex(i))
                .route((r.mount)(web::route())),
        );
    }
    cfg.default_service(web::to(not_found));
}

/// Anything the table does not serve: 405 with `Allow` for a known path with another
/// method, else 404.
async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| path_matches(r.path, req.path()))
        .map(|r| r.method.as_str())
        .collect();
    if !allowed.is_empty() {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allowed: allowed.join(", "),
        });
    }
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        crate::problem::clip(req.path(), 200)
    )))
}

/// What a request needs before it reaches a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAccess {
    /// No token needed.
    Public,
    /// A valid token whose roles grant this permission.
    Requires(Permission),
    /// Not a route: the router answers 404.
    Unknown,
}

/// Looks up `method` + `path` (no query string) in [`ROUTES`] (`{name}` matches one
/// non-empty path segment).
pub fn route_access(method: &str, path: &str) -> RouteAccess {
    ROUTES
        .iter()
        .find(|r| r.method.as_str().eq_ignore_ascii_case(method) && path_matches(r.path, path))
        .map_or(RouteAccess::Unknown, |r| match r.access.permission() {
            None => RouteAccess::Public,
            Some(p) => RouteAccess::Requires(p),
        })
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return true,
            (Some(p), Some(g)) => {
                let wildcard = p.starts_with('{') && p.ends_with('}');
                if !(wildcard && !g.is_empty() || p == g) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The route → permission table as markdown (docs/auth.md embeds it; a test keeps it in
/// step).
pub fn render_route_table() -> String {
    let mut out = String::from("| method | path | permission |\n|---|---|---|\n");
    for r in ROUTES {
        let perm = match r.access {
            Access::Public => "none (no token)".to_string(),
            Access::Requires(p) => format!("`{p}`"),
            Access::System(p) => format!("`{p}` in the `{SYSTEM_TENANT}` tenant"),
        };
        out.push_str(&format!("| {} | `{}` | {perm} |\n", r.method, r.path));
    }
    out
}

/// The authenticated caller of a route, checked against the route's row of [`ROUTES`]:
/// the one place requests are authenticated and authorized. Its tenant scopes every store
/// call of the handler (G6).
pub struct Caller(pub Principal);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let spec = req
                .app_data::<RouteIndex>()
                .and_then(|i| ROUTES.get(i.0))
                .ok_or_else(|| ApiError::Internal("route without a table entry".into()))?;
            let st = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal("no application state".into()))?;
            authorize(&req, st, spec.access).await.map(Caller)
        })
    }
}

fn anonymous_admin() -> Principal {
    Principal {
        sub: "anonymous".into(),
        tenant: DEFAULT_TENANT.into(),
        roles: vec![crate::auth::Role::Admin],
        granted: None,
    }
}

/// Verifies the request's bearer token (`Authorization` header), checks the route's
/// permission (and system tenant), and returns the caller. A refusal of a verified caller
/// writes a `denied` audit row.
async fn authorize(
    req: &HttpRequest,
    st: &AppState,
    access: Access,
) -> Result<Principal, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    authorize_bearer(st, header, access, req.path()).await
}

/// The one authorization of the gateway, for any front end that holds a bearer token: the
/// API (the `Authorization` header) and the trace UI (its session cookie's token, passed as
/// `Bearer …`). Verifies the token and the caller's tenant and user row
/// ([`authenticate_bearer`]), then the permission of `access` ([`refusal`]); a refused
/// verified caller gets a `denied` audit row naming `target` (the path asked for).
pub async fn authorize_bearer(
    st: &AppState,
    authorization: Option<&str>,
    access: Access,
    target: &str,
) -> Result<Principal, ApiError> {
    let Some(perm) = access.permission() else {
        return Ok(anonymous_admin());
    };
    let p = authenticate_bearer(st, authorization).await?;
    if let Some(why) = refusal(&p, access) {
        // The attempt is audited; failing to write the row must not turn a 403 into a
        // 500, so it is logged instead.
        let denied = AuditEntry {
            result: "denied".into(),
            ..AuditEntry::ok(&p.tenant, &p.sub, perm.as_str(), target)
        };
        if let Err(err) = st.store.record_audit(&denied).await {
            tracing::error!(error = %err, "could not write the audit row of a denied request");
        }
        return Err(ApiError::Forbidden(why));
    }
    Ok(p)
}

/// Who a bearer token is, as every request sees it: the token verifies (401 otherwise),
/// its tenant exists, and its user row (if any) is not disabled and narrows its
/// permissions to those the row's roles grant (revocation without rotating keys). No
/// permission is checked. Without auth (dev and tests) everyone is an admin of `default`.
pub async fn authenticate_bearer(
    st: &AppState,
    authorization: Option<&str>,
) -> Result<Principal, ApiError> {
    let Some(cfg) = &st.auth else {
        return Ok(anonymous_admin());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut p = crate::auth::authenticate(cfg, authorization, now)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    // One read: the token's tenant must exist, and a user row (if any) narrows the
    // token's permissions to those its roles grant, or refuses a disabled user.
    let access_row = st.store.access(&p.tenant, &p.sub).await?;
    if !access_row.tenant_exists {
        return Err(ApiError::Unauthorized(format!(
            "tenant {:?} does not exist",
            crate::problem::clip(&p.tenant, 64)
        )));
    }
    if let Some(user) = access_row.user {
        if user.disabled {
            return Err(ApiError::Unauthorized(format!(
                "user {:?} of tenant {:?} is disabled",
                p.sub, p.tenant
            )));
        }
        p.granted = Some(
            user.roles
                .iter()
                .filter_map(|r| crate::auth::Role::parse(r))
                .collect(),
        );
    }
    Ok(p)
}

/// Why `p` may not use a route of this `access` (its permission, and for
/// [`Access::System`] the system tenant), or `None` if it may. The one rule: the router
/// enforces it, and the trace UI asks it to decide which actions to offer.
pub fn refusal(p: &Principal, access: Access) -> Option<String> {
    let perm = access.permission()?;
    match p.require(perm) {
        Err(e) => Some(e.to_string()),
        Ok(()) if matches!(access, Access::System(_)) && p.tenant != SYSTEM_TENANT => Some(
            format!("this route is for admins of the {SYSTEM_TENANT:?} tenant"),
        ),
        Ok(()) => None,
    }
}

/// The identity recorded as `by` of a command: the token's `sub`. A body's own `by` is
/// only honoured without auth (dev and tests); with auth it must match the token.
pub fn acting_as(
    st: &AppState,
    p: &Principal,
    claimed: Option<String>,
) -> Result<String, ApiError> {
    match claimed {
        Some(b) if b.len() > MAX_NAME_BYTES => Err(ApiError::BadRequest(format!(
            "by must be at most {MAX_NAME_BYTES} bytes"
        ))),
        Some(b) if st.auth.is_none() => Ok(b),
        Some(b) if b != p.sub => Err(ApiError::BadRequest(format!(
            "by {:?} differs from the caller {:?}: it is taken from the token; omit it",
            crate::problem::clip(&b, 64),
            p.sub
        ))),
        _ => Ok(p.sub.clone()),
    }
}

/// Longest user id, `by`, and tenant display name.
pub const MAX_NAME_BYTES: usize = 256;

/// A list's `limit`: `default` when absent, else 1..=[`MAX_PAGE_LIMIT`]; the same rule on
/// every list route.
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n @ 1..=MAX_PAGE_LIMIT => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}"
        ))),
    }
}

/// A job id from the path; anything that is not one is a job that does not exist.
pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::NotFound(format!("job {:?} not found", crate::problem::clip(raw, 64)))
    })
}

/// Checks a name made of `[A-Za-z0-9_.-]` (signal names, signal ids).
pub fn check_name(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} {:?} must be 1-{max} characters of [A-Za-z0-9_.-]",
            crate::problem::clip(v, 64)
        )))
    }
}

/// Turns actix's own extractor errors (bad query strings) into problem+json.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("bad query string: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_match_single_segments() {
        assert!(path_matches("/v1/jobs/{id}", "/v1/jobs/abc"));
        assert!(!path_matches("/v1/jobs/{id}", "/v1/jobs/"));
        assert!(!path_matches("/v1/jobs/{id}", "/v1/jobs/a/b"));
        assert!(!path_matches("/v1/jobs", "/v1/jobs/"));
        assert!(path_matches("/metrics", "/metrics"));
    }

    #[test]
    fn every_route_is_unique_and_named_once() {
        let mut seen = std::collections::BTreeSet::new();
        let mut ops = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.to_string(), r.path)),
                "{} {}",
                r.method,
                r.path
            );
            assert!(ops.insert(r.operation), "operation {} twice", r.operation);
        }
    }
}
