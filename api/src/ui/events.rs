//! A job's event log on its page: pages of [`PAGE`] events with their hash and chain
//! status (does each event's hash recompute, and does it link to the event before it),
//! paged with "more" (htmx appends rows; without JavaScript it is a link), and searched
//! by kind, step and text on the server: a search looks at most [`SCAN_EVENTS`] events per
//! request and continues from where it stopped.

use super::error::UiError;
use super::json;
use super::session::Viewer;
use super::time::format_ms;
use crate::problem::ApiError;
use crate::routes::{jobs, parse_id, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::chain::{event_hash, GENESIS};
use aetheris_runtime::{EventBody, JobId, RecordedEvent};
use aetheris_store::Scope;
use maud::{html, Markup};
use serde::Deserialize;

/// Events per page.
pub const PAGE: usize = 50;
/// Most events one search request looks at.
pub const SCAN_EVENTS: usize = 10_000;
/// Events read from the store at a time while searching.
const BATCH: usize = 500;
/// At most this much of one event's payload is put into the page.
const MAX_PAYLOAD_SHOWN: usize = 4 * 1024;

/// Every event kind, for the search form.
const KINDS: [&str; 28] = [
    "job_submitted",
    "step_started",
    "step_succeeded",
    "step_failed",
    "step_outcome_unknown",
    "job_succeeded",
    "job_failed",
    "job_cancelled",
    "signal_received",
    "wait_started",
    "wait_completed",
    "wait_timed_out",
    "sleep_started",
    "sleep_finished",
    "step_confirmed",
    "job_parked",
    "agent_started",
    "agent_model_started",
    "agent_model_answered",
    "agent_model_failed",
    "agent_tool_started",
    "agent_tool_succeeded",
    "agent_tool_failed",
    "agent_tool_outcome_unknown",
    "agent_tool_refused",
    "agent_tool_approved",
    "agent_budget_reached",
    "agent_budget_decided",
];

/// Paging and search of the log (`after` is a seq: show events after it).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct EventQuery {
    /// An empty field (the search form's "after seq" left blank) is none.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub after: Option<u64>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub q: Option<String>,
    /// `1`: answer only the rows and the next "more" control (htmx appends them).
    #[serde(default)]
    pub rows: Option<u8>,
}

