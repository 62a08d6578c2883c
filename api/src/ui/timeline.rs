//! The waterfall timeline of a job: per step, how long it waited to start after it became
//! ready (queue wait: its `needs` finished, or the job was submitted) and how long it ran,
//! waited for a signal or slept.
//!
//! The page's first paint draws it from the folded state ([`section`]): one bar per step,
//! whose wait covers earlier attempts when a step was retried. Right after, the page asks
//! for the per-attempt waterfall ([`attempts`]), built from the step events of a bounded
//! scan ([`SCAN_EVENTS`]): each attempt's queue wait, run time, outcome and backoff, with
//! its invocation key and fencing token.

use super::error::UiError;
use super::layout::{self, status_class};
use super::session::Viewer;
use super::time::{format_duration, format_ms};
use crate::routes::{jobs, parse_id, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::{EventBody, JobId, JobState, RecordedEvent, StepStatus};
use aetheris_store::Scope;
use maud::{html, Markup};
use std::collections::HashMap;

/// Most events the per-attempt timeline reads.
pub const SCAN_EVENTS: usize = 20_000;
/// Most attempts listed in the attempts table.
const MAX_ATTEMPT_ROWS: usize = 500;

const LABEL_W: f64 = 170.0;
const CHART_W: f64 = 820.0;
const ROW_H: f64 = 22.0;

/// One coloured span of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub from: i64,
    pub to: i64,
    /// `queued`, `backoff`, `run`, `wait`, `sleep`.
    pub what: &'static str,
    /// The status the span ended in (colours `run` spans).
    pub status: &'static str,
}

/// One row of the waterfall.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub step: String,
    pub segments: Vec<Segment>,
    pub attempts: u32,
}

/// When each step became ready: its `needs`' latest finish, or the job's submission.
fn ready_at(state: &JobState, needs: &[String]) -> Option<i64> {
    needs.iter().try_fold(state.created_at_ms, |acc, n| {
        state
            .steps
            .get(n)
            .and_then(|s| s.finished_at_ms)
            .map(|f| acc.max(f))
    })
}

/// The waterfall from the folded state (`now`: the end of unfinished spans).
pub fn folded(state: &JobState, now: i64) -> Vec<Row> {
    state
        .plan
        .steps
        .iter()
        .map(|spec| {
            let mut segments = Vec::new();
            let s = state.steps.get(&spec.id);
            let attempts = s.map_or(0, |s| s.attempt);
            if let (Some(s), Some(ready)) = (s, ready_at(state, &spec.needs)) {
                if let Some(start) = s.started_at_ms {
                    if start > ready {
                        segments.push(Segment {
                            from: ready,
                            to: start,
                            what: if attempts > 1 { "backoff" } else { "queued" },
                            status: "pending",
                        });
                    }
                    let what = if spec.wait.is_some() {
                        "wait"
                    } else if spec.sleep.is_some() {
                        "sleep"
                    } else {
                        "run"
                    };
                    let end = match s.status {
                        StepStatus::Running | StepStatus::Waiting | StepStatus::Sleeping => now,
                        _ => s.finished_at_ms.unwrap_or(now),
                    };
                    segments.push(Segment {
                        from: start,
                        to: end.max(start),
                        what,
                        status: super::job_page::display_status(state, s),
                    });
                } else if s.status == StepStatus::Pending && !state.status.is_terminal() {
                    segments.push(Segment {
                        from: ready,
                        to: now.max(ready),
                        what: "queued",
                        status: "pending",
                    });
                }
            }
            Row {
                step: spec.id.clone(),
                segments,
                attempts,
            }
        })
        .collect()
}

/// One attempt, from the events.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub step: String,
    pub attempt: u32,
    pub invocation_key: Option<String>,
    pub fencing_token: Option<u64>,
    /// When it could have started (ready, or the end of its backoff).
    pub queued_from: i64,
    pub started: i64,
    pub ended: Option<i64>,
    pub outcome: &'static str,
}

