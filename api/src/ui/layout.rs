//! The page shell every UI page shares: head (stylesheet, htmx with a configuration that
//! never evaluates code or runs scripts from responses), a skip link, the navigation
//! (only what the caller may open), who is signed in and the sign-out form, and helpers
//! for HTML answers (never cached: pages show what one token may see).

use super::assets::href;
use super::session::Viewer;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};
use maud::{html, Markup, DOCTYPE};

/// htmx settings: no `eval`, no `<script>` from responses, requests only to this origin,
/// no inline indicator styles (the CSP forbids them), no page snapshots in localStorage.
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true,"includeIndicatorStyles":false,"historyCacheSize":0,"refreshOnHistoryMiss":true}"#;

/// Which navigation entry is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Jobs,
    Tenants,
    System,
}

/// An HTML answer's builder: media type and `Cache-Control: no-store`.
pub fn builder(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"));
    b
}

/// A 200 HTML answer.
pub fn ok(m: Markup) -> HttpResponse {
    builder(StatusCode::OK).body(m.into_string())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            meta name="referrer" content="same-origin";
            link rel="icon" href="data:,";
            title { (title) " · Aetheris" }
            link rel="stylesheet" href=(href("ui.css"));
            script src=(href("htmx.js")) defer {}
            script src=(href("sse.js")) defer {}
        }
    }
}

/// A full page for a signed-in viewer.
pub fn page(title: &str, viewer: &Viewer, nav: Nav, body: Markup) -> Markup {
    let p = &viewer.principal;
    let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
    let tenants = viewer.may(crate::routes::tenants::LIST.access);
    let system = viewer.may(crate::routes::system::ACTORS.access);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/jobs" { "Aetheris" }
                    nav aria-label="Main" {
                        a href="/ui/jobs" aria-current=[(nav == Nav::Jobs).then_some("page")] { "Jobs" }
                        @if tenants {
                            a href="/ui/tenants" aria-current=[(nav == Nav::Tenants).then_some("page")] { "Tenants" }
                        }
                        @if system {
                            a href="/ui/system" aria-current=[(nav == Nav::System).then_some("page")] { "System" }
                        }
                    }
                    div.who {
                        span title="signed in as" { (p.sub) }
                        " · "
                        span title="tenant" { (p.tenant) }
                        " · "
                        span.muted title="roles" { (roles.join(", ")) }
                        @if viewer.auth_on {
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        } @else {
                            span.muted { " (no authentication)" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// A page without a viewer (login, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top { a.brand href="/ui/jobs" { "Aetheris" } }
                main id="main" { (body) }
            }
        }
    }
}

/// The login form (`POST /ui/login`, field `token`), with why the last attempt failed.
pub fn login_page(why: Option<&str>, no_auth: bool) -> Markup {
    bare_page(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if no_auth {
                p { "This gateway runs without authentication: every visitor acts as an admin of tenant " code { "default" } ". " a href="/ui/jobs" { "Open the jobs" } "." }
            } @else {
                p { "Paste a bearer token (a JWT issued for your tenant, e.g. by " code { "aetheris token issue" } "). You see and may do exactly what its roles allow." }
                @if let Some(why) = why {
                    p.error role="alert" { (why) }
                }
                form.card method="post" action="/ui/login" {
                    label for="token" { "Token" }
                    textarea id="token" name="token" rows="4" required autocomplete="off" spellcheck="false" {}
                    button type="submit" { "Sign in" }
                }
                p.muted { "The token is kept in an HttpOnly cookie for this site's /ui pages only, and is checked again on every request." }
            }
        },
    )
}

/// Job and step statuses, as badge classes (a fixed set: nothing from the data becomes a
/// class name).
pub fn status_class(status: &str) -> &'static str {
    match status {
        "queued" => "st-queued",
        "running" => "st-running",
        "waiting" => "st-waiting",
        "succeeded" => "st-succeeded",
        "failed" => "st-failed",
        "cancelled" => "st-cancelled",
        "pending" => "st-pending",
        "outcome_unknown" => "st-unknown",
        "sleeping" => "st-sleeping",
        // An agent's tool calls (docs/agents.md).
        "refused" => "st-failed",
        "awaiting_approval" => "st-waiting",
        "approved" => "st-running",
        // Processes of the supervision page.
        "live" => "st-succeeded",
        "not_announcing" => "st-failed",
        _ => "st-other",
    }
}

/// A status badge.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (status_class(status)) } { (status.replace('_', " ")) } }
}

/// A count with thousands separators (`12,345`), for token figures.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