/// A number from a form field, where an empty field means none.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl EventQuery {
    fn kind(&self) -> Option<&str> {
        self.kind.as_deref().filter(|k| KINDS.contains(k))
    }
    fn step(&self) -> Option<&str> {
        self.step
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
    fn text(&self) -> Option<String> {
        self.q
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| crate::problem::clip(s, 256).to_lowercase())
    }
    fn filtered(&self) -> bool {
        self.kind().is_some() || self.step().is_some() || self.text().is_some()
    }
    /// The query string of this search from `after` on.
    fn link(&self, after: u64, rows: bool) -> String {
        let mut pairs: Vec<(&str, String)> = vec![("after", after.to_string())];
        if let Some(k) = self.kind() {
            pairs.push(("kind", k.to_string()));
        }
        if let Some(s) = self.step() {
            pairs.push(("step", s.to_string()));
        }
        if let Some(q) = self.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            pairs.push(("q", q.to_string()));
        }
        if rows {
            pairs.push(("rows", "1".into()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// Whether an event's hash holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Its hash recomputes and its `prev_hash` is the hash of the event before it.
    Linked,
    /// Its hash recomputes; the event before it was not read (shown without it).
    Intact,
    /// Its `prev_hash` is not the previous event's hash.
    BrokenLink,
    /// Its hash does not match its contents.
    Altered,
}

/// The chain status of `e`, given the previous event's hash if known.
pub fn chain_status(e: &RecordedEvent, prev: Option<&[u8; 32]>) -> Chain {
    let recomputed = event_hash(
        &e.prev_hash,
        e.job_id,
        e.seq,
        e.recorded_at_ms,
        e.body.kind(),
        &e.body.payload(),
    );
    if recomputed != e.hash {
        Chain::Altered
    } else {
        match prev {
            Some(p) if *p == e.prev_hash => Chain::Linked,
            Some(_) => Chain::BrokenLink,
            None => Chain::Intact,
        }
    }
}

/// One page of the log, each event with its chain status.
pub struct EventPage {
    pub events: Vec<(RecordedEvent, Chain)>,
    /// Where the next page starts, if there may be more.
    pub next_after: Option<u64>,
    /// A search that stopped on its budget: the last seq it looked at.
    pub scanned_to: Option<u64>,
    pub filtered: bool,
}

impl EventPage {
    /// The page is the unfiltered log's last page (new events belong right after it).
    pub fn shows_tail(&self) -> bool {
        !self.filtered && self.next_after.is_none()
    }
}

/// Reads one page of job `id`'s log as `q` asks. Scoped: another tenant's job is a 404.
pub async fn load_page(
    st: &AppState,
    scope: Scope<'_>,
    id: JobId,
    q: &EventQuery,
) -> Result<EventPage, ApiError> {
    let after = q.after.unwrap_or(0);
    if !q.filtered() {
        // One read: the event at `after` (for its hash) and the page after it.
        let from = after.saturating_sub(1);
        let mut evs = st.store.read_events(scope, id, from, PAGE + 1).await?;
        let mut prev = if after == 0 { Some(GENESIS) } else { None };
        if after > 0 && evs.first().is_some_and(|e| e.seq == after) {
            prev = Some(evs.remove(0).hash);
        }
        evs.truncate(PAGE);
        let next_after = (evs.len() == PAGE)
            .then(|| evs.last().map(|e| e.seq))
            .flatten();
        return Ok(EventPage {
            events: with_status(evs, prev),
            next_after,
            scanned_to: None,
            filtered: false,
        });
    }
    let (kind, step, text) = (q.kind(), q.step(), q.text());
    let mut cursor = after;
    let mut prev: Option<[u8; 32]> = (after == 0).then_some(GENESIS);
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let evs = st.store.read_events(scope, id, cursor, BATCH).await?;
        let last_batch = evs.len() < BATCH;
        for e in evs {
            scanned += 1;
            cursor = e.seq;
            let status = chain_status(&e, prev.as_ref());
            prev = Some(e.hash);
            let hit = kind.is_none_or(|k| e.body.kind() == k)
                && step.is_none_or(|s| step_of(&e.body) == Some(s))
                && text.as_deref().is_none_or(|t| {
                    String::from_utf8_lossy(&e.body.payload())
                        .to_lowercase()
                        .contains(t)
                });
            if hit {
                out.push((e, status));
                if out.len() == PAGE {
                    return Ok(EventPage {
                        events: out,
                        next_after: Some(cursor),
                        scanned_to: None,
                        filtered: true,
                    });
                }
            }
            if scanned >= SCAN_EVENTS {
                return Ok(EventPage {
                    events: out,
                    next_after: Some(cursor),
                    scanned_to: Some(cursor),
                    filtered: true,
                });
            }
        }
        if last_batch {
            if scanned == 0 && after == 0 {
                // An empty log is a job that does not exist (or another tenant's).
                return Err(ApiError::NotFound(format!("job {id} not found")));
            }
            return Ok(EventPage {
                events: out,
                next_after: None,
                scanned_to: None,
                filtered: true,
            });
        }
    }
}

fn with_status(evs: Vec<RecordedEvent>, mut prev: Option<[u8; 32]>) -> Vec<(RecordedEvent, Chain)> {
    evs.into_iter()
        .map(|e| {
            let s = chain_status(&e, prev.as_ref());
            prev = Some(e.hash);
            (e, s)
        })
        .collect()
}

/// The step an event is about, if any.
pub fn step_of(b: &EventBody) -> Option<&str> {
    match b {
        EventBody::StepStarted { step, .. }
        | EventBody::StepSucceeded { step, .. }
        | EventBody::StepFailed { step, .. }
        | EventBody::StepOutcomeUnknown { step, .. }
        | EventBody::WaitStarted { step, .. }
        | EventBody::WaitCompleted { step, .. }
        | EventBody::WaitTimedOut { step }
        | EventBody::SleepStarted { step, .. }
        | EventBody::SleepFinished { step }
        | EventBody::StepConfirmed { step, .. } => Some(step),
        EventBody::JobFailed { step, .. } => step.as_deref(),
        EventBody::AgentStarted { step, .. }
        | EventBody::AgentModelStarted { step, .. }
        | EventBody::AgentModelAnswered { step, .. }
        | EventBody::AgentModelFailed { step, .. }
        | EventBody::AgentToolStarted { step, .. }
        | EventBody::AgentToolSucceeded { step, .. }
        | EventBody::AgentToolFailed { step, .. }
        | EventBody::AgentToolOutcomeUnknown { step, .. }
        | EventBody::AgentToolRefused { step, .. }
        | EventBody::AgentToolApproved { step, .. }
        | EventBody::AgentBudgetReached { step, .. }
        | EventBody::AgentBudgetDecided { step, .. } => Some(step),
        _ => None,
    }
}

/// A one-line description of an event.
fn describe(b: &EventBody) -> String {
    match b {
        EventBody::JobSubmitted { plan, .. } => format!("{} steps", plan.steps.len()),
        EventBody::StepStarted {
            attempt,
            tool,
            effect,
            fencing_token,
            ..
        } => format!(
            "attempt {attempt} of {tool} ({}), fencing token {fencing_token}",
            effect.as_str()
        ),
        EventBody::StepSucceeded {
            attempt, output, ..
        } => {
            format!("attempt {attempt}: {}", json::one_line(output, 120))
        }
        EventBody::StepFailed {
            attempt,
            error,
            retry_after_ms,
            ..
        } => match retry_after_ms {
            Some(ms) => format!("attempt {attempt}: {error} (retry in {ms} ms)"),
            None => format!("attempt {attempt}: {error} (final)"),
        },
        EventBody::StepOutcomeUnknown {
            attempt, reason, ..
        } => {
            format!("attempt {attempt}: {reason}")
        }
        EventBody::JobSucceeded { output } => json::one_line(output, 120),
        EventBody::JobFailed { error, .. } => error.clone(),
        EventBody::JobCancelled { by, reason, .. } => format!("by {by}: {reason}"),
        EventBody::SignalReceived {
            signal,
            by,
            payload,
            ..
        } => format!(
            "{signal} from {}: {}",
            by.as_deref().unwrap_or("?"),
            json::one_line(payload, 80)
        ),
        EventBody::WaitStarted { timeout_ms, .. } => match timeout_ms {
            Some(t) => format!("timeout {t} ms"),
            None => "no timeout".into(),
        },
        EventBody::WaitCompleted { output, .. } => json::one_line(output, 120),
        EventBody::WaitTimedOut { .. } | EventBody::SleepFinished { .. } => String::new(),
        EventBody::SleepStarted { duration_ms, .. } => format!("{duration_ms} ms"),
        EventBody::StepConfirmed {
            outcome, by, note, ..
        } => format!(
            "{} by {by}{}",
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        EventBody::JobParked { wake_at_ms } => match wake_at_ms {
            Some(t) => format!("until {}", format_ms(*t)),
            None => "until a signal or confirmation".into(),
        },
        EventBody::AgentStarted {
            provider,
            model,
            messages,
            error,
            ..
        } => match error {
            Some(e) => format!("{provider}/{model}: {e}"),
            None => format!("{provider}/{model}, {} messages", messages.len()),
        },
        EventBody::AgentModelStarted {
            call,
            attempt,
            model,
            reserved_tokens,
            fencing_token,
            ..
        } => format!(
            "{call} attempt {attempt} asks {model} ({reserved_tokens} tokens reserved), \
             fencing token {fencing_token}"
        ),
        EventBody::AgentModelAnswered {
            call,
            messages,
            input_tokens,
            output_tokens,
            ..
        } => format!(
            "{call}: {} new messages, {input_tokens} tokens in, {output_tokens} out",
            messages.len()
        ),
        EventBody::AgentModelFailed { call, error, .. } => format!("{call}: {error}"),
        EventBody::AgentToolStarted {
            call,
            attempt,
            tool,
            effect,
            fencing_token,
            ..
        } => format!(
            "{call} attempt {attempt} of {tool} ({}), fencing token {fencing_token}",
            effect.as_str()
        ),
        EventBody::AgentToolSucceeded { call, output, .. } => {
            format!("{call}: {}", json::one_line(output, 120))
        }
        EventBody::AgentToolFailed { call, error, .. } => format!("{call}: {error}"),
        EventBody::AgentToolOutcomeUnknown { call, reason, .. } => format!("{call}: {reason}"),
        EventBody::AgentToolRefused {
            call, reason, by, ..
        } => format!(
            "{call} refused{}: {reason}",
            by.as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        ),
        EventBody::AgentToolApproved { call, by, args, .. } => format!(
            "{call} approved by {}{}",
            by.as_deref().unwrap_or("?"),
            if args.is_some() {
                " (arguments edited)"
            } else {
                ""
            }
        ),
        EventBody::AgentBudgetReached {
            limit,
            used,
            needed,
            ..
        } => format!("budget reached: {used} of {limit} tokens used, {needed} needed"),
        EventBody::AgentBudgetDecided {
            raise_tokens,
            stop,
            by,
            ..
        } => {
            let who = by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
            if *stop {
                format!("stopped{who}")
            } else {
                format!("raised by {raise_tokens} tokens{who}")
            }
        }
    }
}

fn chain_cell(c: Chain) -> Markup {
    match c {
        Chain::Linked => {
            html! { span.ok title="hash recomputes and links to the previous event" { "✓ linked" } }
        }
        Chain::Intact => {
            html! { span.ok title="hash recomputes (previous event not on this page)" { "✓ intact" } }
        }
        Chain::BrokenLink => html! { span.bad { "✗ link broken" } },
        Chain::Altered => html! { span.bad { "✗ altered" } },
    }
}

/// Table rows of events with their chain status.
pub fn rows(events: &[(RecordedEvent, Chain)]) -> Markup {
    html! {
        @for (e, c) in events {
            tr id={ "seq-" (e.seq) } {
                td.num { (e.seq) }
                td { (format_ms(e.recorded_at_ms)) }
                td.mono { (e.body.kind()) }
                td { (step_of(&e.body).unwrap_or("")) }
                td.desc {
                    details {
                        summary { (crate::problem::clip(&describe(&e.body), 160)) }
                        @let (text, cut) = json::cut(
                            serde_json::to_string_pretty(&e.body).unwrap_or_default(),
                            MAX_PAYLOAD_SHOWN,
                        );
                        pre { code { (text) } }
                        @if cut { p.muted { "Payload cut; the API has it whole." } }
                    }
                }
                td.mono.hash title=(hex::encode(e.hash)) { (hex::encode(&e.hash[..6])) "…" }
                td { (chain_cell(*c)) }
            }
        }
    }
}

/// Rows for events that follow an event with hash `prev` (the live stream's new rows).
pub fn rows_with_prev(evs: &[RecordedEvent], prev: Option<[u8; 32]>) -> Markup {
    rows(&with_status(evs.to_vec(), prev))
}

/// The "more" control after a page (replaced out of band when more rows are appended).
fn more(id: JobId, page: &EventPage, q: &EventQuery, oob: bool) -> Markup {
    html! {
        div id="events-more" hx-swap-oob=[oob.then_some("outerHTML")] {
            @if let Some(scanned) = page.scanned_to {
                p.muted { "Searched up to seq " (scanned) "." }
            }
            @if let Some(next) = page.next_after {
                a.button href={ "/ui/jobs/" (id) "?" (q.link(next, false)) "#events" }
                    hx-get={ "/ui/jobs/" (id) "/events?" (q.link(next, true)) }
                    hx-target="#event-rows" hx-swap="beforeend" {
                    @if page.filtered { "Search further" } @else { "More events" }
                }
            } @else {
                p.muted { "End of the log." }
            }
        }
    }
}

/// The events section of a job page.
pub fn section(id: JobId, page: &EventPage, q: &EventQuery, live_tail: bool) -> Markup {
    html! {
        section id="events" aria-labelledby="h-events" {
            h2 id="h-events" { "Events" }
            form.filters method="get" action={ "/ui/jobs/" (id) "#events" }
                hx-get={ "/ui/jobs/" (id) "/events" } hx-target="#events" hx-swap="outerHTML"
                role="search" aria-label="Search the events" {
                div.field {
                    label for="e-kind" { "Kind" }
                    select id="e-kind" name="kind" {
                        option value="" { "any" }
                        @for k in KINDS { option value=(k) selected[q.kind() == Some(k)] { (k) } }
                    }
                }
                div.field {
                    label for="e-step" { "Step" }
                    input id="e-step" name="step" value=[q.step()];
                }
                div.field {
                    label for="e-q" { "Text" }
                    input id="e-q" type="search" name="q" value=[q.q.as_deref()];
                }
                div.field {
                    label for="e-after" { "After seq" }
                    input id="e-after" type="number" min="0" name="after" value=[q.after];
                }
                div.field.buttons {
                    button type="submit" { "Search" }
                    a href={ "/ui/jobs/" (id) "#events" } { "All" }
                }
            }
            div.scroll {
                table.events {
                    caption.sr-only { "Events in order, with their chain status" }
                    thead { tr {
                        th scope="col" { "Seq" } th scope="col" { "Recorded (UTC)" } th scope="col" { "Kind" }
                        th scope="col" { "Step" } th scope="col" { "What" } th scope="col" { "Hash" }
                        th scope="col" { "Chain" }
                    } }
                    tbody id="event-rows"
                        sse-swap=[live_tail.then_some("rows")]
                        hx-swap=[live_tail.then_some("beforeend")] {
                        (rows(&page.events))
                    }
                }
            }
            @if page.events.is_empty() { p.empty { "No events match." } }
            (more(id, page, q, false))
        }
    }
}

/// `GET /ui/jobs/{id}/events`: the section (a search), or with `rows=1` the next rows
/// and the new "more" control.
pub async fn partial(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<EventQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::EVENTS.access).await?;
    let id = parse_id(&path)?;
    let scope = Scope::Tenant(&viewer.principal.tenant);
    // Scope check first: another tenant's job is a 404, never an empty page.
    st.store
        .get_job(scope, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let page = load_page(&st, scope, id, &q).await?;
    let m = if q.rows == Some(1) {
        html! { (rows(&page.events)) (more(id, &page, &q, true)) }
    } else {
        section(id, &page, &q, false)
    };
    Ok(super::layout::ok(m))
}
