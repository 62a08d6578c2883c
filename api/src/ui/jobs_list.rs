//! The jobs list (`/ui/jobs`): the tenant's jobs newest first, counts by status, filters
//! (status, tool, created between, idempotency key, text in the input) and cursor pages,
//! refreshed live on the first page. Status and time narrow the store's own listing (job
//! ids are time-ordered, so "created before" is a cursor); the other filters are applied
//! to a bounded scan ([`SCAN_JOBS`] jobs, [`SCAN_SUBMISSIONS`] when the plan or input must
//! be read), and a page that ran out of budget says how far it looked and continues.

use super::error::UiError;
use super::layout::{self, badge, Nav};
use super::session::Viewer;
use super::time::{format_ms, parse_datetime_local, to_datetime_local};
use crate::problem::ApiError;
use crate::routes::{jobs, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::{EventBody, JobId, JobStatus};
use aetheris_store::{JobSummary, ListFilter, Scope};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

/// Jobs per page.
pub const PAGE: usize = 50;
/// Most jobs one page request looks at.
pub const SCAN_JOBS: usize = 5_000;
/// Most submissions (plan and input) one page request reads for the tool and text filters.
pub const SCAN_SUBMISSIONS: usize = 500;
/// Jobs read from the store at a time.
const BATCH: usize = 200;

/// The list's query string; every field is optional and kept in the page's links.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    /// Created at or after (datetime-local, UTC).
    #[serde(default)]
    pub from: Option<String>,
    /// Created at or before (datetime-local, UTC).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// Text the input's JSON contains (case-insensitive).
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// The filters, checked.
struct Parsed {
    status: Option<JobStatus>,
    tool: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    key: Option<String>,
    q: Option<String>,
    cursor: Option<JobId>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| crate::problem::clip(s, 256))
}

