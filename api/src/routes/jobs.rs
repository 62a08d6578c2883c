//! Jobs: submit (durable before 201, G1; idempotent by key with Stripe's semantics), list,
//! one job's folded view, its hash-chained events (JSON pages or Server-Sent Events) and
//! its ledger. Every read is scoped by the caller's tenant (G6: another tenant's job is a
//! 404).
//!
//! A submission's plan is parsed and validated off the HTTP workers, at most as many at
//! once as there are cores, so a burst of big hostile plans cannot stall `/healthz` or
//! other tenants' requests.

use super::{
    page_limit, parse_id, schema, Access, Answer, AppState, Caller, Catalog, HttpMethod, RouteSpec,
};
use crate::auth::Permission;
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::{JobId, JobState, JobStatus, Plan, RecordedEvent, StepStatus};
use aetheris_store::{AuditEntry, DynStore, JobSummary, LedgerEntry, ListFilter, NewJob, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest `idempotency_key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// `POST /v1/jobs`: a plan, its input, and an optional idempotency key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The plan: a DAG of steps (docs/plans.md).
    pub plan: Plan,
    /// The job's input, referred to as `${input.…}` in step arguments.
    #[serde(default)]
    pub input: Value,
    /// A repeat with the same key and the same plan and input returns the same job (200);
    /// the same key with a different request is a 409. 1-256 characters.
    #[serde(default)]
    #[schemars(length(min = 1, max = 256))]
    pub idempotency_key: Option<String>,
}

pub const SUBMIT: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/jobs",
    Access::Requires(Permission::JobCreate),
    "submitJob",
    "Submit a job (201 stored; 200 an identical repeat of an idempotency key)",
    Answer::json(
        201,
        "the job, durably stored (200 for an identical repeat)",
        schema::<JobView>,
    ),
    |r| r.to(submit),
)
.body(Presence::Required, schema::<Submission>)
.errors(&[200, 409, 422, 429])
.creates("/v1/jobs/{id}", "/job_id");

pub const LIST: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/jobs",
    Access::Requires(Permission::JobRead),
    "listJobs",
    "List the tenant's jobs, newest first (cursor pages)",
    Answer::json(200, "one page of jobs", schema::<JobPage>),
    |r| r.to(list),
)
.query(schema::<ListQuery>);

pub const GET: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/jobs/{id}",
    Access::Requires(Permission::JobRead),
    "getJob",
    "One job and the state of each of its steps",
    Answer::json(200, "the job", schema::<JobView>),
    |r| r.to(get),
)
.errors(&[404]);

pub const EVENTS: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/jobs/{id}/events",
    Access::Requires(Permission::JobRead),
    "jobEvents",
    "A job's hash-chained events (JSON pages, or live as Server-Sent Events with \
              `Accept: text/event-stream`)",
    Answer::json(200, "one page of events", schema::<EventPage>).or_event_stream(),
    |r| r.to(events),
)
.query(schema::<EventsQuery>)
.errors(&[404]);

pub const LEDGER: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/jobs/{id}/ledger",
    Access::Requires(Permission::JobRead),
    "jobLedger",
    "A job's invocation ledger (one row per tool step invocation)",
    Answer::json(200, "the ledger", schema::<LedgerPage>),
    |r| r.to(ledger),
)
.errors(&[404]);

/// Parses and validates a submission (syntax, shape, idempotency key, plan). CPU-bound
/// for big plans: callers run it off the HTTP workers ([`parse_off_workers`]).
pub fn parse_submission(
    bytes: &[u8],
    tools: &dyn aetheris_runtime::ToolCatalog,
) -> Result<Submission, ApiError> {
    let sub: Submission = crate::body::parse_object(bytes, "submission")?;
    if let Some(k) = &sub.idempotency_key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::BadRequest(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
    }
    let errs = sub.plan.validate(tools);
    if !errs.is_empty() {
        return Err(ApiError::InvalidPlan(errs));
    }
    Ok(sub)
}

/// Runs [`parse_submission`] on the blocking pool, at most `st.validation` at once (the
/// rest wait asynchronously, holding no HTTP worker).
async fn parse_off_workers(st: &AppState, body: web::BytesMut) -> Result<Submission, ApiError> {
    let _permit = st
        .validation
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable("the gateway is shutting down".into()))?;
    let catalog = Catalog(st.tools.clone());
    web::block(move || parse_submission(&body, &catalog))
        .await
        .map_err(|e| ApiError::Internal(format!("validating the plan: {e}")))?
}

async fn submit(
    req: HttpRequest,
    p: Caller,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = crate::body::json_bytes(&req, payload, st.body, "submission").await?;
    let sub = parse_off_workers(&st, body).await?;
    // Admission control before anything is stored: over the limit → 429, nothing written.
    if let Err(ms) = st.limits.admit(&p.tenant).await {
        return Err(ApiError::TooManyRequests(
            format!("tenant {:?} job admission", p.tenant),
            ms,
        ));
    }
    let key = sub.idempotency_key.clone();
    let (plan, input) = (sub.plan.clone(), sub.input.clone());
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
    let state = load_job(&st.store, summary.job_id).await?;
    if created {
        metrics::counter!(aetheris_actors::metrics::JOBS_SUBMITTED, "tenant" => p.tenant.clone())
            .increment(1);
        // The job's trace gets its `accept_job` span, linking the caller's `traceparent`.
        let caller = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(aetheris_actors::trace::SpanContext::parse_traceparent);
        aetheris_actors::trace::spans::accept_job(summary.job_id, &p.tenant, caller);
        return Ok(HttpResponse::Created()
            .insert_header(("Location", format!("/v1/jobs/{}", summary.job_id)))
            .json(JobView::new(&summary, &state)));
    }
    // Stripe's semantics: a key names one request; reusing it for another is a mistake
    // the caller must hear about, not a silent return of the old job.
    if *state.plan != plan || state.input != input {
        return Err(ApiError::Conflict(format!(
            "idempotency_key {:?} was already used for job {} with a different plan or \
             input; use a new key for a new job",
            crate::problem::clip(key.as_deref().unwrap_or_default(), 64),
            summary.job_id
        )));
    }
    Ok(HttpResponse::Ok().json(JobView::new(&summary, &state)))
}

/// One step of a [`JobView`].
#[derive(Debug, Serialize, JsonSchema)]
pub struct StepView {
    pub id: String,
    /// The tool of a tool step (`agent` for an agent step); absent for waits and sleeps.
    pub tool: Option<String>,
    /// pending, running, waiting, sleeping, succeeded, failed, outcome_unknown, or
    /// cancelled (a step that had not finished when its job was cancelled).
    pub status: String,
    pub attempt: u32,
    pub effect: Option<String>,
    pub invocation_key: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    /// An agent step's loop: its turns, tool calls, tokens and what it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<super::agents::AgentView>,
}

/// A job: its summary plus the folded state of every step.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobView {
    pub job_id: String,
    pub tenant: String,
    /// queued, running, waiting, succeeded, failed or cancelled.
    pub status: String,
    pub idempotency_key: Option<String>,
    pub last_seq: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub input: Value,
    pub steps: Vec<StepView>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl JobView {
    pub fn new(s: &JobSummary, state: &JobState) -> JobView {
        let cancelled = state.status == JobStatus::Cancelled;
        let steps = state
            .plan
            .steps
            .iter()
            .filter_map(|spec| {
                let st = state.steps.get(&spec.id)?;
                let unfinished = matches!(
                    st.status,
                    StepStatus::Pending
                        | StepStatus::Running
                        | StepStatus::Waiting
                        | StepStatus::Sleeping
                );
                Some(StepView {
                    id: spec.id.clone(),
                    tool: spec
                        .tool
                        .clone()
                        .or_else(|| spec.agent.as_ref().map(|_| "agent".to_string())),
                    status: if cancelled && unfinished {
                        "cancelled".into()
                    } else {
                        st.status.as_str().into()
                    },
                    attempt: st.attempt,
                    effect: st.effect.map(|e| e.as_str().to_string()),
                    invocation_key: st.invocation_key.clone(),
                    output: st.output.clone(),
                    error: st.error.clone(),
                    started_at_ms: st.started_at_ms,
                    finished_at_ms: st.finished_at_ms,
                    deadline_ms: st.deadline_ms,
                    agent: st
                        .agent
                        .as_deref()
                        .map(|a| super::agents::agent_view(state, a)),
                })
            })
            .collect();
        JobView {
            job_id: s.job_id.to_string(),
            tenant: s.tenant.clone(),
            status: state.status.as_str().into(),
            idempotency_key: s.idempotency_key.clone(),
            last_seq: state.last_seq,
            created_at_ms: s.created_at_ms,
            updated_at_ms: state.updated_at_ms,
            input: state.input.clone(),
            steps,
            output: state.output.clone(),
            error: state.error.clone(),
        }
    }
}

async fn load_job(store: &DynStore, id: JobId) -> Result<JobState, ApiError> {
    let loaded = aetheris_store::load_job_state(store, id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    Ok(loaded.state)
}

/// The full view of one job of `tenant` (404 for another tenant's job).
pub async fn job_view(store: &DynStore, tenant: &str, id: JobId) -> Result<JobView, ApiError> {
    let summary = store
        .get_job(Scope::Tenant(tenant), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let state = load_job(store, id).await?;
    Ok(JobView::new(&summary, &state))
}

/// A job's state, for routes that check a step before storing a command (404 for another
/// tenant's job).
pub async fn job_state(store: &DynStore, tenant: &str, id: JobId) -> Result<JobState, ApiError> {
    store
        .get_job(Scope::Tenant(tenant), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    load_job(store, id).await
}

async fn get(
    p: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(job_view(&st.store, &p.tenant, id).await?))
}

/// `GET /v1/jobs` query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this state.
    #[schemars(schema_with = "job_states")]
    pub state: Option<String>,
    /// Continue after this cursor (`next_cursor` of the previous page).
    #[schemars(extend("format" = "uuid"))]
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
}

/// The states a job can be in, from [`JobStatus::ALL`].
fn job_states(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let states: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    schemars::json_schema!({"type": "string", "enum": states})
}

/// A page of jobs; `next_cursor` is set when more may follow.
#[derive(Serialize, JsonSchema)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    pub next_cursor: Option<String>,
}

async fn list(
    p: Caller,
    q: web::Query<ListQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let status = match &q.state {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {:?}; use one of {}",
                crate::problem::clip(s, 32),
                JobStatus::ALL.map(|x| x.as_str()).join(", ")
            ))
        })?),
    };
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(c.parse::<JobId>().map_err(|_| {
            ApiError::BadRequest(format!("bad cursor {:?}", crate::problem::clip(c, 64)))
        })?),
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
    let next_cursor = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.job_id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(JobPage { jobs, next_cursor }))
}

/// `GET /v1/jobs/{id}/events` query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger seq (`next_after` of the previous page).
    #[schemars(range(max = i64::MAX))]
    pub after: Option<u64>,
    /// Page size, 1-1000 (default 1000). Not used by the event stream.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
}

/// A page of events; `next_after` is the last seq of the page.
#[derive(Serialize, JsonSchema)]
pub struct EventPage {
    pub events: Vec<RecordedEvent>,
    pub next_after: Option<u64>,
}

async fn events(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    q: web::Query<EventsQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let limit = page_limit(q.limit, super::MAX_PAGE_LIMIT)?;
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
    let evs = st
        .store
        .read_events(Scope::Tenant(&p.tenant), id, q.after.unwrap_or(0), limit)
        .await?;
    let next_after = evs.last().map(|e| e.seq);
    Ok(HttpResponse::Ok().json(EventPage {
        events: evs,
        next_after,
    }))
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

/// A job's ledger rows.
#[derive(Serialize, JsonSchema)]
pub struct LedgerPage {
    pub ledger: Vec<LedgerEntry>,
}

async fn ledger(
    p: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let rows = st.store.ledger(Scope::Tenant(&p.tenant), id).await?;
    if rows.is_empty() {
        st.store
            .get_job(Scope::Tenant(&p.tenant), id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    }
    Ok(HttpResponse::Ok().json(LedgerPage { ledger: rows }))
}
