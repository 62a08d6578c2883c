//! A person's decisions for an agent step, from the job page's actions panel: approve a
//! proposed tool call as it is, approve it with edited arguments, or reject it with a
//! reason (signal `approve:<call>`); and, when a model call would breach a budget, raise
//! the budget, check again, or stop the step (signal `budget`). The payloads are those of
//! docs/agents.md.
//!
//! Invariants: every decision is a signal stored through the API's own
//! `routes::commands::signal_job` (its checks, its audit row, `by` = the token's `sub`), so
//! the worker records the decision with the signed-in identity exactly as for
//! `POST /v1/jobs/{id}/signals/approve:<call>`; forms are offered only to callers with
//! `job:signal` and refused (403) to others; each is confirmed on a page that repeats what
//! will be sent; a decision is refused (409) unless the call awaits one (or a step waits
//! for a budget) and none is pending already, so a double submit cannot decide twice.
//! Edited arguments must be a JSON object and, when this gateway knows the tool, pass its
//! schema (`aetheris_runtime::agent::check_call`, the worker's own check: an edit the
//! worker would refuse is refused here first).

use super::actions::{begin, confirm_page, done, Common};
use super::error::UiError;
use super::json;
use super::layout::thousands;
use super::read_form;
use super::session::Viewer;
use crate::problem::ApiError;
use crate::routes::commands::{self, SignalRequest};
use crate::routes::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::agent::{
    approval_signal, check_call, owner_of, parse_arguments, AgentCall, AgentTools, BudgetScope,
    Park, BUDGET_SIGNAL,
};
use aetheris_runtime::{JobId, JobState};
use aetheris_store::CommandBody;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

/// The approval and budget forms of a job's actions panel (for a caller with
/// `job:signal`).
pub fn cards(viewer: &Viewer, state: &JobState) -> Markup {
    let id = state.job_id;
    let parked = parked_steps(state);
    html! {
        @for (step, call) in awaiting_calls(state) {
            (approval_card(viewer, id, step, call))
        }
        @if !parked.is_empty() {
            (budget_card(viewer, id, &parked))
        }
    }
}

/// Calls of the current turns that wait for a person, in plan order.
fn awaiting_calls(state: &JobState) -> Vec<(&str, &AgentCall)> {
    state
        .plan
        .steps
        .iter()
        .filter_map(|s| state.agent(&s.id).map(|a| (s.id.as_str(), a)))
        .flat_map(|(step, a)| {
            a.current_calls()
                .filter(|c| c.awaits_approval())
                .map(move |c| (step, c))
        })
        .collect()
}

/// Agent steps waiting for a `budget` signal, with their wait.
fn parked_steps(state: &JobState) -> Vec<(&str, &Park)> {
    state
        .plan
        .steps
        .iter()
        .filter_map(|s| {
            let park = state.agent(&s.id)?.park.as_ref()?;
            Some((s.id.as_str(), park))
        })
        .collect()
}

/// A call's arguments as JSON (text that does not parse is shown as it is).
fn proposed(call: &AgentCall) -> Value {
    parse_arguments(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()))
}

fn approval_card(viewer: &Viewer, id: JobId, step: &str, call: &AgentCall) -> Markup {
    let args = proposed(call);
    let pretty = json::pretty(&args).0;
    let c = call.id.as_str();
    html! {
        form.card.approval id={ "approve-" (c) } method="post" action={ "/ui/jobs/" (id) "/approvals/" (c) } {
            h3 { "Approve tool call " code { (c) } }
            p { "The agent of step " code { (step) } " asks to call " strong { (call.tool) } ". It does not run until you decide." }
            (json::block("Proposed arguments", &args))
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for={ "a-args-" (c) } { "Arguments (JSON object; used by “Approve edited”)" }
            textarea id={ "a-args-" (c) } name="args" rows="4" spellcheck="false" { (pretty) }
            label for={ "a-reason-" (c) } { "Reason (needed to reject; the model is told it)" }
            input id={ "a-reason-" (c) } name="reason" maxlength="1024";
            div.buttons {
                button type="submit" name="decision" value="approve" { "Approve…" }
                button type="submit" name="decision" value="edit" { "Approve edited…" }
                button.danger type="submit" name="decision" value="reject" { "Reject…" }
            }
        }
    }
}

