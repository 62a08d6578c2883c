//! The UI's session and request checks. A session is the bearer token itself, kept in an
//! HttpOnly, SameSite=Strict cookie on `/ui` (never readable by scripts, never sent on a
//! cross-site request); every UI request passes it to the gateway's one authorization
//! (`routes::authorize_bearer`), so roles, disabled users, tenant existence and the 404
//! across tenants hold exactly as in the API. There is no server-side session state: a
//! token that expires or is revoked ends the session at once, on every gateway.
//!
//! Forms that change something carry a CSRF token derived from the session token
//! (HMAC-SHA256 keyed by the token's digest: unforgeable without the HttpOnly cookie, the
//! same on every gateway and across restarts), and their handlers also refuse requests
//! whose `Sec-Fetch-Site` or `Origin` says they came from another site.

use super::error::UiError;
use crate::auth::Principal;
use crate::routes::{authenticate_bearer, authorize_bearer, refusal, Access, AppState};
use actix_web::HttpRequest;
use ring::hmac;

/// The session cookie's name.
pub const COOKIE: &str = "aetheris_ui";
/// Browsers keep cookies up to about 4 KiB: a longer token cannot be a session.
pub const MAX_COOKIE_TOKEN: usize = 3800;

/// Who is looking at a page: the verified caller and what its forms must carry.
pub struct Viewer {
    pub principal: Principal,
    /// The CSRF token of this session, for every form that changes something.
    pub csrf: String,
    /// Whether the gateway checks tokens at all (false: dev without auth, no login).
    pub auth_on: bool,
}

impl Viewer {
    /// The caller of a UI request that needs `access` (the access of the API route whose
    /// data or action the page shows, so a permission is written once). No session: 401
    /// (the login page); without the permission: 403, audited as `denied`.
    pub async fn of(req: &HttpRequest, st: &AppState, access: Access) -> Result<Viewer, UiError> {
        let token = session_token(req);
        let header = token.as_ref().map(|t| format!("Bearer {t}"));
        if st.auth.is_some() && token.is_none() {
            return Err(UiError::NoSession);
        }
        let principal = authorize_bearer(st, header.as_deref(), access, req.path()).await?;
        Ok(Viewer::new(st, principal, token.as_deref()))
    }

    /// The caller of a page any signed-in user may see (no permission).
    pub async fn signed_in(req: &HttpRequest, st: &AppState) -> Result<Viewer, UiError> {
        let token = session_token(req);
        if st.auth.is_some() && token.is_none() {
            return Err(UiError::NoSession);
        }
        let header = token.as_ref().map(|t| format!("Bearer {t}"));
        let principal = authenticate_bearer(st, header.as_deref()).await?;
        Ok(Viewer::new(st, principal, token.as_deref()))
    }

    fn new(st: &AppState, principal: Principal, token: Option<&str>) -> Viewer {
        Viewer {
            csrf: csrf_token(token.unwrap_or("")),
            auth_on: st.auth.is_some(),
            principal,
        }
    }

    /// Whether the caller may use what a route of this access guards: the router's rule.
    pub fn may(&self, access: Access) -> bool {
        refusal(&self.principal, access).is_none()
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, given: &str) -> Result<(), UiError> {
        if same_secret(given, &self.csrf) {
            Ok(())
        } else {
            Err(UiError::Csrf)
        }
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session token from the `Cookie` header(s), if any.
pub fn session_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session token: hex HMAC-SHA256 of a fixed label, keyed by the
/// SHA-256 of the session token.
pub fn csrf_token(session: &str) -> String {
    let key_bytes = ring::digest::digest(&ring::digest::SHA256, session.as_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes.as_ref());
    hex::encode(hmac::sign(&key, b"aetheris-ui-csrf-v1").as_ref())
}

/// Refuses a state-changing request that a browser says came from another site
/// (`Sec-Fetch-Site: cross-site` or `same-site`), or whose `Origin` is not this host.
/// Requests without either header (old browsers, scripts) rely on the CSRF token and the
/// SameSite=Strict cookie.
pub fn check_same_origin(req: &HttpRequest) -> Result<(), UiError> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(UiError::CrossSite);
        }
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or_default();
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o == host);
        if !same {
            return Err(UiError::CrossSite);
        }
    }
    Ok(())
}

/// Whether the request reached us over https (directly, or as a proxy says in
/// `Forwarded`/`X-Forwarded-Proto`): the session cookie is then marked `Secure`.
fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// The `Set-Cookie` value that starts a session with `token`.
pub fn start_cookie(req: &HttpRequest, token: &str) -> String {
    let secure = if is_https(req) { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that ends the session.
pub fn end_cookie(req: &HttpRequest) -> String {
    let secure = if is_https(req) { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// Whether `token` may be put into a cookie as it is: a compact JWS is base64url and dots.
pub fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_COOKIE_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn csrf_tokens_are_per_session_and_stable() {
        assert_eq!(csrf_token("a.b.c"), csrf_token("a.b.c"));
        assert_ne!(csrf_token("a.b.c"), csrf_token("a.b.d"));
        assert_eq!(csrf_token("x").len(), 64);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let req = TestRequest::default()
            .insert_header(("cookie", "a=1; aetheris_ui=tok.en.x; b=2"))
            .to_http_request();
        assert_eq!(session_token(&req).as_deref(), Some("tok.en.x"));
        let req = TestRequest::default()
            .insert_header(("cookie", "aetheris_ui="))
            .to_http_request();
        assert_eq!(session_token(&req), None);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let ok = |h: &[(&str, &str)]| {
            let mut r = TestRequest::default().insert_header(("host", "127.0.0.1:7420"));
            for (k, v) in h {
                r = r.insert_header((*k, *v));
            }
            check_same_origin(&r.to_http_request()).is_ok()
        };
        assert!(ok(&[]));
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("origin", "http://127.0.0.1:7420")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[("origin", "http://evil.example")]));
        assert!(!ok(&[("origin", "null")]));
    }

    #[test]
    fn only_jws_characters_go_into_the_cookie() {
        assert!(cookie_safe("eyJ.eyJ.sig-_"));
        assert!(!cookie_safe("a;b"));
        assert!(!cookie_safe("a b"));
        assert!(!cookie_safe(""));
        assert!(!cookie_safe(&"a".repeat(MAX_COOKIE_TOKEN + 1)));
    }
}
