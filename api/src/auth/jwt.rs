//! Bearer JWTs: the claims Aetheris reads, verification of compact JWS (HS256 and EdDSA
//! only, each against keys of its own type), and issuing tokens. Every malformed input is
//! an [`AuthError`], never a panic; messages never echo the token. The cryptography is
//! ring's: HMAC-SHA256 compared in constant time, Ed25519 (RFC 8032, deterministic, so a
//! key and claims always give the same token) with small-order keys never used.

use super::keys::{
    check_ed25519_public_key, ed25519_key_pair, key_id_ed25519, key_id_hs256, public_key_bytes,
    AuthConfig, MIN_HS256_SECRET_LEN,
};
use super::rbac::{Principal, Role};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt;

/// Longest token looked at; anything longer is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

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
    // `hmac::verify` compares the tags in constant time.
    let ok = candidates
        .iter()
        .any(|secret| hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), input, sig).is_ok());
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
    // Keys `validate` would refuse are never used: ring alone would accept forged
    // signatures under a small-order key.
    let usable: Vec<&[u8; 32]> = config
        .ed25519_public_keys
        .iter()
        .filter(|k| check_ed25519_public_key(k).is_ok())
        .collect();
    if usable.is_empty() {
        return Err(AuthError::AlgNotConfigured(Alg::EdDsa.name()));
    }
    if sig.len() != 64 {
        return Err(AuthError::Malformed(format!(
            "an EdDSA signature is 64 bytes, this one is {}",
            sig.len()
        )));
    }
    let named: Vec<&[u8; 32]> = kid
        .map(|k| {
            usable
                .iter()
                .copied()
                .filter(|raw| key_id_ed25519(raw) == k)
                .collect()
        })
        .unwrap_or_default();
    let candidates = if named.is_empty() { usable } else { named };
    // ring refuses non-canonical S (S ≥ L) and any R that is not the canonical encoding
    // of the point it recomputes.
    if candidates.iter().any(|k| {
        UnparsedPublicKey::new(&ED25519, k.as_slice())
            .verify(input, sig)
            .is_ok()
    }) {
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
    let Some(pair) = ed25519_key_pair(&signing_key_bytes) else {
        // Unreachable (ring refuses only seeds that are not 32 bytes); a token without a
        // signature never verifies.
        let header = json!({"alg": "EdDSA", "typ": "JWT"});
        return format!("{}.", signing_input(&header, claims));
    };
    let public = public_key_bytes(&pair);
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key_id_ed25519(&public)});
    let input = signing_input(&header, claims);
    let sig = pair.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{decode_ed25519_public_key, ed25519_public_key, KeyError};
    use crate::auth::rbac::Role;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const SEED: [u8; 32] = [7; 32];

    /// Every optional claim set, so every field of the payload is pinned.
    fn full_claims() -> Claims {
        let mut c = Claims::new("alice", "acme", &[Role::Operator, Role::Admin], NOW, 3600);
        c.nbf = Some(NOW - 10);
        c.aud = Some(Audience::Many(vec!["aetheris".into(), "other".into()]));
        c
    }

    fn config(hs256_secrets: Vec<Vec<u8>>, ed25519_public_keys: Vec<[u8; 32]>) -> AuthConfig {
        AuthConfig {
            hs256_secrets,
            ed25519_public_keys,
            ..AuthConfig::default()
        }
    }

    /// Both tokens were produced by the previous implementation (hmac + ed25519-dalek)
    /// from these keys and claims: tokens already handed out keep verifying, and the same
    /// key and claims still sign to the same bytes (HMAC and RFC 8032 Ed25519 are
    /// deterministic).
    #[test]
    fn tokens_are_byte_for_byte_those_of_the_previous_implementation() {
        const HS256: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImQzMTQ5NTQxZWVjZTdhOGIiLCJ0eXAiOiJKV1QifQ.\
            eyJhdWQiOlsiYWV0aGVyaXMiLCJvdGhlciJdLCJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwibmJmIjoxNjk5OTk5OTkwLCJyb2xlcyI6WyJvcGVyYXRvciIsImFkbWluIl0sInN1YiI6ImFsaWNlIiwidGVuYW50IjoiYWNtZSJ9.\
            80B1SqOZcogY1szAJLxSj166SnHN4cnUuatFHzKd_Ys";
        const EDDSA: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6IjdiN2Q5NDc5M2ZmMGFlM2QiLCJ0eXAiOiJKV1QifQ.\
            eyJhdWQiOlsiYWV0aGVyaXMiLCJvdGhlciJdLCJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwibmJmIjoxNjk5OTk5OTkwLCJyb2xlcyI6WyJvcGVyYXRvciIsImFkbWluIl0sInN1YiI6ImFsaWNlIiwidGVuYW50IjoiYWNtZSJ9.\
            ddaicz3E9O_KfqF7jPj9Euq3bPoEhjXWvS-pBwHHvwtMvwmZYFKpX8DMQbaNzxGyxOMok282ceFmUUk6gGP-Aw";
        assert_eq!(issue_hs256(SECRET, &full_claims()), HS256);
        assert_eq!(issue_ed25519(SEED, &full_claims()), EDDSA);
        assert_eq!(
            hex::encode(ed25519_public_key(&SEED)),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        assert_eq!(key_id_hs256(SECRET), "d3149541eece7a8b");
        assert_eq!(
            key_id_ed25519(&ed25519_public_key(&SEED)),
            "7b7d94793ff0ae3d"
        );
        let cfg = config(vec![SECRET.to_vec()], vec![ed25519_public_key(&SEED)]);
        assert_eq!(verify(&cfg, HS256, NOW), Ok(full_claims()));
        assert_eq!(verify(&cfg, EDDSA, NOW), Ok(full_claims()));
    }

    /// `R = identity, S = 0` (64 bytes: 0x01, then zeros): under the identity key ring's
    /// cofactorless check accepts it for any message.
    fn forged_eddsa_token(kid: Option<String>) -> String {
        let mut header = json!({"alg": "EdDSA"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let mut sig = [0u8; 64];
        sig[0] = 1;
        format!(
            "{}.{}",
            signing_input(&header, &full_claims()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn small_order_public_keys_are_refused_and_never_used() {
        // The identity point (y = 1) and its non-canonical twin with the sign bit set,
        // the point of order 2 (y = -1) and a point of order 4 (y = 0).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut identity_signed = identity;
        identity_signed[31] = 0x80;
        let mut order_2 = [0xffu8; 32];
        order_2[0] = 0xec;
        order_2[31] = 0x7f;
        for key in [identity, identity_signed, order_2, [0u8; 32]] {
            assert_eq!(
                decode_ed25519_public_key(&hex::encode(key)),
                Err(KeyError::SmallOrderPublicKey),
                "{}",
                hex::encode(key)
            );
            let only = config(vec![], vec![key]);
            let message = only.validate().unwrap_err();
            assert!(message.contains("ed25519_public_keys[0]"), "{message}");
            assert!(message.contains("small order"), "{message}");
        }
        // Configured anyway (the struct is public): the key is never used, so the
        // forgery that ring alone would accept is refused.
        let only = config(vec![], vec![identity]);
        assert_eq!(
            verify(&only, &forged_eddsa_token(None), NOW),
            Err(AuthError::AlgNotConfigured("EdDSA"))
        );
        let beside_a_real_key = config(vec![], vec![identity, ed25519_public_key(&SEED)]);
        for kid in [None, Some(key_id_ed25519(&identity))] {
            assert_eq!(
                verify(&beside_a_real_key, &forged_eddsa_token(kid), NOW),
                Err(AuthError::BadSignature("EdDSA"))
            );
        }
        // A real key still validates beside nothing else.
        assert!(config(vec![], vec![ed25519_public_key(&SEED)])
            .validate()
            .is_ok());
    }

    /// S + L is the same scalar mod L, so a verifier that does not insist on S < L would
    /// accept a second signature for the same message (malleability); ring refuses it.
    #[test]
    fn non_canonical_signature_scalars_are_refused() {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let cfg = config(vec![], vec![ed25519_public_key(&SEED)]);
        let token = issue_ed25519(SEED, &full_claims());
        let (input, sig64) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig64).unwrap();
        let mut carry = 0u16;
        for (s, l) in sig[32..].iter_mut().zip(L) {
            let t = u16::from(*s) + u16::from(l) + carry;
            *s = t as u8;
            carry = t >> 8;
        }
        assert_eq!(carry, 0);
        let malleated = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_ne!(malleated, token);
        assert!(verify(&cfg, &token, NOW).is_ok());
        assert_eq!(
            verify(&cfg, &malleated, NOW),
            Err(AuthError::BadSignature("EdDSA"))
        );
    }

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        // Never panics, even at the end of the range.
        assert!(!rfc3339(u64::MAX).is_empty());
    }
}
