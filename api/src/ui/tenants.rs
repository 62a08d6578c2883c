//! Tenants (`/ui/tenants`, admins of the system tenant, as `GET /v1/tenants`): each
//! tenant's display name, its limits, and its usage next to them: its jobs by status (the
//! store's counts) and its LLM tokens of today against its daily budget. The figures are
//! read as the gateway uses them: the counts from `store.count_by_status`, today's tokens
//! from `store.llm_tokens_today` (the counter model calls reserve against) and the daily
//! budget from the limits every process applies (`RateLimiters::limits`, the limits file's
//! defaults under the tenant's own). The supervision tree of the processes is
//! [`super::system`].

use super::error::UiError;
use super::layout::{self, badge, thousands, Nav};
use super::session::Viewer;
use super::time::format_ms;
use crate::routes::{tenants, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::JobStatus;
use maud::{html, Markup};

/// `used of limit` (with the share used), or `used (no daily budget)`.
fn tokens_today(used: u64, limit: Option<u64>) -> Markup {
    html! {
        @match limit {
            Some(l) => {
                (thousands(used)) " of " (thousands(l))
                @if l > 0 { " (" (used.saturating_mul(100) / l) "%)" }
            },
            None => { (thousands(used)) " " span.muted { "(no daily budget)" } },
        }
    }
}

/// `GET /ui/tenants`.
pub async fn page(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, tenants::LIST.access).await?;
    let list = st.store.list_tenants().await?;
    let counts = st.store.count_by_status().await?;
    let used = futures::future::try_join_all(list.iter().map(|t| st.store.llm_tokens_today(&t.id)))
        .await?;
    let limits = st.limits.limits();
    let body = html! {
        h1 { "Tenants" }
        p.muted { "Limits apply on every gateway and worker without a restart (docs/limits.md). Usage: the tenant's jobs by status, and its LLM tokens of today (UTC, store clock; calls in flight counted) against its llm_tokens_per_day." }
        div.scroll { table.tenants {
            thead { tr {
                th scope="col" { "Tenant" } th scope="col" { "Name" } th scope="col" { "Created (UTC)" }
                th scope="col" { "Limits" } th scope="col" { "Jobs by status" } th scope="col" { "LLM tokens today" }
            } }
            tbody { @for (t, used) in list.iter().zip(&used) { tr {
                th scope="row".mono { (t.id) }
                td { (t.name) }
                td { (format_ms(t.created_at_ms)) }
                td {
                    @if t.limits.as_object().is_some_and(|o| o.is_empty()) || t.limits.is_null() {
                        span.muted { "defaults" }
                    } @else {
                        code { (super::json::one_line(&t.limits, 400)) }
                    }
                }
                td { ul.counts.small {
                    @for s in JobStatus::ALL {
                        @let n: u64 = counts.iter().filter(|c| c.tenant == t.id && c.status == s).map(|c| c.count).sum();
                        @if n > 0 { li { (badge(s.as_str())) " " (n) } }
                    }
                } }
                td.num { (tokens_today(*used, limits.for_tenant(&t.id).llm_tokens_per_day)) }
            } } }
        } }
    };
    Ok(layout::ok(layout::page(
        "Tenants",
        &viewer,
        Nav::Tenants,
        body,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shown_against_the_daily_budget() {
        assert_eq!(
            tokens_today(1500, Some(6000)).into_string(),
            "1,500 of 6,000 (25%)"
        );
        assert!(tokens_today(7, None)
            .into_string()
            .contains("no daily budget"));
    }
}
