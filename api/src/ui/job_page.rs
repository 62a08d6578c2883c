//! One job (`/ui/jobs/{id}`): its facts, the plan as a DAG, the waterfall timeline, the
//! steps with outputs and errors, the ledger, its agent steps' turns and tool calls, the
//! actions the caller may take, the event log and, while it runs, live updates over
//! Server-Sent Events.
//!
//! First paint reads the folded state (snapshot + tail, as a worker does), one page of
//! events and the ledger, whatever the log's length. The live stream ([`live`]) polls the
//! store for events after the last one shown (so it works with any number of gateways and
//! workers) and tells the page what changed: `changed` (refresh the summary), `rows` (new
//! event rows, when the page shows the log's tail), `actions` (the possible actions
//! changed) and `done` (the job finished; the browser closes the stream).

use super::error::UiError;
use super::events::{self, EventQuery};
use super::layout::{self, badge, Nav};
use super::session::Viewer;
use super::time::format_ms;
use super::{actions, agents, dag, json, timeline, UiState};
use crate::problem::ApiError;
use crate::routes::{jobs, parse_id, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::{EventBody, JobId, JobState};
use aetheris_store::{DynStore, LedgerEntry, Scope};
use maud::{html, Markup};
use serde::Deserialize;
use std::time::Duration;

/// The job page's query: the event log's paging and search, and a notice after an action.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PageQuery {
    #[serde(flatten)]
    pub events: EventQuery,
    #[serde(default)]
    pub notice: Option<String>,
}

/// The state of job `id` of the viewer's tenant (404 for another tenant's job, G6).
pub async fn load(st: &AppState, viewer: &Viewer, id: JobId) -> Result<JobState, ApiError> {
    jobs::job_state(&st.store, &viewer.principal.tenant, id).await
}

/// A fixed message per action (nothing from the query string is shown).
fn notice_text(n: &str) -> Option<&'static str> {
    match n {
        "cancel" => Some("Cancel stored. The worker running the job applies it shortly."),
        "signal" => Some("Signal stored. A waiting step for that name resumes shortly."),
        "confirm" => Some("Confirmation stored. The job continues shortly."),
        "approval" => Some("Decision stored. The agent step goes on shortly."),
        "budget" => Some("Budget decision stored. The agent step goes on shortly."),
        _ => None,
    }
}

/// `GET /ui/jobs/{id}`.
pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
    st: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::GET.access).await?;
    let id = parse_id(&path)?;
    let state = load(&st, &viewer, id).await?;
    let scope = Scope::Tenant(&viewer.principal.tenant);
    let ledger = st.store.ledger(scope, id).await?;
    let ev = events::load_page(&st, scope, id, &q.events).await?;
    let now = st.store.now_ms().await?;
    let running = !state.status.is_terminal();
    // New rows are appended live only under the unfiltered log's last page.
    let tail = running && ev.shows_tail();
    let live_url = format!(
        "/ui/jobs/{id}/live?after={}{}",
        state.last_seq,
        if tail { "&tail=1" } else { "" }
    );
    let evidence = ui.config.evidence.is_some()
        && viewer.may(crate::routes::Access::Requires(
            crate::auth::Permission::EvidenceExport,
        ));
    let body = html! {
        h1 { "Job " span.mono { (id) } }
        @if let Some(text) = q.notice.as_deref().and_then(notice_text) {
            p.notice role="status" { (text) }
        }
        div id="live"
            hx-ext=[running.then_some("sse")]
            sse-connect=[running.then_some(live_url.as_str())]
            sse-close=[running.then_some("done")] {
            (summary_markup(&state, &ledger, now, running))
            (agents::section(&state, None, viewer.may(crate::routes::commands::SIGNAL.access)))
            (actions::panel_markup(&viewer, &state))
            (events::section(id, &ev, &q.events, tail))
        }
        section aria-labelledby="h-input" {
            h2 id="h-input" { "Input" }
            (json::block("input", &state.input))
        }
        @if evidence {
            section aria-labelledby="h-evidence" {
                h2 id="h-evidence" { "Evidence" }
                @if state.status.is_terminal() {
                    p { a href={ "/ui/jobs/" (id) "/evidence" } { "Verify and download the evidence package" } }
                } @else {
                    p.muted { "An evidence package can be exported once the job has finished." }
                }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &format!("Job {id}"),
        &viewer,
        Nav::Jobs,
        body,
    )))
}

/// `GET /ui/jobs/{id}/summary`: the live part of the page.
pub async fn summary(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::GET.access).await?;
    let id = parse_id(&path)?;
    let state = load(&st, &viewer, id).await?;
    let ledger = st
        .store
        .ledger(Scope::Tenant(&viewer.principal.tenant), id)
        .await?;
    let now = st.store.now_ms().await?;
    let running = !state.status.is_terminal();
    Ok(layout::ok(summary_markup(&state, &ledger, now, running)))
}

