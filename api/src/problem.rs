//! problem+json errors (RFC 9457): the one error enum of the gateway, rendered with `type`,
//! `title`, `status`, `detail` and, for invalid plans, the first
//! [`MAX_REPORTED_PLAN_ERRORS`] `errors` with their paths plus `error_count`, so a hostile
//! plan with thousands of problems gets an answer of a few KiB, not megabytes.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use aetheris_runtime::PlanError;
use aetheris_store::StoreError;
use serde_json::json;
use std::time::Duration;

/// How many plan problems an answer lists; `error_count` says how many there were.
pub const MAX_REPORTED_PLAN_ERRORS: usize = 20;

/// At most `n` characters of client-supplied text, for messages (with `…` when cut).
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid plan: {}{}", .0.first().map(|e| e.to_string()).unwrap_or_default(),
        if .0.len() > 1 { format!(" (and {} more)", .0.len() - 1) } else { String::new() })]
    InvalidPlan(Vec<PlanError>),
    /// Well-formed JSON with a value the route cannot take (422), e.g. a bad retention.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// A known path with another method (405 with `Allow`).
    #[error("method {method} is not allowed here; use {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within the deadline (408; the connection is closed).
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    BodyTimeout(Duration),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    /// No or a bad token (401, with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token without the route's permission.
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit; retry after this many ms.
    #[error("rate limit exceeded for {0}; retry in {1} ms")]
    TooManyRequests(String, u64),
    #[error("{0}")]
    Unavailable(String),
    /// Over the gateway's connection limit (503 with `Retry-After: 1`).
    #[error("{0}")]
    Overloaded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Backend(m) => ApiError::Unavailable(format!("store unavailable: {m}")),
            e @ StoreError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::InvalidPlan(_) => "invalid-plan",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::TooLarge(_) => "payload-too-large",
            ApiError::BodyTimeout(_) => "request-timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests(..) => "rate-limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "Bad request",
            ApiError::InvalidPlan(_) => "Invalid plan",
            ApiError::Unprocessable(_) => "Unprocessable content",
            ApiError::NotFound(_) => "Not found",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::TooLarge(_) => "Payload too large",
            ApiError::BodyTimeout(_) => "Request timeout",
            ApiError::UnsupportedMediaType(_) => "Unsupported media type",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::TooManyRequests(..) => "Too many requests",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Overloaded(_) => "Service unavailable",
            ApiError::Internal(_) => "Internal error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidPlan(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut body = json!({
            "type": format!("https://aetheris.dev/problems/{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::InvalidPlan(errs) = self {
            body["errors"] = json!(&errs[..errs.len().min(MAX_REPORTED_PLAN_ERRORS)]);
            body["error_count"] = json!(errs.len());
        }
        let mut resp = HttpResponse::build(status);
        // A body that never arrived or was refused unread leaves the connection in an
        // unknown state: close it rather than wait for the rest.
        if matches!(self, ApiError::BodyTimeout(_) | ApiError::TooLarge(_)) {
            resp.force_close();
        }
        if let ApiError::Unauthorized(_) = self {
            resp.insert_header(("WWW-Authenticate", "Bearer error=\"invalid_token\""));
        }
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            resp.insert_header(("Allow", allowed.as_str()));
        }
        if let ApiError::Overloaded(_) = self {
            resp.insert_header(("Retry-After", "1"));
        }
        if let ApiError::TooManyRequests(_, ms) = self {
            resp.insert_header(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        resp.content_type("application/problem+json")
            .body(body.to_string())
    }
}