/// Per-attempt rows and the attempts, from a job's events (the first `SCAN_EVENTS`).
pub fn from_events(
    state: &JobState,
    events: &[RecordedEvent],
    now: i64,
) -> (Vec<Row>, Vec<Attempt>) {
    let mut finished: HashMap<&str, i64> = HashMap::new();
    // When a step may start next: after a retryable failure, its backoff's end.
    let mut retry_at: HashMap<String, (i64, i64)> = HashMap::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut attempts: Vec<Attempt> = Vec::new();
    let created = state.created_at_ms;
    let needs: HashMap<&str, &[String]> = state
        .plan
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.needs.as_slice()))
        .collect();
    let ready = |finished: &HashMap<&str, i64>, step: &str| {
        needs
            .get(step)
            .map(|ns| {
                ns.iter()
                    .filter_map(|n| finished.get(n.as_str()))
                    .fold(created, |a, &b| a.max(b))
            })
            .unwrap_or(created)
    };
    let mut backoffs: Vec<(String, i64, i64)> = Vec::new();
    for e in events {
        let at = e.recorded_at_ms;
        let mut start = |step: &str,
                         attempt: u32,
                         key: Option<String>,
                         token: Option<u64>,
                         outcome: &'static str| {
            let queued_from = match retry_at.remove(step) {
                Some((failed_at, due)) => {
                    backoffs.push((step.to_string(), failed_at, due.min(at)));
                    due.min(at)
                }
                None => ready(&finished, step),
            };
            open.insert(step.to_string(), attempts.len());
            attempts.push(Attempt {
                step: step.to_string(),
                attempt,
                invocation_key: key,
                fencing_token: token,
                queued_from,
                started: at,
                ended: None,
                outcome,
            });
        };
        match &e.body {
            EventBody::StepStarted {
                step,
                attempt,
                invocation_key,
                fencing_token,
                ..
            } => start(
                step,
                *attempt,
                Some(invocation_key.clone()),
                Some(*fencing_token),
                "running",
            ),
            EventBody::WaitStarted { step, .. } => start(step, 1, None, None, "waiting"),
            EventBody::SleepStarted { step, .. } => start(step, 1, None, None, "sleeping"),
            _ => {}
        }
        let end = |outcome: &'static str,
                   step: &str,
                   open: &mut HashMap<String, usize>,
                   attempts: &mut Vec<Attempt>| {
            if let Some(i) = open.remove(step) {
                attempts[i].ended = Some(at);
                attempts[i].outcome = outcome;
            }
        };
        match &e.body {
            EventBody::StepSucceeded { step, .. }
            | EventBody::WaitCompleted { step, .. }
            | EventBody::SleepFinished { step } => {
                end("succeeded", step, &mut open, &mut attempts);
                finished.insert(step_key(state, step), at);
            }
            EventBody::StepFailed {
                step,
                retry_after_ms,
                ..
            } => {
                end("failed", step, &mut open, &mut attempts);
                match retry_after_ms {
                    Some(d) => {
                        retry_at.insert(step.clone(), (at, at.saturating_add(*d as i64)));
                    }
                    None => {
                        finished.insert(step_key(state, step), at);
                    }
                }
            }
            EventBody::WaitTimedOut { step } => {
                end("failed", step, &mut open, &mut attempts);
                finished.insert(step_key(state, step), at);
            }
            EventBody::StepOutcomeUnknown { step, .. } => {
                end("outcome_unknown", step, &mut open, &mut attempts);
            }
            EventBody::StepConfirmed {
                step,
                output: Some(_),
                ..
            } => {
                finished.insert(step_key(state, step), at);
            }
            _ => {}
        }
    }
    let mut rows: Vec<Row> = state
        .plan
        .steps
        .iter()
        .map(|s| Row {
            step: s.id.clone(),
            segments: Vec::new(),
            attempts: 0,
        })
        .collect();
    let row_of: HashMap<&str, usize> = state
        .plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let terminal = state.status.is_terminal();
    for a in &attempts {
        let Some(&r) = row_of.get(a.step.as_str()) else {
            continue;
        };
        let row = &mut rows[r];
        row.attempts += 1;
        if a.started > a.queued_from {
            row.segments.push(Segment {
                from: a.queued_from,
                to: a.started,
                what: "queued",
                status: "pending",
            });
        }
        let what = match a.outcome {
            "waiting" => "wait",
            "sleeping" => "sleep",
            _ if state.plan.step(&a.step).is_some_and(|s| s.wait.is_some()) => "wait",
            _ if state.plan.step(&a.step).is_some_and(|s| s.sleep.is_some()) => "sleep",
            _ => "run",
        };
        let end = a
            .ended
            .unwrap_or(if terminal { state.updated_at_ms } else { now });
        let status = if a.ended.is_none() && terminal {
            "cancelled"
        } else {
            a.outcome
        };
        row.segments.push(Segment {
            from: a.started,
            to: end.max(a.started),
            what,
            status,
        });
    }
    for (step, from, to) in backoffs {
        if let Some(&r) = row_of.get(step.as_str()) {
            rows[r].segments.push(Segment {
                from,
                to,
                what: "backoff",
                status: "pending",
            });
        }
    }
    (rows, attempts)
}

