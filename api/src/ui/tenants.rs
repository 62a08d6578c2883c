//! Tenants (`/ui/tenants`, admins of the system tenant, as `GET /v1/tenants`): each
//! tenant's display name, rate limits and usage (its jobs by status). The supervision
//! tree of every process belongs on this page too once the gateway can list it
//! (`GET /v1/system/actors`, a later issue); nothing is shown for it until then.

use super::error::UiError;
use super::layout::{self, badge, Nav};
use super::session::Viewer;
use super::time::format_ms;
use crate::routes::{tenants, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::JobStatus;
use maud::html;

/// `GET /ui/tenants`.
pub async fn page(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, tenants::LIST.access).await?;
    let list = st.store.list_tenants().await?;
    let counts = st.store.count_by_status().await?;
    let body = html! {
        h1 { "Tenants" }
        p.muted { "Limits apply on every gateway and worker without a restart (docs/limits.md). Usage is the tenant's jobs by status." }
        div.scroll { table.tenants {
            thead { tr {
                th scope="col" { "Tenant" } th scope="col" { "Name" } th scope="col" { "Created (UTC)" }
                th scope="col" { "Limits" } th scope="col" { "Jobs by status" }
            } }
            tbody { @for t in &list { tr {
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
