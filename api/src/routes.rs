//! REST routes under `/v1` plus health and metrics. Handlers parse and validate fully
//! before touching the store, scope every store call by the caller's tenant (G6), and
//! answer errors as problem+json. Every mutating call hands the store an `AuditEntry`
//! that is written in the same transaction as the change; a refused permission writes a
//! `denied` row (see `authorize`). Who acted (`by` of cancels, signals and confirmations)
//! is the token's `sub`; without auth (dev/tests) every caller is an admin of `default`.

use crate::auth::{Permission, Principal};
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_actors::Metrics;
use aetheris_runtime::{EffectClass, JobId, JobState, JobStatus, Plan, ToolCatalog};
use aetheris_store::{
    load_job_state, AuditEntry, AuditFilter, DynStore, JobSummary, ListFilter, NewJob, Scope,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest accepted request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
pub const DEFAULT_TENANT: &str = "default";
/// The deployment operators' tenant: only its admins manage tenants, and only its
/// `system:read` sees every tenant's metrics. Any other tenant sees its own (G6).
pub const SYSTEM_TENANT: &str = DEFAULT_TENANT;

/// Refuses tenant administration to callers outside the system tenant: a tenant's own
/// admin may not list other tenants nor raise its own limits.
fn require_system_tenant(p: &Principal) -> Result<(), ApiError> {
    if p.tenant == SYSTEM_TENANT {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "tenant administration is for admins of the {SYSTEM_TENANT:?} tenant"
        )))
    }
}

/// Authentication of requests: `None` runs without it (dev and tests only; every caller
/// acts as an admin of tenant `default`).
pub struct AppState {
    pub auth: Option<Arc<crate::auth::AuthConfig>>,
    pub store: DynStore,
    pub tools: BTreeMap<String, EffectClass>,
    pub metrics: Arc<Metrics>,
    pub body_limit: usize,
    pub limits: aetheris_actors::ratelimit::RateLimiters,
}

struct Catalog<'a>(&'a BTreeMap<String, EffectClass>);
impl ToolCatalog for Catalog<'_> {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self.0.get(tool).copied()
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/v1")
                .route("/jobs", web::post().to(submit))
                .route("/jobs", web::get().to(list))
                .route("/jobs/{id}", web::get().to(get))
                .route("/jobs/{id}/events", web::get().to(events))
                .route("/jobs/{id}/ledger", web::get().to(ledger))
                .route("/jobs/{id}/cancel", web::post().to(cancel))
                .route("/tenants", web::get().to(list_tenants))
                .route("/tenants", web::post().to(create_tenant))
                .route("/tenants/{id}/limits", web::put().to(set_tenant_limits))
                .route("/audit", web::get().to(audit))
                .route("/users", web::get().to(list_users))
                .route("/users/{id}", web::put().to(put_user))
                .route("/jobs/{id}/signals/{name}", web::post().to(signal))
                .route("/jobs/{id}/steps/{step}/confirm", web::post().to(confirm)),
        )
        .default_service(web::to(not_found));
}

