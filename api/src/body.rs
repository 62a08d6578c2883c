//! Request bodies: the one place the gateway reads and parses them. Owns the body deadline,
//! the size limit, the media-type rule and the strict JSON rule.
//!
//! Invariants kept here (G8, and "one client must never make the gateway stop answering
//! others"):
//! - a body must arrive completely within [`BodyRules::deadline`] (default 10 s) or the
//!   request is answered 408 and its connection closed, so a client that sends headers and
//!   then stalls cannot hold a connection (and its file descriptor) for longer than that;
//! - more than [`BodyRules::limit`] bytes are refused (413) without being buffered;
//! - a non-empty body must be `application/json` (or `…+json`), else 415;
//! - a JSON body must be exactly one JSON object: trailing data (`{…}garbage`), arrays and
//!   scalars are refused (400) the same way on every route, with the JSON path of the first
//!   problem in the user's terms.

use crate::problem::ApiError;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest accepted request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// How long a client has to send a whole request body.
pub const DEFAULT_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// How bodies are read: size limit and deadline (both configurable per node).
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub limit: usize,
    pub deadline: Duration,
}

impl Default for BodyRules {
    fn default() -> Self {
        BodyRules {
            limit: DEFAULT_BODY_LIMIT,
            deadline: DEFAULT_BODY_DEADLINE,
        }
    }
}

/// Whether a route's body may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A JSON object is required.
    Required,
    /// An empty body means "all defaults" (documented per route).
    Optional,
}

/// Reads the whole body within the deadline, refusing more than the limit without
/// buffering it. An announced `Content-Length` over the limit is refused before reading.
pub async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    rules: BodyRules,
) -> Result<web::BytesMut, ApiError> {
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > rules.limit {
            return Err(ApiError::TooLarge(rules.limit));
        }
    }
    match tokio::time::timeout(rules.deadline, collect(payload, rules.limit)).await {
        Ok(body) => body,
        Err(_) => Err(ApiError::BodyTimeout(rules.deadline)),
    }
}

async fn collect(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Refuses a body whose `Content-Type` is not JSON (415). Called only for non-empty bodies.
pub fn require_json_media_type(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else if ct.is_empty() {
        Err(ApiError::UnsupportedMediaType(
            "the body needs `Content-Type: application/json`".into(),
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {:?} is not accepted; send application/json",
            crate::problem::clip(ct, 64)
        )))
    }
}

/// Parses `body` as exactly one JSON object into `T`. `what` names the body in messages
/// ("submission", "signal", …). Unknown fields, wrong types, trailing data and non-object
/// bodies are 400 with the JSON path of the problem.
pub fn parse_object<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(ApiError::BadRequest(format!("the {what} body is empty"))),
        Some(b'{') => {}
        Some(_) => {
            // Still tell a syntax error apart from a well-formed non-object.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Err(e) => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
                    Ok(_) => ApiError::BadRequest(format!("the {what} body must be a JSON object")),
                },
            );
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest(format!("invalid {what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid {what} at {path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::BadRequest(format!(
            "body is not valid JSON: trailing data after the {what} object ({e})"
        ))
    })?;
    Ok(value)
}

/// Reads and parses a required JSON object body.
pub async fn json_required<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    rules: BodyRules,
    what: &str,
) -> Result<T, ApiError> {
    let body = json_bytes(req, payload, rules, what).await?;
    parse_object(&body, what)
}

/// Reads and parses an optional JSON object body: an empty one (no bytes or only
/// whitespace) gives `T::default()` and needs no `Content-Type`.
pub async fn json_optional<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    payload: web::Payload,
    rules: BodyRules,
    what: &str,
) -> Result<T, ApiError> {
    let body = read(req, payload, rules).await?;
    if is_blank(&body) {
        return Ok(T::default());
    }
    require_json_media_type(req)?;
    parse_object(&body, what)
}

/// Reads a required JSON body as bytes (media type checked), for callers that parse it
/// off the HTTP workers (big plans).
pub async fn json_bytes(
    req: &HttpRequest,
    payload: web::Payload,
    rules: BodyRules,
    what: &str,
) -> Result<web::BytesMut, ApiError> {
    let body = read(req, payload, rules).await?;
    if is_blank(&body) {
        return Err(ApiError::BadRequest(format!("the {what} body is empty")));
    }
    require_json_media_type(req)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Thing {
        #[serde(default)]
        #[allow(dead_code)]
        a: Option<u32>,
    }

    #[test]
    fn exactly_one_object_is_accepted() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"a": 1}"#, None),
            ("  {}  \n", None),
            (r#"{"a": 1}garbage"#, Some("trailing data")),
            (r#"{"a": 1}{"a": 2}"#, Some("trailing data")),
            ("[1, 2]", Some("must be a JSON object")),
            ("[]", Some("must be a JSON object")),
            ("3", Some("must be a JSON object")),
            ("null", Some("must be a JSON object")),
            ("\"x\"", Some("must be a JSON object")),
            ("[1,", Some("not valid JSON")),
            ("{\"a\": ", Some("not valid JSON")),
            ("", Some("is empty")),
            (r#"{"a": "x"}"#, Some("invalid thing at a")),
            (r#"{"b": 1}"#, Some("unknown field `b`")),
        ];
        for (body, want) in cases {
            let got = parse_object::<Thing>(body.as_bytes(), "thing");
            match (want, got) {
                (None, Ok(_)) => {}
                (Some(needle), Err(e)) => {
                    assert!(e.to_string().contains(needle), "{body:?}: {e}")
                }
                (want, got) => panic!("{body:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }
}