/// The step id as a `&str` borrowed from the plan (for the `finished` map's keys).
fn step_key<'a>(state: &'a JobState, step: &str) -> &'a str {
    state.plan.step(step).map_or("", |s| s.id.as_str())
}

/// The waterfall drawing.
fn chart(rows: &[Row], t0: i64, t1: i64) -> Markup {
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LABEL_W + (t - t0).max(0) as f64 / span * CHART_W;
    let height = ROW_H * rows.len() as f64 + 24.0;
    let width = LABEL_W + CHART_W + 10.0;
    html! {
        div.scroll.waterfall {
            svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
                viewBox={ "0 0 " (width) " " (height) } role="img"
                aria-label={ "Timeline of " (rows.len()) " steps over " (format_duration(t1 - t0)) } {
                @for (i, r) in rows.iter().enumerate() {
                    @let y = i as f64 * ROW_H;
                    text.row-label x="4" y=(y + 15.0) { (crate::problem::clip(&r.step, 18)) @if r.attempts > 1 { " ×" (r.attempts) } }
                    @for s in &r.segments {
                        @let w = (x(s.to) - x(s.from)).max(1.5);
                        rect class={ "seg seg-" (s.what) " " (status_class(s.status)) }
                            x=(format!("{:.1}", x(s.from))) y=(y + 4.0) width=(format!("{w:.1}")) height=(ROW_H - 8.0) {
                            title { (r.step) ": " (s.what) " " (format_duration(s.to - s.from)) " (" (s.status.replace('_', " ")) "), from " (format_ms(s.from)) }
                        }
                    }
                }
                text.axis x=(LABEL_W) y=(height - 6.0) { "0" }
                text.axis x=(LABEL_W + CHART_W) y=(height - 6.0) text-anchor="end" { (format_duration(t1 - t0)) }
            }
        }
        ul.legend aria-label="Timeline key" {
            li { span.swatch.seg-queued {} "queue wait" }
            li { span.swatch.seg-backoff {} "retry backoff" }
            li { span.swatch.st-succeeded {} "run (coloured by outcome)" }
            li { span.swatch.seg-wait {} "waiting for a signal" }
            li { span.swatch.seg-sleep {} "sleeping" }
        }
    }
}

fn bounds(state: &JobState, rows: &[Row], now: i64) -> (i64, i64) {
    let t0 = state.created_at_ms;
    let end = if state.status.is_terminal() {
        state.updated_at_ms
    } else {
        now
    };
    let t1 = rows
        .iter()
        .flat_map(|r| r.segments.iter().map(|s| s.to))
        .fold(end, i64::max);
    (t0, t1)
}

/// The timeline section from the folded state; it then loads the per-attempt one.
pub fn section(state: &JobState, now: i64) -> Markup {
    let rows = folded(state, now);
    let (t0, t1) = bounds(state, &rows, now);
    html! {
        section id="timeline" aria-labelledby="h-timeline"
            hx-get={ "/ui/jobs/" (state.job_id) "/attempts" } hx-trigger="load" hx-swap="outerHTML" {
            h2 id="h-timeline" { "Timeline" }
            (chart(&rows, t0, t1))
            p.muted { "Per step; a retried step's wait includes its earlier attempts. Loading the attempts…" }
        }
    }
}

/// The first events of a job, at most about [`SCAN_EVENTS`]: what the views built from
/// events (the per-attempt timeline, the agents' latencies) read, so a long log costs a
/// bounded read.
pub async fn scan(
    st: &AppState,
    scope: Scope<'_>,
    id: JobId,
) -> Result<Vec<RecordedEvent>, aetheris_store::StoreError> {
    let mut events = Vec::new();
    let mut after = 0;
    while events.len() < SCAN_EVENTS {
        let batch = st.store.read_events(scope, id, after, 1000).await?;
        let n = batch.len();
        after = batch.last().map_or(after, |e| e.seq);
        events.extend(batch);
        if n < 1000 {
            break;
        }
    }
    Ok(events)
}

