//! Authentication and RBAC for the gateway: verifying and issuing bearer JWTs (compact JWS,
//! HS256 and EdDSA/Ed25519 only, written by hand on `hmac` + `sha2` and `ed25519-dalek`),
//! turning a verified token into a [`Principal`] (subject, tenant, roles), the single
//! role → permission table, and the route → permission table as data. The tables are
//! rendered into `docs/auth.md` by [`render_role_table`] and [`render_route_table`]; a test
//! fails when the document is out of date.
//!
//! Invariant kept here (G6, G8): a [`Principal`] exists only for a token whose signature
//! verifies against a configured key *of the algorithm's own key type* (an HS256 token is
//! only ever checked against HS256 secrets, an EdDSA token only against Ed25519 public keys;
//! `alg: none` and every other algorithm are refused), that is within its validity window
//! (`exp` required, `nbf` if present, with a small leeway) and, when an audience is
//! configured, addressed to it, and that names a non-empty subject and tenant. Every other
//! input — missing or non-Bearer header, malformed token, bad base64url or JSON — is an
//! [`AuthError`] (401 problem+json) and never a panic. Unknown role names grant nothing.
//!
//! Nothing here touches the store or the routes: wiring (extracting the header, checking
//! [`route_access`], scoping queries by [`Principal::tenant`]) is the router's job.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

type HmacSha256 = Hmac<Sha256>;

/// Default clock-skew allowance for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 30;
/// Shortest HS256 secret used (RFC 7518 §3.2: at least the hash output size). Shorter
/// secrets are reported by [`AuthConfig::validate`] and never used to verify.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Longest token looked at; anything longer is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Which keys verify tokens. Several keys of each kind may be configured so keys can be
/// rotated: a token verifies if any key of its algorithm's type verifies it (a `kid` header
/// that names one of them narrows the search to that key).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Shared secrets for HS256 (each at least [`MIN_HS256_SECRET_LEN`] bytes).
    pub hs256_secrets: Vec<Vec<u8>>,
    /// Ed25519 public keys for EdDSA.
    pub ed25519_public_keys: Vec<[u8; 32]>,
    /// If set, the token's `aud` (a string or an array of strings) must contain it.
    pub audience: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secrets: Vec::new(),
            ed25519_public_keys: Vec::new(),
            audience: None,
            leeway_s: DEFAULT_LEEWAY_S,
        }
    }
}