/// Facts, DAG, timeline, steps and ledger: what changes while a job runs.
fn summary_markup(state: &JobState, ledger: &[LedgerEntry], now: i64, running: bool) -> Markup {
    let id = state.job_id;
    let head = hex::encode(state.last_hash);
    html! {
        div id="job-summary"
            hx-get=[running.then(|| format!("/ui/jobs/{id}/summary"))]
            hx-trigger=[running.then_some("sse:changed")]
            hx-swap=[running.then_some("outerHTML")] {
            dl.facts {
                div { dt { "Status" } dd { (badge(state.status.as_str())) } }
                div { dt { "Tenant" } dd { (state.tenant) } }
                div { dt { "Created (UTC)" } dd { (format_ms(state.created_at_ms)) } }
                div { dt { "Updated (UTC)" } dd { (format_ms(state.updated_at_ms)) } }
                div { dt { "Events" } dd { (state.last_seq) } }
                div { dt { "Idempotency key" } dd.mono { (state.idempotency_key.as_deref().unwrap_or("—")) } }
                div.wide { dt { "Chain head" } dd.mono.hash { (head) } }
            }
            @if let Some(e) = &state.error {
                p.error role="alert" { strong { "Error: " } (e) }
            }
            @if let Some(o) = &state.output {
                (json::block("Job output", o))
            }
            section aria-labelledby="h-plan" {
                h2 id="h-plan" { "Plan" }
                (dag::svg(state))
            }
            (timeline::section(state, now))
            (steps_table(state))
            (ledger_table(ledger))
        }
    }
}

/// Plans with more steps than this show their step outputs collapsed.
const OPEN_OUTPUTS_UP_TO: usize = 12;