/// `GET /ui/jobs/{id}/attempts`: the per-attempt timeline and the attempts table.
pub async fn attempts(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::EVENTS.access).await?;
    let id = parse_id(&path)?;
    let state = super::job_page::load(&st, &viewer, id).await?;
    let scope = Scope::Tenant(&viewer.principal.tenant);
    let events = scan(&st, scope, id).await?;
    let after = events.last().map_or(0, |e| e.seq);
    let cut = state.last_seq > after;
    let now = st.store.now_ms().await?;
    let (rows, list) = from_events(&state, &events, now);
    let (t0, t1) = bounds(&state, &rows, now);
    Ok(layout::ok(html! {
        section id="timeline" aria-labelledby="h-timeline" {
            h2 id="h-timeline" { "Timeline" }
            (chart(&rows, t0, t1))
            @if cut { p.muted { "Attempts from the first " (after) " of " (state.last_seq) " events." } }
            details.attempts {
                summary { "Attempts (" (list.len()) "): invocation keys, fencing tokens, queue and run times" }
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Step" } th scope="col" { "Attempt" } th scope="col" { "Invocation key" }
                        th scope="col" { "Fencing token" } th scope="col" { "Started (UTC)" }
                        th scope="col" { "Queue wait" } th scope="col" { "Ran" } th scope="col" { "Outcome" }
                    } }
                    tbody { @for a in list.iter().take(MAX_ATTEMPT_ROWS) { tr {
                        th scope="row" { (a.step) }
                        td.num { (a.attempt) }
                        td.mono.hash { (a.invocation_key.as_deref().unwrap_or("")) }
                        td.num { (a.fencing_token.map(|t| t.to_string()).unwrap_or_default()) }
                        td { (format_ms(a.started)) }
                        td { (format_duration(a.started - a.queued_from)) }
                        td { (a.ended.map(|e| format_duration(e - a.started)).unwrap_or_else(|| "…".into())) }
                        td { (super::layout::badge(a.outcome)) }
                    } } }
                } }
                @if list.len() > MAX_ATTEMPT_ROWS { p.muted { "The first " (MAX_ATTEMPT_ROWS) " attempts are listed." } }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::EffectClass;
    use serde_json::json;

    use aetheris_runtime::testkit::recorded as ev;

    #[test]
    fn retries_show_backoff_queue_and_runs() {
        let plan: aetheris_runtime::Plan = serde_json::from_value(json!({"steps": [
            {"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "needs": ["a"]}
        ]}))
        .unwrap();
        let started = |step: &str, attempt| EventBody::StepStarted {
            step: step.into(),
            attempt,
            invocation_key: format!("k-{step}"),
            tool: "echo".into(),
            effect: EffectClass::Pure,
            fencing_token: 7,
        };
        let events = vec![
            ev(
                1,
                1000,
                EventBody::JobSubmitted {
                    tenant: "t".into(),
                    plan,
                    input: json!(null),
                    idempotency_key: None,
                },
            ),
            ev(2, 1010, started("a", 1)),
            ev(
                3,
                1020,
                EventBody::StepFailed {
                    step: "a".into(),
                    attempt: 1,
                    error: "x".into(),
                    retryable: true,
                    retry_after_ms: Some(100),
                },
            ),
            ev(4, 1130, started("a", 2)),
            ev(
                5,
                1150,
                EventBody::StepSucceeded {
                    step: "a".into(),
                    attempt: 2,
                    output: json!(1),
                },
            ),
            ev(6, 1160, started("b", 1)),
        ];
        let state = JobState::from_events(&events).unwrap().unwrap();
        let (rows, attempts) = from_events(&state, &events, 2000);
        assert_eq!(attempts.len(), 3);
        assert_eq!((attempts[1].queued_from, attempts[1].started), (1120, 1130));
        assert_eq!(attempts[2].queued_from, 1150, "b is ready when a finished");
        assert_eq!(attempts[0].fencing_token, Some(7));
        let a: Vec<(&str, i64, i64)> = rows[0]
            .segments
            .iter()
            .map(|s| (s.what, s.from, s.to))
            .collect();
        assert!(a.contains(&("backoff", 1020, 1120)), "{a:?}");
        assert!(
            a.contains(&("queued", 1120, 1130)) && a.contains(&("run", 1130, 1150)),
            "{a:?}"
        );
        assert_eq!(
            rows[1].segments.last().map(|s| (s.to, s.status)),
            Some((2000, "running"))
        );
        let f = folded(&state, 2000);
        assert_eq!(
            f[1].segments.iter().map(|s| s.what).collect::<Vec<_>>(),
            vec!["queued", "run"]
        );
    }
}