impl fmt::Debug for AuthConfig {
    /// Never prints secrets: only their key ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secrets",
                &self
                    .hs256_secrets
                    .iter()
                    .map(|s| key_id_hs256(s))
                    .collect::<Vec<_>>(),
            )
            .field(
                "ed25519_public_keys",
                &self
                    .ed25519_public_keys
                    .iter()
                    .map(key_id_ed25519)
                    .collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

impl AuthConfig {
    /// Checks the configuration at start-up: at least one key, every HS256 secret long
    /// enough, every Ed25519 public key a valid curve point. The message names the key by
    /// its position (`hs256_secrets[1]`).
    pub fn validate(&self) -> Result<(), String> {
        if self.hs256_secrets.is_empty() && self.ed25519_public_keys.is_empty() {
            return Err("no HS256 secret and no Ed25519 public key is configured".into());
        }
        for (i, s) in self.hs256_secrets.iter().enumerate() {
            if s.len() < MIN_HS256_SECRET_LEN {
                return Err(format!(
                    "hs256_secrets[{i}] is {} bytes; HS256 secrets must be at least \
                     {MIN_HS256_SECRET_LEN} bytes",
                    s.len()
                ));
            }
        }
        for (i, k) in self.ed25519_public_keys.iter().enumerate() {
            if VerifyingKey::from_bytes(k).is_err() {
                return Err(format!(
                    "ed25519_public_keys[{i}] is not a valid Ed25519 public key"
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Claims and errors
// ---------------------------------------------------------------------------------------

/// The `aud` claim: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Audience::One(a) => write!(f, "{a:?}"),
            Audience::Many(v) => write!(f, "{v:?}"),
        }
    }
}

/// The claims Aetheris reads. Times are Unix seconds (JWT NumericDate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a user or service name, recorded e.g. as the author of a confirmation.
    pub sub: String,
    /// The tenant every request of this token acts for.
    pub tenant: String,
    /// Role names; unknown ones are ignored.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry (required).
    pub exp: u64,
    /// Not before (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience (optional; checked when [`AuthConfig::audience`] is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issued at (optional, informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Claims with the required fields; `iat` = `now`, `exp` = `now + ttl_s`.
    pub fn new(
        sub: impl Into<String>,
        tenant: impl Into<String>,
        roles: &[Role],
        now_unix: u64,
        ttl_s: u64,
    ) -> Self {
        Claims {
            sub: sub.into(),
            tenant: tenant.into(),
            roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
            exp: now_unix.saturating_add(ttl_s),
            nbf: None,
            aud: None,
            iat: Some(now_unix),
        }
    }

    /// The payload JSON, built without any fallible serialization.
    fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("sub".into(), json!(self.sub));
        m.insert("tenant".into(), json!(self.tenant));
        m.insert("roles".into(), json!(self.roles));
        m.insert("exp".into(), json!(self.exp));
        if let Some(nbf) = self.nbf {
            m.insert("nbf".into(), json!(nbf));
        }
        if let Some(aud) = &self.aud {
            let v = match aud {
                Audience::One(a) => json!(a),
                Audience::Many(v) => json!(v),
            };
            m.insert("aud".into(), v);
        }
        if let Some(iat) = self.iat {
            m.insert("iat".into(), json!(iat));
        }
        Value::Object(m).to_string()
    }
}

/// Why a request is not authenticated. Every case answers 401 problem+json with a
/// `WWW-Authenticate: Bearer` header; the message never echoes the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header; send `Authorization: Bearer <token>`")]
    MissingHeader,
    #[error("Authorization scheme {0:?} is not supported; send `Authorization: Bearer <token>`")]
    UnsupportedScheme(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("alg none is not accepted: tokens must be signed")]
    AlgNone,
    #[error("alg {0:?} is not accepted; only HS256 and EdDSA are")]
    UnsupportedAlg(String),
    #[error("{0} tokens are not accepted: no {0} key is configured")]
    AlgNotConfigured(&'static str),
    #[error("signature does not verify against any configured {0} key")]
    BadSignature(&'static str),
    #[error("token expired at {} (now {}, leeway {leeway_s} s)", rfc3339(*.exp), rfc3339(*.now))]
    Expired { exp: u64, now: u64, leeway_s: u64 },
    #[error("token is not valid before {} (now {}, leeway {leeway_s} s)", rfc3339(*.nbf), rfc3339(*.now))]
    NotYetValid { nbf: u64, now: u64, leeway_s: u64 },
    #[error("token audience {got} does not include {expected:?}")]
    WrongAudience { expected: String, got: String },
    #[error("claim `{0}` is missing")]
    MissingClaim(&'static str),
    #[error("claim `{claim}` {reason}")]
    InvalidClaim { claim: &'static str, reason: String },
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> HttpResponse {
        // RFC 6750 §3: no error code when no credentials were sent at all.
        let challenge = match self {
            AuthError::MissingHeader | AuthError::UnsupportedScheme(_) => {
                "Bearer realm=\"aetheris\"".to_string()
            }
            other => format!(
                "Bearer realm=\"aetheris\", error=\"invalid_token\", error_description=\"{}\"",
                other.to_string().replace(['"', '\\'], "'")
            ),
        };
        let body = json!({
            "type": "https://aetheris.dev/problems/unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": self.to_string(),
        });
        HttpResponse::build(StatusCode::UNAUTHORIZED)
            .content_type("application/problem+json")
            .insert_header((header::WWW_AUTHENTICATE, challenge))
            .body(body.to_string())
    }
}

/// An authenticated principal lacks the permission a route needs: 403 problem+json.
/// (Cross-tenant access is not this: it answers 404, G6.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission {permission} is required; the token's roles do not grant it")]
pub struct PermissionDenied {
    pub permission: Permission,
}

impl ResponseError for PermissionDenied {
    fn status_code(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }

    fn error_response(&self) -> HttpResponse {
        let body = json!({
            "type": "https://aetheris.dev/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": self.to_string(),
        });
        HttpResponse::build(StatusCode::FORBIDDEN)
            .content_type("application/problem+json")
            .body(body.to_string())
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------

/// What a request may do. Written `job:create` etc. in docs and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    JobCreate,
    JobRead,
    JobSignal,
    JobCancel,
    JobConfirm,
    EvidenceExport,
    TenantAdmin,
    AuditRead,
    SystemRead,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::JobCreate,
        Permission::JobRead,
        Permission::JobSignal,
        Permission::JobCancel,
        Permission::JobConfirm,
        Permission::EvidenceExport,
        Permission::TenantAdmin,
        Permission::AuditRead,
        Permission::SystemRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::JobCreate => "job:create",
            Permission::JobRead => "job:read",
            Permission::JobSignal => "job:signal",
            Permission::JobCancel => "job:cancel",
            Permission::JobConfirm => "job:confirm",
            Permission::EvidenceExport => "evidence:export",
            Permission::TenantAdmin => "tenant:admin",
            Permission::AuditRead => "audit:read",
            Permission::SystemRead => "system:read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown permission {s:?}"))
    }
}

/// A named set of permissions, granted by the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Viewer,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Submitter,
        Role::Viewer,
        Role::Auditor,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// The role named exactly `s` (lower case), if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn permissions(self) -> &'static [Permission] {
        permissions(self)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}"))
    }
}

