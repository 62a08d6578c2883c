//! Actions on a job from the UI: send a signal, cancel with a reason, confirm an
//! `outcome_unknown` step or agent tool call; the panel also holds the agent decisions of
//! [`super::approvals`] (approve, edit or reject a tool call; a budget). Each form is
//! offered only to a caller whose roles allow it (the API route's access), carries the
//! session's CSRF token, and first shows a confirmation page that repeats what will be
//! stored; only the confirmed request stores it, through the API's own command function
//! (`routes::commands`), so the checks, the audit row and `by` (the token's `sub`) are the
//! API's.

use super::error::UiError;
use super::layout::{self, badge, Nav};
use super::session::{check_same_origin, Viewer};
use super::{json, read_form};
use crate::problem::ApiError;
use crate::routes::commands::{self, CancelRequest, ConfirmRequest, SignalRequest};
use crate::routes::{jobs, parse_id, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::agent::CallStatus;
use aetheris_runtime::{ConfirmOutcome, JobId, JobState, StepStatus};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

/// The actions panel of a job page (refreshed live when what is possible changes).
pub fn panel_markup(viewer: &Viewer, state: &JobState) -> Markup {
    let id = state.job_id;
    let finished = state.status.is_terminal();
    let can_signal = viewer.may(commands::SIGNAL.access);
    let can_cancel = viewer.may(commands::CANCEL.access);
    let can_confirm = viewer.may(commands::CONFIRM.access);
    let unknown = outcome_unknown(state);
    let mut signals: Vec<&str> = state
        .plan
        .steps
        .iter()
        .filter_map(|s| s.wait.as_ref().map(|w| w.signal.as_str()))
        .collect();
    signals.dedup();
    let running = !finished;
    html! {
        section id="actions" aria-labelledby="h-actions"
            hx-get=[running.then(|| format!("/ui/jobs/{id}/actions"))]
            hx-trigger=[running.then_some("sse:actions")]
            hx-swap=[running.then_some("outerHTML")] {
            h2 id="h-actions" { "Actions" }
            @if finished {
                p.muted { "The job has finished; nothing more can be sent to it." }
            } @else if !(can_signal || can_cancel || can_confirm) {
                p.muted { "Your roles allow no actions on jobs." }
            } @else {
                div.actions {
                    @if can_signal {
                        (super::approvals::cards(viewer, state))
                    }
                    @if can_confirm {
                        @for step in &unknown {
                            form.card method="post" action={ "/ui/jobs/" (id) "/steps/" (step) "/confirm" } {
                                h3 { "Confirm " (if step.contains('.') { "tool call " } else { "step " }) (step) }
                                p { "Its outcome is unknown: the tool was called but no result was recorded. Say what happened." }
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                fieldset {
                                    legend { "Outcome" }
                                    label { input type="radio" name="outcome" value="succeeded" required; " It happened (succeeded)" }
                                    label { input type="radio" name="outcome" value="not_executed"; " It did not happen (run it again, same invocation key)" }
                                }
                                label for={ "c-out-" (step) } { "Output (JSON, with succeeded)" }
                                textarea id={ "c-out-" (step) } name="output" rows="3" spellcheck="false" {}
                                label for={ "c-note-" (step) } { "Note" }
                                input id={ "c-note-" (step) } name="note" maxlength="1024";
                                button type="submit" { "Confirm…" }
                            }
                        }
                    }
                    @if can_signal {
                        form.card method="post" action={ "/ui/jobs/" (id) "/signal" } {
                            h3 { "Send a signal" }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            label for="s-name" { "Signal name" }
                            input id="s-name" name="name" list="s-names" required pattern="[A-Za-z0-9_.\\-]{1,128}"
                                value=[signals.first()];
                            datalist id="s-names" { @for s in &signals { option value=(s) {} } }
                            label for="s-payload" { "Payload (JSON, optional)" }
                            textarea id="s-payload" name="payload" rows="3" spellcheck="false" {}
                            button type="submit" { "Send signal…" }
                        }
                    }
                    @if can_cancel {
                        form.card method="post" action={ "/ui/jobs/" (id) "/cancel" } {
                            h3 { "Cancel the job" }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            label for="k-reason" { "Reason" }
                            input id="k-reason" name="reason" maxlength="1024" required;
                            button.danger type="submit" { "Cancel job…" }
                        }
                    }
                }
            }
        }
    }
}

/// What may be confirmed: plan steps and agent tool calls (`step.turn.index`) whose
/// outcome is unknown, in plan order.
fn outcome_unknown(state: &JobState) -> Vec<&str> {
    let mut out = Vec::new();
    for spec in &state.plan.steps {
        let Some(s) = state.steps.get(&spec.id) else {
            continue;
        };
        if s.status == StepStatus::OutcomeUnknown {
            out.push(spec.id.as_str());
        }
        if let Some(agent) = s.agent.as_deref() {
            out.extend(
                agent
                    .current_calls()
                    .filter(|c| c.status == CallStatus::OutcomeUnknown)
                    .map(|c| c.id.as_str()),
            );
        }
    }
    out
}

/// `GET /ui/jobs/{id}/actions`.
pub async fn panel(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::GET.access).await?;
    let id = parse_id(&path)?;
    let state = super::job_page::load(&st, &viewer, id).await?;
    Ok(layout::ok(panel_markup(&viewer, &state)))
}