/// Tokens to suggest for a raise: what the waiting call lacks, rounded up to a thousand.
fn suggested_raise(p: &Park) -> u64 {
    let lacking = p
        .used
        .saturating_add(p.needed)
        .saturating_sub(p.limit)
        .max(1);
    lacking.div_ceil(1000).saturating_mul(1000)
}

fn budget_card(viewer: &Viewer, id: JobId, parked: &[(&str, &Park)]) -> Markup {
    let raise = parked
        .iter()
        .filter(|(_, p)| p.scope != BudgetScope::Tenant)
        .map(|(_, p)| suggested_raise(p))
        .max();
    let tenant = parked.iter().any(|(_, p)| p.scope == BudgetScope::Tenant);
    html! {
        form.card id="budget" method="post" action={ "/ui/jobs/" (id) "/budget" } {
            h3 { "Budget reached" }
            @for (step, p) in parked {
                p {
                    "Step " code { (step) } ": the next model call needs " (thousands(p.needed)) " tokens; the "
                    (p.scope.as_str()) "'s budget has used " (thousands(p.used)) " of " (thousands(p.limit)) "."
                }
            }
            input type="hidden" name="csrf" value=(viewer.csrf);
            @if let Some(n) = raise {
                label for="b-tokens" { "Raise the budget by (tokens)" }
                input id="b-tokens" name="tokens" type="number" min="1" step="1" value=(n);
            }
            @if tenant {
                p.muted { "The tenant's daily budget is its llm_tokens_per_day limit: raise it on the tenant, then check again (or wait for the next UTC day)." }
            }
            div.buttons {
                @if raise.is_some() {
                    button type="submit" name="decision" value="raise" { "Raise the budget…" }
                }
                @if tenant {
                    button type="submit" name="decision" value="retry" { "Check again…" }
                }
                button.danger type="submit" name="decision" value="stop" { "Stop the step…" }
            }
        }
    }
}

/// Refuses a decision while a signal of that name is stored and not yet consumed: the
/// worker has not applied an earlier decision yet.
async fn check_none_pending(st: &AppState, state: &JobState, name: &str) -> Result<(), UiError> {
    let buffered = state.signals.get(name).is_some_and(|v| !v.is_empty());
    let pending = st.store.pending_commands(state.job_id).await?;
    let stored = pending
        .iter()
        .any(|c| matches!(&c.body, CommandBody::Signal { signal, .. } if signal == name));
    if buffered || stored {
        return Err(ApiError::Conflict(format!(
            "a decision for {name:?} is already stored; the job applies it shortly"
        ))
        .into());
    }
    Ok(())
}

/// The call `call` of `state`, if it waits for an approval now (404: no such call; 409:
/// it does not wait).
fn awaiting<'a>(state: &'a JobState, call: &str) -> Result<(&'a str, &'a AgentCall), ApiError> {
    let missing = || {
        ApiError::NotFound(format!(
            "job {} has no tool call {:?}",
            state.job_id,
            crate::problem::clip(call, 64)
        ))
    };
    let step = owner_of(call).ok_or_else(missing)?;
    let (step, agent) = state
        .plan
        .step(step)
        .and_then(|s| Some((s.id.as_str(), state.agent(&s.id)?)))
        .ok_or_else(missing)?;
    let c = agent.call(call).ok_or_else(missing)?;
    if !agent
        .current_calls()
        .any(|x| x.id == c.id && x.awaits_approval())
    {
        return Err(ApiError::Conflict(format!(
            "tool call {call:?} does not wait for an approval (it is {})",
            c.status.as_str()
        )));
    }
    Ok((step, c))
}

/// What a person decided about a call.
enum Decision {
    Approve,
    Edit(Value),
    Reject(String),
}

impl Decision {
    /// The signal's payload (docs/agents.md).
    fn payload(&self) -> Value {
        match self {
            Decision::Approve => json!({"approve": true}),
            Decision::Edit(args) => json!({"approve": true, "args": args}),
            Decision::Reject(reason) => json!({"approve": false, "reason": reason}),
        }
    }
}

#[derive(Deserialize)]
struct ApprovalForm {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    reason: String,
}