/// The single role → permission table.
pub fn permissions(role: Role) -> &'static [Permission] {
    use Permission::*;
    match role {
        Role::Admin => &Permission::ALL,
        Role::Operator => &[
            JobCreate, JobRead, JobSignal, JobCancel, JobConfirm, SystemRead,
        ],
        Role::Submitter => &[JobCreate, JobRead, JobSignal],
        Role::Viewer => &[JobRead],
        Role::Auditor => &[JobRead, AuditRead, EvidenceExport],
    }
}

/// Who is calling: the verified subject, the tenant it acts for and its known roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub tenant: String,
    /// Known roles from the token, deduplicated, in token order.
    pub roles: Vec<Role>,
    /// The roles the deployment grants this user (its row in the users table), if it has
    /// one: a permission needs both a token role and a granted role that include it.
    pub granted: Option<Vec<Role>>,
}

impl Principal {
    /// Builds the principal of verified claims; unknown role names are dropped.
    pub fn from_claims(claims: &Claims) -> Principal {
        let mut roles: Vec<Role> = Vec::new();
        for r in claims.roles.iter().filter_map(|s| Role::parse(s)) {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        Principal {
            sub: claims.sub.clone(),
            tenant: claims.tenant.clone(),
            roles,
            granted: None,
        }
    }

    pub fn can(&self, permission: Permission) -> bool {
        let grants = |roles: &[Role]| roles.iter().any(|r| permissions(*r).contains(&permission));
        grants(&self.roles) && self.granted.as_deref().is_none_or(grants)
    }

    /// `Ok` if [`Principal::can`], else a 403 [`PermissionDenied`].
    pub fn require(&self, permission: Permission) -> Result<(), PermissionDenied> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(PermissionDenied { permission })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

/// Routes that need no token (method, path).
pub const PUBLIC_ROUTES: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/readyz")];

/// Every authenticated route: (method, path pattern, permission). `{name}` matches one
/// non-empty path segment.
pub const ROUTE_PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("POST", "/v1/jobs", Permission::JobCreate),
    ("GET", "/v1/jobs", Permission::JobRead),
    ("GET", "/v1/jobs/{id}", Permission::JobRead),
    ("GET", "/v1/jobs/{id}/events", Permission::JobRead),
    ("GET", "/v1/jobs/{id}/ledger", Permission::JobRead),
    ("POST", "/v1/jobs/{id}/cancel", Permission::JobCancel),
    (
        "POST",
        "/v1/jobs/{id}/signals/{name}",
        Permission::JobSignal,
    ),
    (
        "POST",
        "/v1/jobs/{id}/steps/{step}/confirm",
        Permission::JobConfirm,
    ),
    ("GET", "/v1/jobs/{id}/evidence", Permission::EvidenceExport),
    ("GET", "/v1/audit", Permission::AuditRead),
    ("GET", "/v1/users", Permission::TenantAdmin),
    ("PUT", "/v1/users/{id}", Permission::TenantAdmin),
    ("GET", "/v1/tenants", Permission::TenantAdmin),
    ("POST", "/v1/tenants", Permission::TenantAdmin),
    ("PUT", "/v1/tenants/{id}/limits", Permission::TenantAdmin),
    ("GET", "/metrics", Permission::SystemRead),
];

/// What a request needs before it reaches a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAccess {
    /// No token needed.
    Public,
    /// A valid token whose roles grant this permission.
    Requires(Permission),
    /// Not in either table: require a valid token anyway, then let the router answer
    /// (usually 404). Never treat an unknown route as public.
    Unknown,
}