fn steps_table(state: &JobState) -> Markup {
    let open = state.plan.steps.len() <= OPEN_OUTPUTS_UP_TO;
    html! {
        section aria-labelledby="h-steps" {
            h2 id="h-steps" { "Steps" }
            div.scroll { table.steps {
                thead { tr {
                    th scope="col" { "Step" } th scope="col" { "Kind" } th scope="col" { "Status" }
                    th scope="col" { "Attempt" } th scope="col" { "Effect" } th scope="col" { "Invocation key" }
                    th scope="col" { "Started (UTC)" } th scope="col" { "Finished (UTC)" }
                } }
                tbody {
                    @for (i, spec) in state.plan.steps.iter().enumerate() {
                        @let s = state.steps.get(&spec.id);
                        @let status = s.map(|s| display_status(state, s)).unwrap_or("pending");
                        tr id={ "step-" (i) } {
                            th scope="row" { (spec.id) }
                            td { (dag::kind_label(spec)) }
                            td { (badge(status)) }
                            td.num { (s.map(|s| s.attempt).unwrap_or(0)) }
                            td { (s.and_then(|s| s.effect).map(|e| e.as_str()).unwrap_or("")) }
                            td.mono.hash { (s.and_then(|s| s.invocation_key.as_deref()).unwrap_or("")) }
                            td { (s.and_then(|s| s.started_at_ms).map(format_ms).unwrap_or_default()) }
                            td { (s.and_then(|s| s.finished_at_ms).map(format_ms).unwrap_or_default()) }
                        }
                        @if let Some(s) = s {
                            @if s.output.is_some() || s.error.is_some() {
                                tr.detail { td colspan="8" {
                                    @if let Some(e) = &s.error { p.error { strong { (spec.id) ": " } (e) } }
                                    @if let Some(o) = &s.output { (json::block_opened(&format!("Output of {}", spec.id), o, open)) }
                                } }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// A step's status as the API shows it (unfinished steps of a cancelled job: cancelled).
pub fn display_status(state: &JobState, s: &aetheris_runtime::StepState) -> &'static str {
    use aetheris_runtime::{JobStatus, StepStatus};
    let unfinished = matches!(
        s.status,
        StepStatus::Pending | StepStatus::Running | StepStatus::Waiting | StepStatus::Sleeping
    );
    if state.status == JobStatus::Cancelled && unfinished {
        "cancelled"
    } else {
        s.status.as_str()
    }
}

fn ledger_table(ledger: &[LedgerEntry]) -> Markup {
    html! {
        section aria-labelledby="h-ledger" {
            h2 id="h-ledger" { "Ledger" }
            @if ledger.is_empty() {
                p.empty { "No tool step has started yet." }
            } @else {
                p.muted { "One row per invocation key (a step iteration); fencing tokens per attempt are in the attempts table under the timeline." }
                div.scroll { table.ledger {
                    thead { tr {
                        th scope="col" { "Step" } th scope="col" { "Invocation key" } th scope="col" { "Attempt" }
                        th scope="col" { "Effect" } th scope="col" { "Status" } th scope="col" { "Updated (UTC)" }
                    } }
                    tbody { @for r in ledger { tr {
                        th scope="row" { (r.step) }
                        td.mono.hash { (r.invocation_key) }
                        td.num { (r.attempt) }
                        td { (r.effect.as_str()) }
                        td { (badge(r.status.as_str())) }
                        td { (format_ms(r.updated_at_ms)) }
                    } } }
                } }
            }
        }
    }
}

/// `GET /ui/jobs/{id}/live` query.
#[derive(Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    after: u64,
    /// Also send new event rows.
    #[serde(default)]
    tail: Option<u8>,
}

/// `GET /ui/jobs/{id}/live`: Server-Sent Events for an open job page.
pub async fn live(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<LiveQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::EVENTS.access).await?;
    let id = parse_id(&path)?;
    let tenant = viewer.principal.tenant.clone();
    let summary = st
        .store
        .get_job(Scope::Tenant(&tenant), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    // The hash of the last event the page shows, to chain-check the rows sent after it.
    let prev = match q.after {
        0 => Some(aetheris_runtime::chain::GENESIS),
        n => st
            .store
            .read_events(Scope::Tenant(&tenant), id, n - 1, 1)
            .await?
            .first()
            .map(|e| e.hash),
    };
    let cursor = LiveCursor {
        store: st.store.clone(),
        tenant,
        id,
        after: q.after,
        prev,
        tail: q.tail.is_some(),
        done: summary.status.is_terminal() && summary.last_seq <= q.after,
        idle: 0,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .streaming(futures::stream::unfold(cursor, next_message)))
}

struct LiveCursor {
    store: DynStore,
    tenant: String,
    id: JobId,
    after: u64,
    prev: Option<[u8; 32]>,
    tail: bool,
    done: bool,
    idle: u32,
}

/// How often the live stream looks for new events.
const LIVE_POLL: Duration = Duration::from_millis(250);

async fn next_message(
    mut c: LiveCursor,
) -> Option<(Result<web::Bytes, actix_web::Error>, LiveCursor)> {
    if c.done {
        if c.idle == u32::MAX {
            return None;
        }
        c.idle = u32::MAX;
        return Some((Ok(web::Bytes::from(sse("done", "done"))), c));
    }
    loop {
        let read = c
            .store
            .read_events(Scope::Tenant(&c.tenant), c.id, c.after, 200)
            .await;
        match read {
            Ok(evs) if !evs.is_empty() => {
                let mut out = String::new();
                let actions_changed = evs.iter().any(|e| changes_actions(&e.body));
                if c.tail {
                    out.push_str(&sse(
                        "rows",
                        &events::rows_with_prev(&evs, c.prev).into_string(),
                    ));
                }
                c.prev = evs.last().map(|e| e.hash);
                c.after = evs.last().map_or(c.after, |e| e.seq);
                c.done = evs.iter().any(|e| is_final(&e.body));
                out.push_str(&sse("changed", &c.after.to_string()));
                if actions_changed {
                    out.push_str(&sse("actions", &c.after.to_string()));
                }
                c.idle = 0;
                return Some((Ok(web::Bytes::from(out)), c));
            }
            Ok(_) => {
                c.idle += 1;
                // A comment now and then keeps proxies from closing an idle stream.
                if c.idle.is_multiple_of(60) {
                    return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), c));
                }
                tokio::time::sleep(LIVE_POLL).await;
            }
            Err(e) => {
                c.done = true;
                c.idle = u32::MAX;
                let msg = sse("error", &e.to_string());
                return Some((Ok(web::Bytes::from(msg)), c));
            }
        }
    }
}

/// One SSE message; every line of `data` becomes a `data:` line.
fn sse(event: &str, data: &str) -> String {
    let mut out = format!("event: {event}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The job's last event: nothing follows it.
fn is_final(b: &EventBody) -> bool {
    matches!(
        b,
        EventBody::JobSucceeded { .. }
            | EventBody::JobFailed { .. }
            | EventBody::JobCancelled { .. }
    )
}

/// Events after which the actions a page offers may differ.
fn changes_actions(b: &EventBody) -> bool {
    is_final(b)
        || matches!(
            b,
            EventBody::StepOutcomeUnknown { .. }
                | EventBody::StepConfirmed { .. }
                | EventBody::WaitStarted { .. }
                | EventBody::WaitCompleted { .. }
                | EventBody::WaitTimedOut { .. }
                | EventBody::JobParked { .. }
                // An agent's calls may wait for (or leave) an approval, a budget decision
                // or a confirmation.
                | EventBody::AgentModelAnswered { .. }
                | EventBody::AgentToolOutcomeUnknown { .. }
                | EventBody::AgentToolApproved { .. }
                | EventBody::AgentToolRefused { .. }
                | EventBody::AgentBudgetReached { .. }
                | EventBody::AgentBudgetDecided { .. }
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_split_lines() {
        assert_eq!(sse("rows", "a\nb"), "event: rows\ndata: a\ndata: b\n\n");
        assert_eq!(notice_text("<script>"), None);
    }
}
