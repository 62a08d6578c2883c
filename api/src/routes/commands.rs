//! Commands for a job: cancel, signal, confirm. Each is stored durably before the 202
//! (G1) and then applied by the worker holding the job's lease under its fencing token
//! (G3); a job nobody runs is claimed to apply it. Who acted is the token's `sub`.
//! The checks and the store call of each live in one function ([`cancel_job`],
//! [`signal_job`], [`confirm_step`]) that the API handlers and the trace UI both call.
//!
//! Cancel and signal accept an empty body (all defaults); confirm requires one. Sizes are
//! capped here so a command can never carry more than a few hundred KiB into a job's log.

use super::{
    acting_as, check_name, parse_id, schema, Access, Answer, AppState, Caller, HttpMethod,
    RouteSpec,
};
use crate::auth::{Permission, Principal};
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::{ConfirmOutcome, JobId, StepStatus};
use aetheris_store::{AuditEntry, CommandBody, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest cancel reason and confirmation note, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest signal id.
pub const MAX_SIGNAL_NAME: usize = 128;
/// Longest signal name: an agent's approval (`approve:<step>.<turn>.<call>`) is longer
/// than a step id.
pub const MAX_SIGNAL_NAME_WITH_CALL: usize = 200;
/// Largest signal payload, as JSON text.
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest confirmed output, as JSON text.
pub const MAX_CONFIRM_OUTPUT_BYTES: usize = 256 * 1024;

pub const CANCEL: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/jobs/{id}/cancel",
    Access::Requires(Permission::JobCancel),
    "cancelJob",
    "Cancel a job (stored durably, applied by the worker running it); the body \
              may be empty",
    Answer::json(202, "the cancel is stored", schema::<CancelAccepted>),
    |r| r.to(cancel),
)
.body(Presence::Optional, schema::<CancelRequest>)
.errors(&[404, 409]);

pub const SIGNAL: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/jobs/{id}/signals/{name}",
    Access::Requires(Permission::JobSignal),
    "signalJob",
    "Send a signal (e.g. an approval) to a job; `wait` steps for that name resume; \
              the body may be empty",
    Answer::json(202, "the signal is stored", schema::<SignalAccepted>),
    |r| r.to(signal),
)
.body(Presence::Optional, schema::<SignalRequest>)
.errors(&[404, 409]);

pub const CONFIRM: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/jobs/{id}/steps/{step}/confirm",
    Access::Requires(Permission::JobConfirm),
    "confirmStep",
    "Resolve an outcome_unknown step: it happened (`succeeded`, with its output) \
              or not (`not_executed`: it runs again with the same invocation key)",
    Answer::json(202, "the confirmation is stored", schema::<ConfirmAccepted>),
    |r| r.to(confirm),
)
.body(Presence::Required, schema::<ConfirmRequest>)
.errors(&[404, 409]);

/// `POST /v1/jobs/{id}/cancel`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why (recorded in the `job_cancelled` event), at most 1024 bytes.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Who cancels: taken from the token; only honoured without authentication.
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct CancelAccepted {
    pub job_id: String,
    pub command_id: u64,
    /// Always `cancel_requested`.
    pub status: String,
    pub created_at_ms: i64,
}

fn check_len(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{what} must be at most {max} bytes"
        )));
    }
    Ok(())
}

async fn cancel(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let r: CancelRequest = crate::body::json_optional(&req, payload, st.body, "cancel").await?;
    Ok(HttpResponse::Accepted().json(cancel_job(&st, &p, id, r).await?))
}

/// Checks and stores a cancel for job `id` of `p`'s tenant (404 for another tenant's job,
/// 409 for a finished one) with its audit row; the one code path of the API and the UI.
pub async fn cancel_job(
    st: &AppState,
    p: &Principal,
    id: JobId,
    r: CancelRequest,
) -> Result<CancelAccepted, ApiError> {
    let reason = r.reason.unwrap_or_else(|| "no reason given".into());
    check_len("reason", &reason, MAX_REASON_BYTES)?;
    let by = acting_as(st, p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            CommandBody::Cancel { by, reason },
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "job.cancel",
                id.to_string(),
            )),
        )
        .await?;
    Ok(CancelAccepted {
        job_id: id.to_string(),
        command_id: cmd.id,
        status: "cancel_requested".into(),
        created_at_ms: cmd.created_at_ms,
    })
}

/// `POST /v1/jobs/{id}/signals/{name}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Any JSON (at most 64 KiB as text); a `wait` step's output.
    #[serde(default)]
    pub payload: Value,
    /// Makes the signal idempotent: the same id is applied once. 1-128 characters of
    /// `[A-Za-z0-9_.-]`; a new id is made when absent.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub signal_id: Option<String>,
    /// Who sends it (an approval's approver): taken from the token; only honoured without
    /// authentication.
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct SignalAccepted {
    pub job_id: String,
    pub signal: String,
    pub signal_id: String,
    pub command_id: u64,
}