/// Looks up `method` + `path` (no query string) in [`PUBLIC_ROUTES`] and
/// [`ROUTE_PERMISSIONS`].
pub fn route_access(method: &str, path: &str) -> RouteAccess {
    if PUBLIC_ROUTES
        .iter()
        .any(|(m, p)| m.eq_ignore_ascii_case(method) && *p == path)
    {
        return RouteAccess::Public;
    }
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && path_matches(p, path))
        .map_or(RouteAccess::Unknown, |(_, _, perm)| {
            RouteAccess::Requires(*perm)
        })
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return true,
            (Some(p), Some(g)) => {
                let wildcard = p.starts_with('{') && p.ends_with('}');
                if !(wildcard && !g.is_empty() || p == g) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    EdDsa,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

fn b64url(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed(format!("{what} is not valid unpadded base64url")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, AuthError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AuthError::Malformed(format!("{what} is not a JSON object"))),
        Err(_) => Err(AuthError::Malformed(format!("{what} is not valid JSON"))),
    }
}

/// At most `n` characters of attacker-supplied text, for messages.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Verifies a compact JWS and returns its claims. See the module invariant for what is
/// checked; `now_unix` is the current time in Unix seconds.
pub fn verify(config: &AuthConfig, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed(format!(
            "token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(AuthError::Malformed(format!(
            "a token has three dot-separated parts (header.payload.signature), this one has {}",
            parts.len()
        )));
    }
    let (h64, p64, s64) = (parts[0], parts[1], parts[2]);

    // Header: decides the algorithm, which decides the key type. Nothing else in it
    // (jwk, jku, x5u, ...) is trusted.
    let head = json_object(&b64url(h64, "header")?, "header")?;
    let alg = match head.get("alg") {
        None => return Err(AuthError::Malformed("header has no `alg`".into())),
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
        Some(Value::String(a)) if a == "HS256" => Alg::Hs256,
        Some(Value::String(a)) if a == "EdDSA" || a == "Ed25519" => Alg::EdDsa,
        Some(Value::String(a)) => return Err(AuthError::UnsupportedAlg(clip(a, 32))),
        Some(_) => return Err(AuthError::Malformed("header `alg` is not a string".into())),
    };
    if head.contains_key("crit") {
        return Err(AuthError::Malformed(
            "header parameter `crit` is not supported".into(),
        ));
    }
    let kid = match head.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(AuthError::Malformed("header `kid` is not a string".into())),
    };

    let payload = b64url(p64, "payload")?;
    let sig = b64url(s64, "signature")?;
    let signing_input = &token.as_bytes()[..h64.len() + 1 + p64.len()];

    match alg {
        Alg::Hs256 => verify_hs256(config, kid, signing_input, &sig)?,
        Alg::EdDsa => verify_ed25519(config, kid, signing_input, &sig)?,
    }

    let claims = parse_claims(&json_object(&payload, "payload")?)?;
    check_times(&claims, now_unix, config.leeway_s)?;
    if let Some(expected) = &config.audience {
        match &claims.aud {
            None => {
                return Err(AuthError::WrongAudience {
                    expected: expected.clone(),
                    got: "(none)".into(),
                })
            }
            Some(aud) if !aud.contains(expected) => {
                return Err(AuthError::WrongAudience {
                    expected: expected.clone(),
                    got: clip(&aud.to_string(), 200),
                })
            }
            Some(_) => {}
        }
    }
    Ok(claims)
}