impl Filters {
    fn parse(&self) -> Result<Parsed, ApiError> {
        let status = match nonempty(&self.status) {
            None => None,
            Some(s) => Some(
                JobStatus::parse(&s)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}")))?,
            ),
        };
        let time = |v: &Option<String>, what: &str| -> Result<Option<i64>, ApiError> {
            match nonempty(v) {
                None => Ok(None),
                Some(s) => parse_datetime_local(&s).map(Some).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{what} {s:?} is not a date and time like 2026-12-05T14:30 (UTC)"
                    ))
                }),
            }
        };
        let cursor = match nonempty(&self.cursor) {
            None => None,
            Some(c) => Some(
                c.parse::<JobId>()
                    .map_err(|_| ApiError::BadRequest(format!("bad cursor {c:?}")))?,
            ),
        };
        Ok(Parsed {
            status,
            tool: nonempty(&self.tool),
            from_ms: time(&self.from, "from")?,
            to_ms: time(&self.to, "to")?,
            key: nonempty(&self.key),
            q: nonempty(&self.q).map(|s| s.to_lowercase()),
            cursor,
        })
    }

    /// The query string of these filters with another cursor (for page links).
    fn query(&self, cursor: Option<&str>) -> String {
        let pairs: Vec<(&str, String)> = [
            ("status", nonempty(&self.status)),
            ("tool", nonempty(&self.tool)),
            ("from", nonempty(&self.from)),
            ("to", nonempty(&self.to)),
            ("key", nonempty(&self.key)),
            ("q", nonempty(&self.q)),
            ("cursor", cursor.map(str::to_string)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// The first job id a UUIDv7 created after `ms` could have: every job created at or
/// before `ms` sorts below it, so it is the "created before" cursor of the store's list.
fn created_until_cursor(ms: i64) -> JobId {
    let ts = (ms.max(0) as u128 + 1) & ((1u128 << 48) - 1);
    JobId(Uuid::from_u128(ts << 80))
}

/// One page of the scan.
struct Scan {
    jobs: Vec<JobSummary>,
    /// Where the next page starts, if the scan did not reach the end.
    next: Option<JobId>,
    scanned: usize,
    /// The scan stopped on its budget before the page was full.
    budget_hit: bool,
}

async fn scan(st: &AppState, tenant: &str, f: &Parsed) -> Result<Scan, ApiError> {
    let scope = Scope::Tenant(tenant);
    let reads_submission = f.tool.is_some() || f.q.is_some();
    let budget = if reads_submission {
        SCAN_SUBMISSIONS
    } else {
        SCAN_JOBS
    };
    let mut before = match (f.cursor, f.to_ms) {
        (Some(c), _) => Some(c),
        (None, Some(to)) => Some(created_until_cursor(to)),
        (None, None) => None,
    };
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let batch = st
            .store
            .list_jobs(
                scope,
                ListFilter {
                    status: f.status,
                    before,
                    limit: BATCH,
                },
            )
            .await?;
        let full_batch = batch.len() == BATCH;
        for j in batch {
            if f.from_ms.is_some_and(|from| j.created_at_ms < from) {
                return Ok(Scan {
                    jobs: out,
                    next: None,
                    scanned,
                    budget_hit: false,
                });
            }
            scanned += 1;
            before = Some(j.job_id);
            if matches(st, scope, f, &j).await? {
                out.push(j);
            }
            if out.len() == PAGE {
                return Ok(Scan {
                    jobs: out,
                    next: before,
                    scanned,
                    budget_hit: false,
                });
            }
            if scanned >= budget {
                return Ok(Scan {
                    jobs: out,
                    next: before,
                    scanned,
                    budget_hit: true,
                });
            }
        }
        if !full_batch {
            return Ok(Scan {
                jobs: out,
                next: None,
                scanned,
                budget_hit: false,
            });
        }
    }
}

/// Whether a listed job passes the filters the store cannot apply.
async fn matches(
    st: &AppState,
    scope: Scope<'_>,
    f: &Parsed,
    j: &JobSummary,
) -> Result<bool, ApiError> {
    if let Some(k) = &f.key {
        if j.idempotency_key.as_deref() != Some(k.as_str()) {
            return Ok(false);
        }
    }
    if f.tool.is_none() && f.q.is_none() {
        return Ok(true);
    }
    let first = st.store.read_events(scope, j.job_id, 0, 1).await?;
    let Some(EventBody::JobSubmitted { plan, input, .. }) = first.first().map(|e| &e.body) else {
        return Ok(false);
    };
    if let Some(t) = &f.tool {
        if !plan
            .steps
            .iter()
            .any(|s| s.tool.as_deref() == Some(t.as_str()))
        {
            return Ok(false);
        }
    }
    if let Some(q) = &f.q {
        if !input.to_string().to_lowercase().contains(q.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `GET /ui/jobs`.
pub async fn page(
    req: HttpRequest,
    q: web::Query<Filters>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::LIST.access).await?;
    let parsed = q.parse()?;
    let table = table_markup(&st, &viewer, &q, &parsed).await?;
    let tools: Vec<&String> = st.tools.keys().collect();
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/ui/jobs" role="search" aria-label="Filter jobs" {
            div.field {
                label for="f-status" { "Status" }
                select id="f-status" name="status" {
                    option value="" { "any" }
                    @for s in JobStatus::ALL {
                        option value=(s.as_str()) selected[parsed.status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            div.field {
                label for="f-tool" { "Tool" }
                input id="f-tool" name="tool" list="tools" value=[q.tool.as_deref()];
                datalist id="tools" { @for t in &tools { option value=(t) {} } }
            }
            div.field {
                label for="f-from" { "Created from (UTC)" }
                input id="f-from" type="datetime-local" name="from" value=[parsed.from_ms.map(to_datetime_local)];
            }
            div.field {
                label for="f-to" { "to (UTC)" }
                input id="f-to" type="datetime-local" name="to" value=[parsed.to_ms.map(to_datetime_local)];
            }
            div.field {
                label for="f-key" { "Idempotency key" }
                input id="f-key" name="key" value=[q.key.as_deref()];
            }
            div.field {
                label for="f-q" { "Text in input" }
                input id="f-q" type="search" name="q" value=[q.q.as_deref()];
            }
            div.field.buttons {
                button type="submit" { "Filter" }
                a href="/ui/jobs" { "Clear" }
            }
        }
        (table)
    };
    Ok(layout::ok(layout::page("Jobs", &viewer, Nav::Jobs, body)))
}

/// `GET /ui/jobs/table`: the counts and the table, for the live refresh.
pub async fn table(
    req: HttpRequest,
    q: web::Query<Filters>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::LIST.access).await?;
    let parsed = q.parse()?;
    Ok(layout::ok(table_markup(&st, &viewer, &q, &parsed).await?))
}

async fn table_markup(
    st: &AppState,
    viewer: &Viewer,
    q: &Filters,
    parsed: &Parsed,
) -> Result<Markup, ApiError> {
    let tenant = &viewer.principal.tenant;
    let counts: Vec<(JobStatus, u64)> = {
        let all = st.store.count_by_status().await?;
        JobStatus::ALL
            .iter()
            .map(|s| {
                let n = all
                    .iter()
                    .filter(|c| c.tenant == *tenant && c.status == *s)
                    .map(|c| c.count)
                    .sum();
                (*s, n)
            })
            .collect()
    };
    let scan = scan(st, tenant, parsed).await?;
    let next = scan.next.map(|c| c.to_string());
    // Only the first page refreshes itself: later pages are a stable view.
    let live = parsed.cursor.is_none();
    let refresh = format!("/ui/jobs/table?{}", q.query(None));
    Ok(html! {
        div id="jobs-live"
            hx-get=[live.then_some(refresh.as_str())]
            hx-trigger=[live.then_some("every 4s")]
            hx-swap=[live.then_some("outerHTML")] {
            ul.counts aria-label="Jobs by status" {
                @for (s, n) in &counts {
                    li {
                        a href={ "/ui/jobs?status=" (s.as_str()) } {
                            (badge(s.as_str())) " " strong { (n) }
                        }
                    }
                }
            }
            @if scan.jobs.is_empty() {
                p.empty { "No jobs match." }
            } @else {
                div.scroll {
                    table.jobs {
                        caption.sr-only { "Jobs, newest first" }
                        thead { tr {
                            th scope="col" { "Job" }
                            th scope="col" { "Status" }
                            th scope="col" { "Created (UTC)" }
                            th scope="col" { "Updated (UTC)" }
                            th scope="col" { "Events" }
                            th scope="col" { "Idempotency key" }
                        } }
                        tbody {
                            @for j in &scan.jobs {
                                tr {
                                    td { a.mono href={ "/ui/jobs/" (j.job_id) } { (j.job_id) } }
                                    td { (badge(j.status.as_str())) }
                                    td { (format_ms(j.created_at_ms)) }
                                    td { (format_ms(j.updated_at_ms)) }
                                    td.num { (j.last_seq) }
                                    td.mono { (j.idempotency_key.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if parsed.cursor.is_some() {
                    a href={ "/ui/jobs?" (q.query(None)) } { "« Newest" }
                }
                @if scan.budget_hit {
                    span.muted { "Looked at " (scan.scanned) " jobs for this page. " }
                }
                @if let Some(n) = &next {
                    a rel="next" href={ "/ui/jobs?" (q.query(Some(n))) } { "Older »" }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_cursor_splits_at_the_millisecond() {
        let at = 1_700_000_000_000i64;
        let c = created_until_cursor(at);
        let made_at = |ms: i64| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                (ms / 1000) as u64,
                ((ms % 1000) * 1_000_000) as u32,
            );
            JobId(Uuid::new_v7(ts))
        };
        assert!(made_at(at) < c, "created at the bound: listed");
        assert!(made_at(at + 1) > c, "created after: not listed");
    }

    #[test]
    fn page_links_keep_the_filters() {
        let f = Filters {
            status: Some("failed".into()),
            q: Some("a&b".into()),
            ..Filters::default()
        };
        assert_eq!(f.query(Some("x")), "status=failed&q=a%26b&cursor=x");
    }
}
