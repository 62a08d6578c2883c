//! The supervision tree of the deployment (`/ui/system`, admins of the system tenant, as
//! `GET /v1/system/actors`): every gateway and worker process the store knows — live, or
//! not announcing for up to 10 minutes — with its heartbeat age against its TTL, version,
//! host, uptime, leases held and how fresh their renewal is, and its actors by kind (alive,
//! mailbox depth, restarts by reason, panics, the last restart and panic). The table
//! refreshes itself every few seconds.
//!
//! Invariant: the figures are read as the API route reads them (`store.list_processes`
//! and `routes::system::ProcessView::of`), from the store, so every gateway shows the same
//! for every process and a process that stopped announcing shows as such rather than
//! vanishing.

use super::error::UiError;
use super::layout::{self, badge, Nav};
use super::session::Viewer;
use super::time::{format_duration, format_ms};
use crate::routes::system::{ProcessView, ACTORS};
use crate::routes::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_actors::supervision::{ActorFigures, Incident};
use maud::{html, Markup};

/// How often the page refreshes its table.
const REFRESH: &str = "every 5s";

async fn processes(st: &AppState) -> Result<Vec<ProcessView>, UiError> {
    let rows = st.store.list_processes().await?;
    Ok(rows.into_iter().map(ProcessView::of).collect())
}

/// `GET /ui/system`.
pub async fn page(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, ACTORS.access).await?;
    let list = processes(&st).await?;
    let body = html! {
        h1 { "System" }
        p.muted { "Every gateway and worker process that announced itself in the last 10 minutes, with what it reported in its last announcement (docs/operations.md). Heartbeat ages are on the store's clock." }
        (table(&list))
    };
    Ok(layout::ok(layout::page(
        "System",
        &viewer,
        Nav::System,
        body,
    )))
}

/// `GET /ui/system/table`: the refreshing part.
pub async fn partial(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    Viewer::of(&req, &st, ACTORS.access).await?;
    let list = processes(&st).await?;
    Ok(layout::ok(table(&list)))
}

fn table(list: &[ProcessView]) -> Markup {
    let live = |kind: &str| list.iter().filter(|p| p.kind == kind && p.live).count();
    let silent = list.iter().filter(|p| !p.live).count();
    html! {
        div id="processes" hx-get="/ui/system/table" hx-trigger=(REFRESH) hx-swap="outerHTML" {
            p.summary role="status" {
                (live("gateway")) " live gateway(s), " (live("worker")) " live worker(s)"
                @if silent > 0 { ", " strong.bad { (silent) " not announcing" } " (killed, hung or cut off from the store)" }
                "."
            }
            @if list.is_empty() {
                p.empty { "No process has announced itself." }
            }
            @for p in list { (process(p)) }
        }
    }
}

/// `age` against `ttl`, e.g. `0.4 s of 5.0 s`.
fn age_of(age: Option<u64>, ttl: Option<u64>) -> String {
    let ms = |v: u64| format_duration(i64::try_from(v).unwrap_or(i64::MAX));
    match (age, ttl) {
        (Some(a), Some(t)) => format!("{} of {}", ms(a), ms(t)),
        (Some(a), None) => ms(a),
        (None, _) => "unknown".into(),
    }
}

fn process(p: &ProcessView) -> Markup {
    let r = &p.report;
    let state = if p.live { "live" } else { "not_announcing" };
    // Heartbeats come well within the TTL: one older than half of it is late.
    let late =
        matches!((p.heartbeat_age_ms, p.ttl_ms), (Some(a), Some(t)) if a.saturating_mul(2) > t);
    html! {
        article.process id={ "process-" (p.id) } aria-labelledby={ "h-" (p.id) } {
            h2 id={ "h-" (p.id) } { (p.kind) " " span.mono { (p.id) } " " (badge(state)) }
            dl.facts {
                div { dt { "Heartbeat age / TTL" } dd class=[late.then_some("bad")] { (age_of(p.heartbeat_age_ms, p.ttl_ms)) } }
                div { dt { "Version" } dd { (if r.version.is_empty() { "unknown" } else { &r.version }) } }
                div { dt { "Uptime" } dd { (format_duration(i64::try_from(r.uptime_ms).unwrap_or(i64::MAX))) } }
                div { dt { "Started (UTC)" } dd { @if r.started_at_ms > 0 { (format_ms(r.started_at_ms)) } @else { "unknown" } } }
                div { dt { "Host · pid" } dd { (r.host) " · " (r.pid) } }
                @if let Some(n) = r.leases_held {
                    div { dt { "Leases held" } dd { (n) } }
                    div { dt { "Leases renewed / TTL" } dd { (age_of(r.lease_heartbeat_age_ms, r.lease_ttl_ms)) } }
                }
                div.wide { dt { "Instance" } dd.mono { (r.instance) } }
            }
            @if r.actors.is_empty() {
                p.empty { "It reported no actors." }
            } @else {
                div.scroll { table.actors {
                    thead { tr {
                        th scope="col" { "Actors" } th scope="col" { "Alive" } th scope="col" { "Mailbox depth" }
                        th scope="col" { "Restarts" } th scope="col" { "Panics" } th scope="col" { "Last restart" } th scope="col" { "Last panic" }
                    } }
                    tbody { @for a in &r.actors { (actor_row(a)) } }
                } }
            }
        }
    }
}

fn actor_row(a: &ActorFigures) -> Markup {
    let reasons: Vec<String> = a
        .restarts_by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    html! {
        tr {
            th scope="row" { (a.kind) }
            td.num { (a.alive) }
            td.num { (a.mailbox_depth) }
            td.num {
                (a.restarts)
                @if !reasons.is_empty() { " " span.muted { "(" (reasons.join(", ")) ")" } }
            }
            td.num { (a.panics) }
            td { (incident(a.last_restart.as_ref())) }
            td { (incident(a.last_panic.as_ref())) }
        }
    }
}

fn incident(i: Option<&Incident>) -> Markup {
    html! {
        @match i {
            None => span.muted { "—" },
            Some(i) => {
                strong { (i.reason) } " at " (format_ms(i.at_ms))
                @if let Some(d) = &i.detail { br; span.muted { (d) } }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_actors::supervision::ProcessReport;

    #[test]
    fn a_process_shows_its_actors_and_a_silent_one_is_marked() {
        let mut report = ProcessReport {
            version: "9.9.9".into(),
            host: "<b>h</b>".into(),
            leases_held: Some(3),
            ..ProcessReport::default()
        };
        report.actors.push(ActorFigures {
            kind: "job".into(),
            alive: 3,
            restarts: 2,
            restarts_by_reason: [("tool_panic".to_string(), 2)].into(),
            last_restart: Some(Incident {
                reason: "tool_panic".into(),
                at_ms: 0,
                detail: Some("<script>x</script>".into()),
            }),
            ..ActorFigures::default()
        });
        let view = |live| ProcessView {
            kind: "worker".into(),
            id: "w1".into(),
            live,
            heartbeat_age_ms: Some(4000),
            ttl_ms: Some(5000),
            report: report.clone(),
        };
        let html = table(&[view(true), view(false)]).into_string();
        assert!(
            html.contains("0 live gateway(s), 1 live worker(s)"),
            "{html}"
        );
        assert!(html.contains("1 not announcing"));
        assert!(html.contains("tool_panic 2") && html.contains("9.9.9"));
        assert!(html.contains("4.0 s of 5.0 s") && html.contains("class=\"bad\""));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("&lt;b&gt;h"));
    }
}