fn verify_hs256(
    config: &AuthConfig,
    kid: Option<&str>,
    input: &[u8],
    sig: &[u8],
) -> Result<(), AuthError> {
    let usable: Vec<&[u8]> = config
        .hs256_secrets
        .iter()
        .map(Vec::as_slice)
        .filter(|s| s.len() >= MIN_HS256_SECRET_LEN)
        .collect();
    if usable.is_empty() {
        return Err(AuthError::AlgNotConfigured(Alg::Hs256.name()));
    }
    if sig.len() != 32 {
        return Err(AuthError::Malformed(format!(
            "an HS256 signature is 32 bytes, this one is {}",
            sig.len()
        )));
    }
    let named: Vec<&[u8]> = kid
        .map(|k| {
            usable
                .iter()
                .copied()
                .filter(|s| key_id_hs256(s) == k)
                .collect()
        })
        .unwrap_or_default();
    let candidates = if named.is_empty() { usable } else { named };
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; `verify_slice`
    // compares in constant time.
    let ok = candidates.iter().any(|secret| {
        HmacSha256::new_from_slice(secret)
            .map(|mut mac| {
                mac.update(input);
                mac.verify_slice(sig).is_ok()
            })
            .unwrap_or(false)
    });
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadSignature(Alg::Hs256.name()))
    }
}

fn verify_ed25519(
    config: &AuthConfig,
    kid: Option<&str>,
    input: &[u8],
    sig: &[u8],
) -> Result<(), AuthError> {
    let usable: Vec<(&[u8; 32], VerifyingKey)> = config
        .ed25519_public_keys
        .iter()
        .filter_map(|k| VerifyingKey::from_bytes(k).ok().map(|vk| (k, vk)))
        .collect();
    if usable.is_empty() {
        return Err(AuthError::AlgNotConfigured(Alg::EdDsa.name()));
    }
    let sig: &[u8; 64] = sig.try_into().map_err(|_| {
        AuthError::Malformed(format!(
            "an EdDSA signature is 64 bytes, this one is {}",
            sig.len()
        ))
    })?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    let named: Vec<&VerifyingKey> = kid
        .map(|k| {
            usable
                .iter()
                .filter(|(raw, _)| key_id_ed25519(raw) == k)
                .map(|(_, vk)| vk)
                .collect()
        })
        .unwrap_or_default();
    let candidates: Vec<&VerifyingKey> = if named.is_empty() {
        usable.iter().map(|(_, vk)| vk).collect()
    } else {
        named
    };
    // verify_strict refuses small-order keys and non-canonical signatures.
    if candidates
        .iter()
        .any(|vk| vk.verify_strict(input, &sig).is_ok())
    {
        Ok(())
    } else {
        Err(AuthError::BadSignature(Alg::EdDsa.name()))
    }
}

fn numeric_date(m: &Map<String, Value>, claim: &'static str) -> Result<Option<u64>, AuthError> {
    match m.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    // NumericDate may have a fraction; `as` floors and saturates.
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                    _ => Err(AuthError::InvalidClaim {
                        claim,
                        reason: "must be a non-negative number of seconds".into(),
                    }),
                }
            }
        }
        Some(_) => Err(AuthError::InvalidClaim {
            claim,
            reason: "must be a number of seconds since 1970".into(),
        }),
    }
}