/// Edited arguments: a JSON object that passes the tool's schema when this gateway knows
/// the tool (the worker checks again either way).
fn edited_args(
    st: &AppState,
    state: &JobState,
    step: &str,
    call: &AgentCall,
    text: &str,
) -> Result<Value, ApiError> {
    let args: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::BadRequest(format!("the edited arguments are not valid JSON: {e}"))
    })?;
    if !args.is_object() {
        return Err(ApiError::BadRequest(
            "the edited arguments must be a JSON object".into(),
        ));
    }
    let tools: &dyn AgentTools = st.agent_tools.as_ref();
    if let (Some(spec), Some(_)) = (state.agent_spec(step), tools.declaration(&call.tool)) {
        check_call(spec, &call.tool, &args.to_string(), tools).map_err(|e| {
            ApiError::BadRequest(format!("the edited arguments cannot be used: {e}"))
        })?;
    }
    Ok(args)
}

fn decision(
    st: &AppState,
    state: &JobState,
    step: &str,
    call: &AgentCall,
    form: &ApprovalForm,
) -> Result<Decision, ApiError> {
    match form.decision.as_str() {
        "approve" => Ok(Decision::Approve),
        "edit" => Ok(Decision::Edit(edited_args(
            st, state, step, call, &form.args,
        )?)),
        "reject" => {
            let reason = form.reason.trim();
            if reason.is_empty() {
                return Err(ApiError::BadRequest(
                    "say why the call is rejected: the model is told the reason".into(),
                ));
            }
            if reason.len() > commands::MAX_REASON_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "the reason must be at most {} bytes",
                    commands::MAX_REASON_BYTES
                )));
            }
            Ok(Decision::Reject(reason.to_string()))
        }
        _ => Err(ApiError::BadRequest(
            "choose a decision: approve, edit or reject".into(),
        )),
    }
}

/// `POST /ui/jobs/{id}/approvals/{call}`: approve, approve edited, or reject a tool call.
pub async fn decide(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let (raw_id, call_id) = path.into_inner();
    let form: ApprovalForm = read_form(&req, payload, &st).await?;
    let (viewer, state) = begin(
        &req,
        &st,
        commands::SIGNAL.access,
        &raw_id,
        &form.common.csrf,
    )
    .await?;
    let (step, call) = awaiting(&state, &call_id)?;
    let decided = decision(&st, &state, step, call, &form)?;
    let signal = approval_signal(&call.id);
    check_none_pending(&st, &state, &signal).await?;
    if !form.common.is_confirmed() {
        let (title, button) = match decided {
            Decision::Approve => ("Approve this tool call?", "Yes, approve it"),
            Decision::Edit(_) => (
                "Approve this tool call with your arguments?",
                "Yes, approve with these arguments",
            ),
            Decision::Reject(_) => ("Reject this tool call?", "Yes, reject it"),
        };
        let what = html! {
            p { "Tool call " code { (call.id) } " of step " code { (step) } ": " strong { (call.tool) } "." }
            @match &decided {
                Decision::Approve => { (json::block("Arguments, as the model proposed them", &proposed(call))) },
                Decision::Edit(args) => {
                    (json::block("Proposed by the model", &proposed(call)))
                    (json::block("Approved instead", args))
                },
                Decision::Reject(reason) => {
                    (json::block("Proposed arguments (the call will not run)", &proposed(call)))
                    p { "Reason, as the model will be told: " q { (reason) } }
                },
            }
            p { "Sent as signal " code { (signal) } " with payload:" }
            (json::block("payload", &decided.payload()))
        };
        let action = format!("/ui/jobs/{}/approvals/{}", state.job_id, call.id);
        return Ok(confirm_page(
            &viewer,
            &state,
            title,
            &action,
            what,
            &[
                ("decision", &form.decision),
                ("args", &form.args),
                ("reason", &form.reason),
            ],
            button,
        ));
    }
    let r = SignalRequest {
        payload: decided.payload(),
        signal_id: None,
        by: None,
    };
    commands::signal_job(&st, &viewer.principal, state.job_id, signal, r).await?;
    Ok(done(state.job_id, "approval"))
}

#[derive(Deserialize)]
struct BudgetForm {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    tokens: String,
}

