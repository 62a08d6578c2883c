//! The UI's errors as HTML pages, with the status the API would answer: 401 shows the
//! login form (and tells htmx to go there), 403 says which permission is missing, 404 is
//! the same for a job of another tenant as for one that does not exist (G6). Messages are
//! the API's own problem details, escaped like everything else.

use super::layout;
use crate::problem::ApiError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use maud::html;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// What the API would answer (its status and detail).
    #[error("{0}")]
    Api(#[from] ApiError),
    /// No session cookie: sign in first.
    #[error("sign in with a token to continue")]
    NoSession,
    /// A form without this session's CSRF token.
    #[error("this form is stale or was not sent from this site (CSRF token mismatch); reload the page and try again")]
    Csrf,
    /// A state-changing request from another site.
    #[error("requests from other sites are refused")]
    CrossSite,
}

impl From<aetheris_store::StoreError> for UiError {
    fn from(e: aetheris_store::StoreError) -> Self {
        UiError::Api(e.into())
    }
}

impl ResponseError for UiError {
    fn status_code(&self) -> StatusCode {
        match self {
            UiError::Api(e) => e.status_code(),
            UiError::NoSession => StatusCode::UNAUTHORIZED,
            UiError::Csrf | UiError::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = self.to_string();
        if status == StatusCode::UNAUTHORIZED {
            let why = matches!(self, UiError::Api(_)).then_some(detail.as_str());
            return layout::builder(status)
                .insert_header(("HX-Redirect", "/ui/login"))
                .body(layout::login_page(why, false).into_string());
        }
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Not possible now",
            s if s.is_client_error() => "Cannot do that",
            _ => "Something went wrong",
        };
        let body = html! {
            h1 { (title) }
            p.error role="alert" { (detail) }
            p { a href="/ui/jobs" { "Back to the jobs" } }
        };
        layout::builder(status).body(layout::bare_page(title, body).into_string())
    }
}
