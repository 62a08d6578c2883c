//! The trace UI, served by the gateway at `/ui`: server-rendered HTML (maud, which escapes
//! every interpolated value) with htmx for partial updates and Server-Sent Events for live
//! jobs, its files embedded in the binary. Pages: sign in/out, the jobs list, a job (plan
//! DAG, waterfall timeline, steps, ledger, attempts with fencing tokens, agent turns and
//! tool calls, the hash-chained event log, actions including an agent's approvals and
//! budget), its evidence, the tenants with their limits and usage, and the supervision
//! tree of every process.
//! docs/ui.md describes the pages, their permissions and the security headers.
//!
//! Invariants kept here:
//! - one authorization: every page and action authorizes through
//!   `routes::authorize_bearer` with the access of the API route whose data or command it
//!   shows or sends ([`session::Viewer::of`]), so RBAC, disabled users and the 404 across
//!   tenants (G6) are the API's; actions call the API's own command functions
//!   (`routes::commands`), with the same checks and audit rows, `by` = the token's `sub`;
//! - hostile data is inert: every value reaches the page through maud's escaping, and the
//!   Content-Security-Policy forbids inline scripts and styles, so even an escaping bug
//!   could not run an injected `<script>` (defence in depth);
//! - forms that change something carry the session's CSRF token and are refused from
//!   other sites ([`session`]);
//! - a job page reads the folded state, one page of events and the ledger, never the whole
//!   log, so a 10,000-event job opens as fast as a small one; longer scans (search,
//!   per-attempt timeline) are bounded per request and say where they stopped.
//!
//! Not part of the JSON API: `/v1/openapi.json` does not list these routes.

mod actions;
mod agents;
mod approvals;
pub mod assets;
mod dag;
mod error;
mod events;
pub mod evidence;
mod job_page;
mod jobs_list;
mod json;
mod layout;
pub mod session;
mod system;
mod tenants;
mod time;
mod timeline;

use crate::problem::ApiError;
use crate::routes::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
pub use error::UiError;
pub use evidence::EvidenceExport;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;

/// What the UI needs beyond the gateway's [`AppState`].
#[derive(Clone, Default)]
pub struct UiConfig {
    /// Where evidence packages come from (the export behind `GET /v1/jobs/{id}/evidence`);
    /// `None`: the gateway does not export evidence, and the UI offers none.
    pub evidence: Option<Arc<dyn EvidenceExport>>,
}

/// The UI's state, one per node.
pub struct UiState {
    pub config: UiConfig,
}

/// The Content-Security-Policy of every UI answer: scripts and styles only from our own
/// files (no inline code, no `eval`), nothing from other origins, forms only to us, never
/// framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Mounts the UI under `/ui` (before the API's catch-all 404).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/ui")
            .wrap_fn(|req: ServiceRequest, srv| {
                let started = Instant::now();
                let fut = srv.call(req);
                async move { fut.await.map(|res| secure(res, started)) }
            })
            .route("", web::get().to(to_jobs))
            .route("/", web::get().to(to_jobs))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/assets/{file}", web::get().to(assets::serve))
            .route("/jobs", web::get().to(jobs_list::page))
            .route("/jobs/table", web::get().to(jobs_list::table))
            .route("/jobs/{id}", web::get().to(job_page::page))
            .route("/jobs/{id}/summary", web::get().to(job_page::summary))
            .route("/jobs/{id}/actions", web::get().to(actions::panel))
            .route("/jobs/{id}/events", web::get().to(events::partial))
            .route("/jobs/{id}/attempts", web::get().to(timeline::attempts))
            .route("/jobs/{id}/agents", web::get().to(agents::partial))
            .route("/jobs/{id}/live", web::get().to(job_page::live))
            .route("/jobs/{id}/cancel", web::post().to(actions::cancel))
            .route("/jobs/{id}/signal", web::post().to(actions::signal))
            .route(
                "/jobs/{id}/steps/{step}/confirm",
                web::post().to(actions::confirm),
            )
            .route(
                "/jobs/{id}/approvals/{call}",
                web::post().to(approvals::decide),
            )
            .route("/jobs/{id}/budget", web::post().to(approvals::budget))
            .route("/jobs/{id}/evidence", web::get().to(evidence::page))
            .route("/jobs/{id}/evidence.zip", web::get().to(evidence::download))
            .route("/tenants", web::get().to(tenants::page))
            .route("/system", web::get().to(system::page))
            .route("/system/table", web::get().to(system::partial))
            .default_service(web::to(not_found)),
    );
}

/// Adds the security headers and the server's time for the answer (`Server-Timing`).
fn secure<B: MessageBody>(mut res: ServiceResponse<B>, started: Instant) -> ServiceResponse<B> {
    let h = res.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("content-security-policy", CSP);
    set("x-content-type-options", "nosniff");
    set("referrer-policy", "same-origin");
    set("x-frame-options", "DENY");
    set("cross-origin-opener-policy", "same-origin");
    set(
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    set(
        "server-timing",
        &format!("app;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0),
    );
    res
}

async fn to_jobs() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", "/ui/jobs"))
        .finish()
}

async fn not_found() -> Result<HttpResponse, UiError> {
    Err(ApiError::NotFound("there is no such page".into()).into())
}

/// Reads an `application/x-www-form-urlencoded` body with the gateway's body rules (size
/// limit and deadline).
pub async fn read_form<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    st: &AppState,
) -> Result<T, UiError> {
    let body = crate::body::read(req, payload, st.body).await?;
    serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad form: {e}")).into())
}

async fn login_form(st: web::Data<AppState>) -> HttpResponse {
    layout::ok(layout::login_page(None, st.auth.is_none()))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`: checks the token as every request will (signature, expiry, tenant,
/// user row) and keeps it in the session cookie.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    session::check_same_origin(&req)?;
    if st.auth.is_none() {
        return Ok(to_jobs().await);
    }
    let form: LoginForm = read_form(&req, payload, &st).await?;
    let token = form.token.trim();
    let refused = |why: &str| {
        layout::builder(actix_web::http::StatusCode::UNAUTHORIZED)
            .body(layout::login_page(Some(why), false).into_string())
    };
    if !session::cookie_safe(token) {
        return Ok(refused(
            "That is not a token: a JWT is three base64url parts joined by dots (at most 3800 characters here).",
        ));
    }
    match crate::routes::authenticate_bearer(&st, Some(&format!("Bearer {token}"))).await {
        Ok(_) => Ok(HttpResponse::SeeOther()
            .insert_header(("Set-Cookie", session::start_cookie(&req, token)))
            .insert_header(("Location", "/ui/jobs"))
            .finish()),
        Err(ApiError::Unauthorized(why)) => Ok(refused(&why)),
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`: ends the session (the cookie is cleared).
async fn logout(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    session::check_same_origin(&req)?;
    let form: LogoutForm = read_form(&req, payload, &st).await?;
    let token = session::session_token(&req).unwrap_or_default();
    if !token.is_empty() {
        let expected = session::csrf_token(&token);
        if !session::same_secret(&form.csrf, &expected) {
            return Err(UiError::Csrf);
        }
    }
    Ok(HttpResponse::SeeOther()
        .insert_header(("Set-Cookie", session::end_cookie(&req)))
        .insert_header(("Location", "/ui/login"))
        .finish())
}