/// The one place requests are authenticated and authorized: verifies the bearer token,
/// checks the route's permission, and returns the caller, whose tenant scopes every
/// store call of the handler (G6).
async fn authorize(
    req: &HttpRequest,
    st: &AppState,
    perm: Permission,
) -> Result<Principal, ApiError> {
    let Some(cfg) = &st.auth else {
        return Ok(Principal {
            sub: "anonymous".into(),
            tenant: DEFAULT_TENANT.into(),
            roles: vec![crate::auth::Role::Admin],
            granted: None,
        });
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let mut p = crate::auth::authenticate(cfg, header, now)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    // One read: the token's tenant must exist, and a user row (if any) narrows the
    // token's permissions to those its roles grant, or refuses a disabled user (revocation without
    // rotating keys).
    let access = st.store.access(&p.tenant, &p.sub).await?;
    if !access.tenant_exists {
        return Err(ApiError::Unauthorized(format!(
            "tenant {:?} does not exist",
            p.tenant
        )));
    }
    if let Some(user) = access.user {
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
    if let Err(e) = p.require(perm) {
        // The attempt is audited; failing to write the row must not turn a 403 into a 500,
        // so it is logged instead.
        let denied = AuditEntry {
            result: "denied".into(),
            ..AuditEntry::ok(&p.tenant, &p.sub, perm.as_str(), req.path())
        };
        if let Err(err) = st.store.record_audit(&denied).await {
            tracing::error!(error = %err, "could not write the audit row of a denied request");
        }
        return Err(ApiError::Forbidden(e.to_string()));
    }
    Ok(p)
}

/// The identity recorded as `by` of a command: the token's `sub`. A body's own `by` is
/// only honoured without auth (dev and tests); with auth it must match the token.
fn acting_as(st: &AppState, p: &Principal, claimed: Option<String>) -> Result<String, ApiError> {
    match claimed {
        Some(b) if b.len() > 256 => {
            Err(ApiError::BadRequest("by must be at most 256 bytes".into()))
        }
        Some(b) if st.auth.is_none() => Ok(b),
        Some(b) if b != p.sub => Err(ApiError::BadRequest(format!(
            "by {b:?} differs from the caller {:?}: it is taken from the token; omit it",
            p.sub
        ))),
        _ => Ok(p.sub.clone()),
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    st.store.now_ms().await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

async fn metrics(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::SystemRead).await?;
    let counts = st.store.count_by_status().await?;
    let extra: Vec<aetheris_actors::metrics::ScrapeGauge> = counts
        .into_iter()
        .map(|c| {
            (
                "aetheris_jobs",
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

/// Reads the whole body, refusing more than `limit` bytes without buffering them.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::TooLarge(limit));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub plan: Plan,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Parses a submission, naming the JSON path of any problem.
pub fn parse_submission(bytes: &[u8], tools: &dyn ToolCatalog) -> Result<Submission, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let sub: Submission = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest(format!("invalid submission: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid submission at {path}: {inner}"))
        }
    })?;
    if let Some(k) = &sub.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::BadRequest(
                "idempotency_key must be 1-256 characters".into(),
            ));
        }
    }
    let errs = sub.plan.validate(tools);
    if !errs.is_empty() {
        return Err(ApiError::InvalidPlan(errs));
    }
    Ok(sub)
}

async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobCreate).await?;
    let body = read_body(&req, payload, st.body_limit).await?;
    let sub = parse_submission(&body, &Catalog(&st.tools))?;
    // Admission control before anything is stored: over the limit → 429, nothing written.
    if let Err(ms) = st.limits.admit(&p.tenant).await {
        return Err(ApiError::TooManyRequests(
            format!("tenant {:?} job admission", p.tenant),
            ms,
        ));
    }
    let (summary, created) = st
        .store
        .submit(
            NewJob {
                tenant: p.tenant.clone(),
                idempotency_key: sub.idempotency_key,
                plan: sub.plan,
                input: sub.input,
            },
            // The store fills in the job id and whether it was created.
            Some(&AuditEntry::ok(&p.tenant, &p.sub, "job.submit", "")),
        )
        .await?;
    let view = job_view(&st.store, &p.tenant, summary.job_id).await?;
    if created {
        st.metrics.inc(
            "aetheris_jobs_submitted_total",
            &[("tenant", p.tenant.as_str())],
        );
        Ok(HttpResponse::Created()
            .insert_header(("Location", format!("/v1/jobs/{}", summary.job_id)))
            .json(view))
    } else {
        Ok(HttpResponse::Ok().json(view))
    }
}

/// A list's `limit`: `default` when absent, else 1-1000.
fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n @ 1..=1000 => Ok(n),
        _ => Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        )),
    }
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("job {raw:?} not found")))
}