/// Stores a signal durably (G1) and answers 202; idempotent by `signal_id`; 409 if the
/// job finished.
async fn signal(
    req: HttpRequest,
    p: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, name) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let r: SignalRequest = crate::body::json_optional(&req, payload, st.body, "signal").await?;
    Ok(HttpResponse::Accepted().json(signal_job(&st, &p, id, name, r).await?))
}

/// Checks and stores signal `name` for job `id` of `p`'s tenant with its audit row; the
/// one code path of the API and the UI.
pub async fn signal_job(
    st: &AppState,
    p: &Principal,
    id: JobId,
    name: String,
    r: SignalRequest,
) -> Result<SignalAccepted, ApiError> {
    check_signal_name(&name)?;
    check_len(
        "payload (as JSON text)",
        &r.payload.to_string(),
        MAX_SIGNAL_PAYLOAD_BYTES,
    )?;
    let signal_id = match r.signal_id {
        Some(s) => {
            check_name("signal_id", &s, MAX_SIGNAL_NAME)?;
            s
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let by = acting_as(st, p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            CommandBody::Signal {
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
    Ok(SignalAccepted {
        job_id: id.to_string(),
        signal: name,
        signal_id,
        command_id: cmd.id,
    })
}

/// A signal name: `[A-Za-z0-9_.-]`, and `:` (an agent's `approve:<call>`), 1-200 long.
fn check_signal_name(v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= MAX_SIGNAL_NAME_WITH_CALL
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "signal name {:?} must be 1-{MAX_SIGNAL_NAME_WITH_CALL} characters of [A-Za-z0-9_.:-]",
            crate::problem::clip(v, 64)
        )))
    }
}

/// `POST /v1/jobs/{id}/steps/{step}/confirm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// `succeeded` (it happened; give its `output`) or `not_executed` (run it again).
    pub outcome: ConfirmOutcome,
    /// The step's output (with `succeeded`), at most 256 KiB as JSON text.
    #[serde(default)]
    pub output: Option<Value>,
    /// A note for the record, at most 1024 bytes.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub note: Option<String>,
    /// Who confirms: taken from the token; only honoured without authentication.
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct ConfirmAccepted {
    pub job_id: String,
    pub step: String,
    pub command_id: u64,
}

/// Resolves an `outcome_unknown` step. 409 unless the step is `outcome_unknown` with no
/// confirmation pending.
async fn confirm(
    req: HttpRequest,
    p: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, step) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let r: ConfirmRequest =
        crate::body::json_required(&req, payload, st.body, "confirmation").await?;
    Ok(HttpResponse::Accepted().json(confirm_step(&st, &p, id, step, r).await?))
}

/// Checks and stores the confirmation of `step` of job `id` of `p`'s tenant with its audit
/// row (409 unless the step is `outcome_unknown` with no confirmation pending); the one
/// code path of the API and the UI.
pub async fn confirm_step(
    st: &AppState,
    p: &Principal,
    id: JobId,
    step: String,
    r: ConfirmRequest,
) -> Result<ConfirmAccepted, ApiError> {
    let outcome = r.outcome;
    if outcome == ConfirmOutcome::NotExecuted && r.output.is_some() {
        return Err(ApiError::BadRequest(
            "output is only for outcome \"succeeded\"".into(),
        ));
    }
    if let Some(o) = &r.output {
        check_len(
            "output (as JSON text)",
            &o.to_string(),
            MAX_CONFIRM_OUTPUT_BYTES,
        )?;
    }
    if let Some(n) = &r.note {
        check_len("note", n, MAX_REASON_BYTES)?;
    }
    let state = super::jobs::job_state(&st.store, &p.tenant, id).await?;
    // A plan step, or an agent step's tool call (`step.turn.index`).
    let status = state.status_of(&step).ok_or_else(|| {
        ApiError::NotFound(format!(
            "job {id} has no step {:?}",
            crate::problem::clip(&step, 64)
        ))
    })?;
    if status != StepStatus::OutcomeUnknown {
        return Err(ApiError::Conflict(format!(
            "step {step:?} is {}, not outcome_unknown",
            status.as_str()
        )));
    }
    let pending = st.store.pending_commands(id).await?;
    if pending
        .iter()
        .any(|c| matches!(&c.body, CommandBody::Confirm { step: s, .. } if *s == step))
    {
        return Err(ApiError::Conflict(format!(
            "step {step:?} already has a confirmation pending"
        )));
    }
    let by = acting_as(st, p, r.by)?;
    let cmd = st
        .store
        .put_command(
            Scope::Tenant(&p.tenant),
            id,
            CommandBody::Confirm {
                step: step.clone(),
                outcome,
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
    Ok(ConfirmAccepted {
        job_id: id.to_string(),
        step,
        command_id: cmd.id,
    })
}
