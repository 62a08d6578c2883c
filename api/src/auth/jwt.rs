//! Bearer JWTs: the claims Aetheris reads, verification of compact JWS (HS256 and EdDSA
//! only, each against keys of its own type), and issuing tokens. Every malformed input is
//! an [`AuthError`], never a panic; messages never echo the token.

use super::keys::{key_id_ed25519, key_id_hs256, AuthConfig, MIN_HS256_SECRET_LEN};
use super::rbac::{Principal, Role};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

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
}