/// The full view of one job: its summary plus the folded state of every step.
pub async fn job_view(store: &DynStore, tenant: &str, id: JobId) -> Result<Value, ApiError> {
    let summary = store
        .get_job(Scope::Tenant(tenant), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let state = load_job_state(store, id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?
        .state;
    Ok(render_job(&summary, &state))
}

fn render_job(s: &JobSummary, state: &JobState) -> Value {
    let steps: Vec<Value> = state
        .plan
        .steps
        .iter()
        .filter_map(|spec| {
            let st = state.steps.get(&spec.id)?;
            Some(json!({
                "id": spec.id,
                "tool": spec.tool,
                "status": st.status.as_str(),
                "attempt": st.attempt,
                "effect": st.effect.map(|e| e.as_str()),
                "invocation_key": st.invocation_key,
                "output": st.output,
                "error": st.error,
                "started_at_ms": st.started_at_ms,
                "finished_at_ms": st.finished_at_ms,
                "deadline_ms": st.deadline_ms,
            }))
        })
        .collect();
    json!({
        "job_id": s.job_id,
        "tenant": s.tenant,
        "status": state.status.as_str(),
        "idempotency_key": s.idempotency_key,
        "last_seq": state.last_seq,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": state.updated_at_ms,
        "input": state.input,
        "steps": steps,
        "output": state.output,
        "error": state.error,
    })
}

async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobRead).await?;
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(job_view(&st.store, &p.tenant, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(
    req: HttpRequest,
    q: web::Query<ListQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobRead).await?;
    let status = match &q.state {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {s:?}; use one of {}",
                JobStatus::ALL.map(|x| x.as_str()).join(", ")
            ))
        })?),
    };
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<JobId>()
                .map_err(|_| ApiError::BadRequest(format!("bad cursor {c:?}")))?,
        ),
    };
    let limit = page_limit(q.limit, 50)?;
    let jobs = st
        .store
        .list_jobs(
            Scope::Tenant(&p.tenant),
            ListFilter {
                status,
                before,
                limit,
            },
        )
        .await?;
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.job_id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({"jobs": jobs, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<EventsQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobRead).await?;
    let id = parse_id(&path)?;
    let wants_sse = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        // Scope check up front: another tenant's job is a 404, not an empty stream.
        st.store
            .get_job(Scope::Tenant(&p.tenant), id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
        return Ok(event_stream(
            st.store.clone(),
            p.tenant.clone(),
            id,
            q.after.unwrap_or(0),
        ));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let evs = st
        .store
        .read_events(Scope::Tenant(&p.tenant), id, q.after.unwrap_or(0), limit)
        .await?;
    let next = evs.last().map(|e| e.seq);
    Ok(HttpResponse::Ok().json(json!({"events": evs, "next_after": next})))
}

/// Server-Sent Events: every event after `after`, then new ones as they are appended
/// (polled from the store, so it works with any number of gateways and workers), until
/// the job's terminal event. `id:` is the seq, so a client resumes with `?after=`.
fn event_stream(store: DynStore, tenant: String, id: JobId, after: u64) -> HttpResponse {
    struct Cursor {
        store: DynStore,
        after: u64,
        done: bool,
        idle_polls: u32,
    }
    let cur = Cursor {
        store,
        after,
        done: false,
        idle_polls: 0,
    };
    let stream = futures::stream::unfold(cur, move |mut c| {
        let tenant = tenant.clone();
        async move {
            if c.done {
                return None;
            }
            loop {
                match c
                    .store
                    .read_events(Scope::Tenant(&tenant), id, c.after, 500)
                    .await
                {
                    Ok(evs) if !evs.is_empty() => {
                        let mut out = String::new();
                        for e in &evs {
                            let data = serde_json::to_string(e).unwrap_or_default();
                            out.push_str(&format!(
                                "id: {}\nevent: {}\ndata: {}\n\n",
                                e.seq,
                                e.body.kind(),
                                data
                            ));
                            c.after = e.seq;
                            if e.body.is_terminal() {
                                c.done = true;
                            }
                        }
                        c.idle_polls = 0;
                        return Some((Ok::<_, actix_web::Error>(web::Bytes::from(out)), c));
                    }
                    Ok(_) => {
                        c.idle_polls += 1;
                        if c.idle_polls % 150 == 0 {
                            return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), c));
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        c.done = true;
                        let msg = format!(
                            "event: error\ndata: {}\n\n",
                            json!({"detail": e.to_string()})
                        );
                        return Some((Ok(web::Bytes::from(msg)), c));
                    }
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

async fn ledger(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobRead).await?;
    let id = parse_id(&path)?;
    let rows = st.store.ledger(Scope::Tenant(&p.tenant), id).await?;
    Ok(HttpResponse::Ok().json(json!({"ledger": rows})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
    /// Who cancels: must match the token's `sub` when auth is on (see `acting_as`).
    #[serde(default)]
    by: Option<String>,
}

/// Stores a cancel command durably (G1) and answers 202; the worker holding the job's
/// lease appends `job_cancelled` under its fencing token (a job nobody runs is claimed to
/// apply it). 409 if the job already finished.
async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobCancel).await?;
    let id = parse_id(&path)?;
    let body = read_body(&req, payload, st.body_limit).await?;
    let r: CancelRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        CancelRequest {
            reason: None,
            by: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid cancel request: {e}")))?
    };
    let reason = r.reason.unwrap_or_else(|| "no reason given".into());
    if reason.len() > 1024 {
        return Err(ApiError::BadRequest(
            "reason must be at most 1024 bytes".into(),
        ));
    }
    let by = acting_as(&st, &p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            aetheris_store::CommandBody::Cancel { by, reason },
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "job.cancel",
                id.to_string(),
            )),
        )
        .await?;
    Ok(HttpResponse::Accepted().json(json!({
        "job_id": id,
        "command_id": cmd.id,
        "status": "cancel_requested",
        "created_at_ms": cmd.created_at_ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    #[serde(default)]
    payload: Value,
    /// Makes the signal idempotent: the same id is applied once.
    #[serde(default)]
    signal_id: Option<String>,
    /// Who sends it (an approval's approver): must match the token's `sub` when auth is
    /// on (see `acting_as`).
    #[serde(default)]
    by: Option<String>,
}

fn check_name(what: &str, v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} {v:?} must be 1-128 characters of [A-Za-z0-9_.-]"
        )))
    }
}

/// Stores a signal durably (G1) and answers 202; the lease holder (or the worker that
/// the stored command wakes) records `signal_received` and resumes any `wait` step for
/// it. Idempotent by `signal_id`; 409 if the job finished.
async fn signal(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobSignal).await?;
    let (raw_id, name) = path.into_inner();
    let id = parse_id(&raw_id)?;
    check_name("signal name", &name)?;
    let body = read_body(&req, payload, st.body_limit).await?;
    let r: SignalRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        SignalRequest {
            payload: Value::Null,
            signal_id: None,
            by: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid signal: {e}")))?
    };
    let signal_id = match r.signal_id {
        Some(s) => {
            check_name("signal_id", &s)?;
            s
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let by = acting_as(&st, &p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            aetheris_store::CommandBody::Signal {
                signal: name.clone(),
                signal_id: signal_id.clone(),
                payload: r.payload,
                by: Some(by),
            },
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "job.signal",
                format!("{id}/signals/{name}"),
            )),
        )
        .await?;
    Ok(HttpResponse::Accepted().json(json!({
        "job_id": id, "signal": name, "signal_id": signal_id, "command_id": cmd.id,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    outcome: aetheris_runtime::ConfirmOutcome,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

/// Resolves an `outcome_unknown` step: `succeeded` (with `output`) or `not_executed`
/// (the step runs again with the same invocation key). 409 unless the step is
/// `outcome_unknown` with no confirmation pending.
async fn confirm(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::JobConfirm).await?;
    let (raw_id, step) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let body = read_body(&req, payload, st.body_limit).await?;
    let r: ConfirmRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid confirmation: {e}")))?;
    if r.outcome == aetheris_runtime::ConfirmOutcome::NotExecuted && r.output.is_some() {
        return Err(ApiError::BadRequest(
            "output is only for outcome \"succeeded\"".into(),
        ));
    }
    st.store
        .get_job(Scope::Tenant(&p.tenant), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let state = load_job_state(&st.store, id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?
        .state;
    let status = state
        .steps
        .get(&step)
        .map(|s| s.status)
        .ok_or_else(|| ApiError::NotFound(format!("job {id} has no step {step:?}")))?;
    if status != aetheris_runtime::StepStatus::OutcomeUnknown {
        return Err(ApiError::Conflict(format!(
            "step {step:?} is {}, not outcome_unknown",
            status.as_str()
        )));
    }
    let pending = st.store.pending_commands(id).await?;
    if pending.iter().any(
        |c| matches!(&c.body, aetheris_store::CommandBody::Confirm { step: s, .. } if *s == step),
    ) {
        return Err(ApiError::Conflict(format!(
            "step {step:?} already has a confirmation pending"
        )));
    }
    let by = acting_as(&st, &p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            aetheris_store::CommandBody::Confirm {
                step: step.clone(),
                outcome: r.outcome,
                output: r.output,
                by,
                note: r.note,
            },
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "job.confirm",
                format!("{id}/steps/{step}"),
            )),
        )
        .await?;
    Ok(HttpResponse::Accepted().json(json!({"job_id": id, "step": step, "command_id": cmd.id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    limits: Option<aetheris_actors::ratelimit::TenantLimits>,
}

fn limits_json(l: &aetheris_actors::ratelimit::TenantLimits) -> Value {
    serde_json::to_value(l).unwrap_or(Value::Null)
}

/// Checks limits the way a limits file is checked (positive numbers).
fn check_limits(l: &aetheris_actors::ratelimit::TenantLimits) -> Result<(), ApiError> {
    let cfg = json!({"defaults": limits_json(l)});
    aetheris_actors::ratelimit::LimitsConfig::parse(&cfg.to_string())
        .map(|_| ())
        .map_err(ApiError::BadRequest)
}

async fn create_tenant(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::TenantAdmin).await?;
    require_system_tenant(&p)?;
    let body = read_body(&req, payload, st.body_limit).await?;
    let t: NewTenant = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid tenant: {e}")))?;
    check_name("tenant id", &t.id)?;
    let limits = t.limits.unwrap_or_default();
    check_limits(&limits)?;
    let name = t.name.unwrap_or_else(|| t.id.clone());
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

async fn list_tenants(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::TenantAdmin).await?;
    require_system_tenant(&p)?;
    Ok(HttpResponse::Ok().json(json!({"tenants": st.store.list_tenants().await?})))
}

async fn set_tenant_limits(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::TenantAdmin).await?;
    require_system_tenant(&p)?;
    let id = path.into_inner();
    let body = read_body(&req, payload, st.body_limit).await?;
    let limits: aetheris_actors::ratelimit::TenantLimits = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid limits: {e}")))?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRequest {
    roles: Vec<String>,
    #[serde(default)]
    disabled: bool,
}

/// The caller's tenant's users (a tenant's admins manage their own tenant's users).
async fn list_users(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::TenantAdmin).await?;
    Ok(HttpResponse::Ok().json(json!({"users": st.store.list_users(&p.tenant).await?})))
}

/// Creates or replaces a user of the caller's tenant: the roles its tokens may use, and
/// whether it is disabled. Takes effect on the next request (no token is reissued).
async fn put_user(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::TenantAdmin).await?;
    let id = path.into_inner();
    let ok_id = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@+".contains(c));
    if !ok_id {
        return Err(ApiError::BadRequest(format!(
            "user id {id:?} must be 1-256 characters of [A-Za-z0-9_.@+-]"
        )));
    }
    let body = read_body(&req, payload, st.body_limit).await?;
    let r: UserRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid user: {e}")))?;
    for role in &r.roles {
        crate::auth::Role::parse(role).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown role {role:?}: use admin, operator, submitter, viewer or auditor"
            ))
        })?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
    action: Option<String>,
}

/// The caller's tenant's access audit log, oldest first; page with `?after=<next_after>`.
async fn audit(
    req: HttpRequest,
    q: web::Query<AuditQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &st, Permission::AuditRead).await?;
    let limit = page_limit(q.limit, 100)?;
    // Actions are `job.cancel`-style names, or a permission (`job:create`) for denials.
    if let Some(a) = q.action.as_deref() {
        if a.is_empty()
            || a.len() > 64
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || "_.:".contains(c))
        {
            return Err(ApiError::BadRequest(format!(
                "action {a:?} must be 1-64 characters of [a-z_.:]"
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
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({"entries": rows, "next_after": next})))
}

/// Turns actix's own extractor errors (bad query strings) into problem+json.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("bad query string: {err}")).into()
}