fn required_string(m: &Map<String, Value>, claim: &'static str) -> Result<String, AuthError> {
    match m.get(claim) {
        None | Some(Value::Null) => Err(AuthError::MissingClaim(claim)),
        Some(Value::String(s)) if s.is_empty() => Err(AuthError::InvalidClaim {
            claim,
            reason: "must not be empty".into(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(AuthError::InvalidClaim {
            claim,
            reason: "must be a string".into(),
        }),
    }
}

fn parse_claims(m: &Map<String, Value>) -> Result<Claims, AuthError> {
    let sub = required_string(m, "sub")?;
    let tenant = required_string(m, "tenant")?;
    let exp = numeric_date(m, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
    let nbf = numeric_date(m, "nbf")?;
    let iat = numeric_date(m, "iat")?;
    let roles = match m.get("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(AuthError::InvalidClaim {
                    claim: "roles",
                    reason: "must be an array of strings".into(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(AuthError::InvalidClaim {
                claim: "roles",
                reason: "must be an array of strings".into(),
            })
        }
    };
    let aud = match m.get("aud") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Audience::One(s.clone())),
        Some(Value::Array(items)) => Some(Audience::Many(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(AuthError::InvalidClaim {
                        claim: "aud",
                        reason: "must be a string or an array of strings".into(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(_) => {
            return Err(AuthError::InvalidClaim {
                claim: "aud",
                reason: "must be a string or an array of strings".into(),
            })
        }
    };
    Ok(Claims {
        sub,
        tenant,
        roles,
        exp,
        nbf,
        aud,
        iat,
    })
}

fn check_times(claims: &Claims, now: u64, leeway_s: u64) -> Result<(), AuthError> {
    // RFC 7519 §4.1.4: valid only while now < exp (plus leeway).
    if now >= claims.exp.saturating_add(leeway_s) {
        return Err(AuthError::Expired {
            exp: claims.exp,
            now,
            leeway_s,
        });
    }
    if let Some(nbf) = claims.nbf {
        if now.saturating_add(leeway_s) < nbf {
            return Err(AuthError::NotYetValid { nbf, now, leeway_s });
        }
    }
    Ok(())
}

/// Reads `Authorization: Bearer <token>`, verifies the token and returns who is calling.
pub fn authenticate(
    config: &AuthConfig,
    authorization_header: Option<&str>,
    now_unix: u64,
) -> Result<Principal, AuthError> {
    let raw = authorization_header.ok_or(AuthError::MissingHeader)?.trim();
    if raw.is_empty() {
        return Err(AuthError::MissingHeader);
    }
    let (scheme, rest) = raw.split_once(' ').unwrap_or((raw, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme(clip(scheme, 32)));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed(
            "the Bearer scheme carries no token".into(),
        ));
    }
    let claims = verify(config, token, now_unix)?;
    Ok(Principal::from_claims(&claims))
}

// ---------------------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------------------

fn signing_input(header: &Value, claims: &Claims) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_json())
    )
}

/// Signs `claims` with an HS256 secret (header `kid` = [`key_id_hs256`]). Secrets shorter
/// than [`MIN_HS256_SECRET_LEN`] produce tokens that [`verify`] refuses.
pub fn issue_hs256(secret: &[u8], claims: &Claims) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": key_id_hs256(secret)});
    let input = signing_input(&header, claims);
    let sig = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Signs `claims` with an Ed25519 signing key (its 32-byte seed); header `alg` = `EdDSA`,
/// `kid` = [`key_id_ed25519`] of its public key.
pub fn issue_ed25519(signing_key_bytes: [u8; 32], claims: &Claims) -> String {
    let sk = SigningKey::from_bytes(&signing_key_bytes);
    let public = sk.verifying_key().to_bytes();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key_id_ed25519(&public)});
    let input = signing_input(&header, claims);
    let sig = sk.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        // HMAC hashes over-long keys and pads short ones: no key length is invalid, so
        // this arm is unreachable; answering zeros would only yield a token that never
        // verifies.
        Err(_) => [0; 32],
    }
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// 32 random bytes from the thread-local CSPRNG (ChaCha, seeded from the OS).
pub fn generate_hs256_secret() -> Vec<u8> {
    let mut b = vec![0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// A new random Ed25519 signing key (its 32-byte seed).
pub fn generate_ed25519_signing_key() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// The public key of an Ed25519 signing key (seed).
pub fn ed25519_public_key(signing_key_bytes: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(signing_key_bytes)
        .verifying_key()
        .to_bytes()
}

fn short_digest(domain: &[u8], key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

/// The `kid` of an HS256 secret: 16 hex characters of a domain-separated SHA-256 of it
/// (reveals nothing usable about the secret).
pub fn key_id_hs256(secret: &[u8]) -> String {
    short_digest(b"aetheris:hs256:", secret)
}

/// The `kid` of an Ed25519 public key: 16 hex characters of a SHA-256 of it.
pub fn key_id_ed25519(public_key: &[u8; 32]) -> String {
    short_digest(b"aetheris:ed25519:", public_key)
}

/// Why a key string from a config file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is neither hex nor base64 (prefix it with `hex:` or `base64:` to say which)")]
    Encoding,
    #[error("key is {got} bytes; expected {expected}")]
    Length { expected: &'static str, got: usize },
    #[error("key is not a valid Ed25519 public key")]
    InvalidPublicKey,
}

/// Encodes key bytes for a config file as `hex:<lower-case hex>`.
pub fn encode_key_hex(bytes: &[u8]) -> String {
    format!("hex:{}", hex::encode(bytes))
}

/// Encodes key bytes for a config file as `base64:<standard padded base64>`.
pub fn encode_key_base64(bytes: &[u8]) -> String {
    format!("base64:{}", STANDARD.encode(bytes))
}

/// Decodes key bytes from a config string: `hex:…` or `base64:…` (standard or URL-safe
/// alphabet, padded or not); without a prefix, an even-length all-hex string is hex and
/// anything else base64. Surrounding whitespace is ignored.
pub fn decode_key(s: &str) -> Result<Vec<u8>, KeyError> {
    let s = s.trim();
    let from_hex = |t: &str| hex::decode(t).map_err(|_| KeyError::Encoding);
    let from_b64 = |t: &str| {
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or(KeyError::Encoding)
    };
    let bytes = if let Some(t) = s.strip_prefix("hex:") {
        from_hex(t)?
    } else if let Some(t) = s.strip_prefix("base64:") {
        from_b64(t)?
    } else if !s.is_empty() && s.len() & 1 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        from_hex(s)?
    } else {
        from_b64(s)?
    };
    if bytes.is_empty() {
        return Err(KeyError::Length {
            expected: "at least 1",
            got: 0,
        });
    }
    Ok(bytes)
}

/// An HS256 secret from a config string (at least [`MIN_HS256_SECRET_LEN`] bytes).
pub fn decode_hs256_secret(s: &str) -> Result<Vec<u8>, KeyError> {
    let b = decode_key(s)?;
    if b.len() < MIN_HS256_SECRET_LEN {
        return Err(KeyError::Length {
            expected: "at least 32",
            got: b.len(),
        });
    }
    Ok(b)
}

fn decode_32(s: &str) -> Result<[u8; 32], KeyError> {
    let b = decode_key(s)?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| KeyError::Length {
        expected: "32",
        got: b.len(),
    })
}

/// An Ed25519 public key from a config string (32 bytes, a valid curve point).
pub fn decode_ed25519_public_key(s: &str) -> Result<[u8; 32], KeyError> {
    let k = decode_32(s)?;
    VerifyingKey::from_bytes(&k).map_err(|_| KeyError::InvalidPublicKey)?;
    Ok(k)
}

/// An Ed25519 signing key (32-byte seed) from a config string.
pub fn decode_ed25519_signing_key(s: &str) -> Result<[u8; 32], KeyError> {
    decode_32(s)
}

// ---------------------------------------------------------------------------------------
// Documentation tables (docs/auth.md embeds these; a test keeps it in step)
// ---------------------------------------------------------------------------------------

/// The role × permission table as markdown.
pub fn render_role_table() -> String {
    let mut out = String::from("| permission |");
    for r in Role::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|");
    for _ in Role::ALL {
        out.push_str(":-:|");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{p}` |"));
        for r in Role::ALL {
            out.push_str(if permissions(r).contains(&p) {
                " ✓ |"
            } else {
                "   |"
            });
        }
        out.push('\n');
    }
    out
}

/// The route → permission table as markdown (public routes included).
pub fn render_route_table() -> String {
    let mut out = String::from("| method | path | permission |\n|---|---|---|\n");
    for (m, p) in PUBLIC_ROUTES {
        out.push_str(&format!("| {m} | `{p}` | none (no token) |\n"));
    }
    for (m, p, perm) in ROUTE_PERMISSIONS {
        out.push_str(&format!("| {m} | `{p}` | `{perm}` |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        // Never panics, even at the end of the range.
        assert!(!rfc3339(u64::MAX).is_empty());
    }

    #[test]
    fn path_patterns_match_single_segments() {
        assert!(path_matches("/v1/jobs/{id}", "/v1/jobs/abc"));
        assert!(!path_matches("/v1/jobs/{id}", "/v1/jobs/"));
        assert!(!path_matches("/v1/jobs/{id}", "/v1/jobs/a/b"));
        assert!(!path_matches("/v1/jobs", "/v1/jobs/"));
        assert!(path_matches("/metrics", "/metrics"));
    }
}