/// The `budget` signal's payload for a form: raise by N tokens, check again, or stop.
fn budget_payload(form: &BudgetForm) -> Result<(Value, String), ApiError> {
    match form.decision.as_str() {
        "raise" => {
            let n: u64 = form
                .tokens
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "the raise must be a whole number of tokens, at least 1".into(),
                    )
                })?;
            Ok((
                json!({ "tokens": n }),
                format!("raise the budget by {} tokens", thousands(n)),
            ))
        }
        "retry" => Ok((Value::Null, "check the budgets again".into())),
        "stop" => Ok((
            json!({"stop": true}),
            "stop the step: it fails with the budget as its reason".into(),
        )),
        _ => Err(ApiError::BadRequest(
            "choose a decision: raise, retry or stop".into(),
        )),
    }
}

/// `POST /ui/jobs/{id}/budget`: decide a budget wait.
pub async fn budget(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let form: BudgetForm = read_form(&req, payload, &st).await?;
    let (viewer, state) =
        begin(&req, &st, commands::SIGNAL.access, &path, &form.common.csrf).await?;
    let parked = parked_steps(&state);
    if parked.is_empty() {
        return Err(ApiError::Conflict(format!(
            "no agent step of job {} waits for a budget decision",
            state.job_id
        ))
        .into());
    }
    let (value, said) = budget_payload(&form)?;
    check_none_pending(&st, &state, BUDGET_SIGNAL).await?;
    if !form.common.is_confirmed() {
        let what = html! {
            @for (step, p) in &parked {
                p { "Step " code { (step) } " waits: its next model call needs " (thousands(p.needed))
                    " tokens; the " (p.scope.as_str()) "'s budget has used " (thousands(p.used)) " of " (thousands(p.limit)) "." }
            }
            p { "Decision: " strong { (said) } "." }
            p { "Sent as signal " code { (BUDGET_SIGNAL) } " with payload:" }
            (json::block("payload", &value))
        };
        let action = format!("/ui/jobs/{}/budget", state.job_id);
        return Ok(confirm_page(
            &viewer,
            &state,
            "Decide the budget?",
            &action,
            what,
            &[("decision", &form.decision), ("tokens", &form.tokens)],
            "Yes, send it",
        ));
    }
    let r = SignalRequest {
        payload: value,
        signal_id: None,
        by: None,
    };
    commands::signal_job(
        &st,
        &viewer.principal,
        state.job_id,
        BUDGET_SIGNAL.to_string(),
        r,
    )
    .await?;
    Ok(done(state.job_id, "budget"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn park(scope: BudgetScope, limit: u64, used: u64, needed: u64) -> Park {
        Park {
            scope,
            limit,
            used,
            needed,
            until_ms: None,
        }
    }

    #[test]
    fn a_raise_covers_what_the_waiting_call_lacks() {
        assert_eq!(
            suggested_raise(&park(BudgetScope::Step, 100, 0, 1100)),
            1000
        );
        assert_eq!(
            suggested_raise(&park(BudgetScope::Step, 100, 90, 1100)),
            2000
        );
        assert_eq!(
            suggested_raise(&park(BudgetScope::Job, 5000, 5000, 0)),
            1000
        );
    }

    fn form(decision: &str, tokens: &str) -> BudgetForm {
        BudgetForm {
            common: Common {
                csrf: String::new(),
                confirmed: None,
            },
            decision: decision.into(),
            tokens: tokens.into(),
        }
    }

    #[test]
    fn budget_decisions_are_the_documented_payloads() {
        assert_eq!(
            budget_payload(&form("raise", " 2500 ")).unwrap().0,
            json!({"tokens": 2500})
        );
        assert_eq!(
            budget_payload(&form("stop", "")).unwrap().0,
            json!({"stop": true})
        );
        assert_eq!(budget_payload(&form("retry", "")).unwrap().0, Value::Null);
        for (d, t) in [
            ("raise", "0"),
            ("raise", "-5"),
            ("raise", "x"),
            ("more", "1"),
        ] {
            assert!(budget_payload(&form(d, t)).is_err(), "{d} {t}");
        }
    }

    #[test]
    fn approval_payloads_are_the_documented_ones() {
        assert_eq!(Decision::Approve.payload(), json!({"approve": true}));
        assert_eq!(
            Decision::Edit(json!({"amount": 35})).payload(),
            json!({"approve": true, "args": {"amount": 35}})
        );
        assert_eq!(
            Decision::Reject("too much".into()).payload(),
            json!({"approve": false, "reason": "too much"})
        );
    }
}