/// Fields every action form has.
#[derive(Deserialize)]
pub(super) struct Common {
    pub(super) csrf: String,
    /// `yes` once the confirmation page was accepted.
    #[serde(default)]
    pub(super) confirmed: Option<String>,
}

impl Common {
    /// The confirmation page was accepted: store it now.
    pub(super) fn is_confirmed(&self) -> bool {
        self.confirmed.as_deref() == Some("yes")
    }
}

/// The checks before any action: same site, signed in with the route's permission, this
/// session's form; the job (404 for another tenant's).
pub(super) async fn begin(
    req: &HttpRequest,
    st: &AppState,
    access: crate::routes::Access,
    raw_id: &str,
    csrf: &str,
) -> Result<(Viewer, JobState), UiError> {
    check_same_origin(req)?;
    let viewer = Viewer::of(req, st, access).await?;
    viewer.check_csrf(csrf)?;
    let id = parse_id(raw_id)?;
    let state = super::job_page::load(st, &viewer, id).await?;
    Ok((viewer, state))
}

pub(super) fn done(id: JobId, notice: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", format!("/ui/jobs/{id}?notice={notice}")))
        .finish()
}

/// The confirmation page: what will be stored, the same form again with `confirmed=yes`.
pub(super) fn confirm_page(
    viewer: &Viewer,
    state: &JobState,
    title: &str,
    action: &str,
    what: Markup,
    fields: &[(&str, &str)],
    button: &str,
) -> HttpResponse {
    let id = state.job_id;
    layout::ok(layout::page(
        title,
        viewer,
        Nav::Jobs,
        html! {
            h1 { (title) }
            p { "Job " a.mono href={ "/ui/jobs/" (id) } { (id) } " is " (badge(state.status.as_str())) "." }
            (what)
            p { "This is recorded as done by " strong { (viewer.principal.sub) } "." }
            form.card method="post" action=(action) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="confirmed" value="yes";
                @for (name, value) in fields {
                    input type="hidden" name=(name) value=(value);
                }
                div.buttons {
                    button.danger type="submit" autofocus { (button) }
                    a href={ "/ui/jobs/" (id) } { "No, go back" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct CancelForm {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    reason: String,
}

/// `POST /ui/jobs/{id}/cancel`.
pub async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let form: CancelForm = read_form(&req, payload, &st).await?;
    let (viewer, state) =
        begin(&req, &st, commands::CANCEL.access, &path, &form.common.csrf).await?;
    let reason = form.reason.trim().to_string();
    if !form.common.is_confirmed() {
        let action = format!("/ui/jobs/{}/cancel", state.job_id);
        return Ok(confirm_page(
            &viewer,
            &state,
            "Cancel this job?",
            &action,
            html! { p { "Reason: " q { (if reason.is_empty() { "no reason given" } else { &reason }) } } p { "In-flight calls are abandoned and no further step runs." } },
            &[("reason", &reason)],
            "Yes, cancel the job",
        ));
    }
    let r = CancelRequest {
        reason: (!reason.is_empty()).then_some(reason),
        by: None,
    };
    commands::cancel_job(&st, &viewer.principal, state.job_id, r).await?;
    Ok(done(state.job_id, "cancel"))
}

#[derive(Deserialize)]
struct SignalForm {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: String,
}

/// A JSON text field: empty is `null`.
pub(super) fn json_field(what: &str, text: &str) -> Result<Value, UiError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("{what} is not valid JSON: {e}")).into())
}

/// `POST /ui/jobs/{id}/signal`.
pub async fn signal(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let form: SignalForm = read_form(&req, payload, &st).await?;
    let (viewer, state) =
        begin(&req, &st, commands::SIGNAL.access, &path, &form.common.csrf).await?;
    let name = form.name.trim().to_string();
    crate::routes::check_name("signal name", &name, commands::MAX_SIGNAL_NAME)?;
    let value = json_field("the payload", &form.payload)?;
    if !form.common.is_confirmed() {
        let action = format!("/ui/jobs/{}/signal", state.job_id);
        return Ok(confirm_page(
            &viewer,
            &state,
            "Send this signal?",
            &action,
            html! { p { "Signal " code { (name) } " with payload:" } (json::block("payload", &value)) },
            &[("name", &name), ("payload", &form.payload)],
            "Yes, send the signal",
        ));
    }
    let r = SignalRequest {
        payload: value,
        signal_id: None,
        by: None,
    };
    commands::signal_job(&st, &viewer.principal, state.job_id, name, r).await?;
    Ok(done(state.job_id, "signal"))
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    output: String,
    #[serde(default)]
    note: String,
}

/// `POST /ui/jobs/{id}/steps/{step}/confirm`.
pub async fn confirm(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let (raw_id, step) = path.into_inner();
    let form: ConfirmForm = read_form(&req, payload, &st).await?;
    let (viewer, state) = begin(
        &req,
        &st,
        commands::CONFIRM.access,
        &raw_id,
        &form.common.csrf,
    )
    .await?;
    let outcome = match form.outcome.as_str() {
        "succeeded" => ConfirmOutcome::Succeeded,
        "not_executed" => ConfirmOutcome::NotExecuted,
        _ => {
            return Err(
                ApiError::BadRequest("choose an outcome: succeeded or not_executed".into()).into(),
            )
        }
    };
    let output = match outcome {
        ConfirmOutcome::Succeeded => Some(json_field("the output", &form.output)?),
        ConfirmOutcome::NotExecuted if !form.output.trim().is_empty() => {
            return Err(
                ApiError::BadRequest("an output is only for outcome \"succeeded\"".into()).into(),
            )
        }
        ConfirmOutcome::NotExecuted => None,
    };
    let note = form.note.trim().to_string();
    if !form.common.is_confirmed() {
        let action = format!("/ui/jobs/{}/steps/{step}/confirm", state.job_id);
        let said = match outcome {
            ConfirmOutcome::Succeeded => {
                "it happened (succeeded); the job goes on with this output"
            }
            ConfirmOutcome::NotExecuted => {
                "it did not happen (not executed); the step runs again with the same invocation key"
            }
        };
        return Ok(confirm_page(
            &viewer,
            &state,
            &format!(
                "Confirm {} {step}?",
                if step.contains('.') {
                    "tool call"
                } else {
                    "step"
                }
            ),
            &action,
            html! {
                p { (if step.contains('.') { "Tool call " } else { "Step " }) code { (step) } ": " (said) "." }
                @if let Some(o) = &output { (json::block("output", o)) }
                @if !note.is_empty() { p { "Note: " q { (note) } } }
            },
            &[
                ("outcome", &form.outcome),
                ("output", &form.output),
                ("note", &note),
            ],
            "Yes, record it",
        ));
    }
    let r = ConfirmRequest {
        outcome,
        output,
        note: (!note.is_empty()).then_some(note),
        by: None,
    };
    commands::confirm_step(&st, &viewer.principal, state.job_id, step, r).await?;
    Ok(done(state.job_id, "confirm"))
}
