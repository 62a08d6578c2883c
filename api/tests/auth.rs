//! Tests of api/src/auth.rs: every way a token can be wrong, key rotation, the role ×
//! permission table (checked against an independent copy) and the route table, and that
//! docs/auth.md embeds the tables the code renders. Keys and `now` are fixed.

use aetheris_api::auth::*;
use aetheris_api::routes::{render_route_table, route_access, RouteAccess, ROUTES};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const NOW: u64 = 1_700_000_000;
const SECRET_A: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const SECRET_B: &[u8; 32] = b"fedcba9876543210fedcba9876543210";
const ED_A: [u8; 32] = [7; 32];
const ED_B: [u8; 32] = [9; 32];

fn claims() -> Claims {
    Claims::new("alice", "acme", &[Role::Operator], NOW - 10, 3600)
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secrets: vec![SECRET_A.to_vec()],
        ..AuthConfig::default()
    }
}

fn ed_config() -> AuthConfig {
    AuthConfig {
        ed25519_public_keys: vec![ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A token with any header and payload JSON, HMAC-signed with `secret`.
fn hs_raw(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
    let sig = hmac(secret, input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// A token with any header and payload JSON, Ed25519-signed with `seed`.
fn ed_raw(header: &Value, payload: &Value, seed: &[u8; 32]) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
    let sig = ed25519_dalek::SigningKey::from_bytes(seed).sign(input.as_bytes());
    format!("{input}.{}", b64(sig.to_bytes()))
}

fn payload() -> Value {
    json!({"sub": "alice", "tenant": "acme", "roles": ["operator"], "exp": NOW + 3600})
}

fn hs_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn err(cfg: &AuthConfig, token: &str) -> AuthError {
    verify(cfg, token, NOW).expect_err("token must be refused")
}

// ---- valid tokens ---------------------------------------------------------------------

#[test]
fn valid_hs256_token_verifies() {
    let c = claims();
    let token = issue_hs256(SECRET_A, &c);
    assert_eq!(verify(&hs_config(), &token, NOW), Ok(c));
    let p = authenticate(&hs_config(), Some(&format!("Bearer {token}")), NOW).unwrap();
    assert_eq!(
        p,
        Principal {
            sub: "alice".into(),
            tenant: "acme".into(),
            roles: vec![Role::Operator],
            granted: None,
        }
    );
    assert!(p.can(Permission::JobCreate));
    assert!(!p.can(Permission::TenantAdmin));
}

#[test]
fn valid_eddsa_token_verifies() {
    let c = claims();
    let token = issue_ed25519(ED_A, &c);
    assert_eq!(verify(&ed_config(), &token, NOW), Ok(c));
    let p = authenticate(&ed_config(), Some(&format!("Bearer {token}")), NOW).unwrap();
    assert_eq!(p.tenant, "acme");
}

#[test]
fn hand_built_tokens_without_kid_verify_and_scheme_is_case_insensitive() {
    let t = hs_raw(&hs_header(), &payload(), SECRET_A);
    assert!(authenticate(&hs_config(), Some(&format!("bearer  {t} ")), NOW).is_ok());
    let t = ed_raw(&json!({"alg": "EdDSA"}), &payload(), &ED_A);
    assert!(authenticate(&ed_config(), Some(&format!("BEARER {t}")), NOW).is_ok());
}

#[test]
fn both_key_types_configured_each_alg_uses_its_own() {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET_A.to_vec()],
        ed25519_public_keys: vec![ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    };
    assert!(verify(&cfg, &issue_hs256(SECRET_A, &claims()), NOW).is_ok());
    assert!(verify(&cfg, &issue_ed25519(ED_A, &claims()), NOW).is_ok());
}

#[test]
fn optional_claims_round_trip() {
    let mut c = claims();
    c.nbf = Some(NOW - 5);
    c.aud = Some(Audience::Many(vec!["x".into(), "aetheris".into()]));
    let token = issue_hs256(SECRET_A, &c);
    let cfg = AuthConfig {
        audience: Some("aetheris".into()),
        ..hs_config()
    };
    assert_eq!(verify(&cfg, &token, NOW), Ok(c));
}

#[test]
fn fractional_numeric_dates_are_accepted() {
    let mut p = payload();
    p["exp"] = json!((NOW + 60) as f64 + 0.5);
    p["iat"] = json!(NOW as f64 - 0.25);
    let claims = verify(&hs_config(), &hs_raw(&hs_header(), &p, SECRET_A), NOW).unwrap();
    assert_eq!(claims.exp, NOW + 60);
    assert_eq!(claims.iat, Some(NOW - 1));
}

// ---- wrong keys and tampering ---------------------------------------------------------

#[test]
fn wrong_hs256_key_is_refused() {
    let token = issue_hs256(SECRET_B, &claims());
    assert_eq!(err(&hs_config(), &token), AuthError::BadSignature("HS256"));
}

#[test]
fn wrong_ed25519_key_is_refused() {
    let token = issue_ed25519(ED_B, &claims());
    assert_eq!(err(&ed_config(), &token), AuthError::BadSignature("EdDSA"));
}

#[test]
fn tampered_payload_is_refused() {
    for (cfg, token) in [
        (hs_config(), issue_hs256(SECRET_A, &claims())),
        (ed_config(), issue_ed25519(ED_A, &claims())),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let mut p = payload();
        p["tenant"] = json!("victim");
        p["roles"] = json!(["admin"]);
        let forged = format!("{}.{}.{}", parts[0], b64(p.to_string()), parts[2]);
        assert!(matches!(err(&cfg, &forged), AuthError::BadSignature(_)));
    }
}

#[test]
fn tampered_header_is_refused() {
    // Switching alg between the two accepted algorithms while keeping the signature.
    let token = issue_hs256(SECRET_A, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        b64(json!({"alg": "HS256", "typ": "JWT", "x": 1}).to_string()),
        parts[1],
        parts[2]
    );
    assert_eq!(err(&hs_config(), &forged), AuthError::BadSignature("HS256"));

    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET_A.to_vec()],
        ed25519_public_keys: vec![ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    };
    let to_ed = format!(
        "{}.{}.{}",
        b64(json!({"alg": "EdDSA"}).to_string()),
        parts[1],
        parts[2]
    );
    assert!(matches!(err(&cfg, &to_ed), AuthError::Malformed(_)));

    let ed = issue_ed25519(ED_A, &claims());
    let ep: Vec<&str> = ed.split('.').collect();
    let to_hs = format!("{}.{}.{}", b64(hs_header().to_string()), ep[1], ep[2]);
    assert!(matches!(err(&cfg, &to_hs), AuthError::Malformed(_)));
}

#[test]
fn tampered_signature_is_refused() {
    let token = issue_hs256(SECRET_A, &claims());
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[0] ^= 1;
    let forged = format!("{head}.{}", b64(raw));
    assert_eq!(err(&hs_config(), &forged), AuthError::BadSignature("HS256"));
}

// ---- alg none, unsupported algs, algorithm confusion -----------------------------------

#[test]
fn alg_none_is_refused_with_and_without_signature() {
    let both = AuthConfig {
        hs256_secrets: vec![SECRET_A.to_vec()],
        ed25519_public_keys: vec![ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    };
    for alg in ["none", "None", "NONE"] {
        let h = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
        let p = b64(payload().to_string());
        // Unsecured JWS: empty signature segment.
        assert_eq!(err(&both, &format!("{h}.{p}.")), AuthError::AlgNone);
        // With a (valid HS256) signature appended anyway.
        let sig = b64(hmac(SECRET_A, format!("{h}.{p}").as_bytes()));
        assert_eq!(err(&both, &format!("{h}.{p}.{sig}")), AuthError::AlgNone);
    }
    // Two segments only: refused as malformed before anything else.
    let h = b64(json!({"alg": "none"}).to_string());
    let p = b64(payload().to_string());
    assert!(matches!(
        err(&both, &format!("{h}.{p}")),
        AuthError::Malformed(_)
    ));
    assert_eq!(
        AuthError::AlgNone.to_string(),
        "alg none is not accepted: tokens must be signed"
    );
}

#[test]
fn other_algs_are_refused() {
    for alg in [
        "HS384", "HS512", "RS256", "ES256", "PS256", "hs256", "eddsa",
    ] {
        let t = hs_raw(&json!({"alg": alg}), &payload(), SECRET_A);
        assert_eq!(
            err(&hs_config(), &t),
            AuthError::UnsupportedAlg(alg.into()),
            "{alg}"
        );
    }
    let t = hs_raw(&json!({"typ": "JWT"}), &payload(), SECRET_A);
    assert!(matches!(err(&hs_config(), &t), AuthError::Malformed(_)));
    let t = hs_raw(&json!({"alg": 256}), &payload(), SECRET_A);
    assert!(matches!(err(&hs_config(), &t), AuthError::Malformed(_)));
}

#[test]
fn hs256_token_is_refused_by_ed25519_only_config() {
    // The classic confusion attack: HMAC-sign with the *public* key as the secret.
    let public = ed25519_public_key(&ED_A);
    let t = hs_raw(&hs_header(), &payload(), &public);
    assert_eq!(err(&ed_config(), &t), AuthError::AlgNotConfigured("HS256"));
    let t = issue_hs256(SECRET_A, &claims());
    assert_eq!(err(&ed_config(), &t), AuthError::AlgNotConfigured("HS256"));
}

#[test]
fn eddsa_token_is_refused_by_hs256_only_config() {
    let t = issue_ed25519(ED_A, &claims());
    assert_eq!(err(&hs_config(), &t), AuthError::AlgNotConfigured("EdDSA"));
}

#[test]
fn embedded_keys_and_crit_are_not_trusted() {
    // A jwk header naming the attacker's key changes nothing.
    let public = ed25519_public_key(&ED_B);
    let h = json!({"alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(public)}});
    assert_eq!(
        err(&ed_config(), &ed_raw(&h, &payload(), &ED_B)),
        AuthError::BadSignature("EdDSA")
    );
    let h = json!({"alg": "HS256", "crit": ["b64"], "b64": false});
    assert!(matches!(
        err(&hs_config(), &hs_raw(&h, &payload(), SECRET_A)),
        AuthError::Malformed(_)
    ));
}

#[test]
fn short_hs256_secrets_are_never_used() {
    let short = b"short".to_vec();
    let cfg = AuthConfig {
        hs256_secrets: vec![short.clone()],
        ..AuthConfig::default()
    };
    assert!(cfg.validate().is_err());
    let t = issue_hs256(&short, &claims());
    assert_eq!(err(&cfg, &t), AuthError::AlgNotConfigured("HS256"));
}

// ---- time and audience ----------------------------------------------------------------

#[test]
fn expired_token_is_refused_after_leeway() {
    let mut c = claims();
    c.exp = NOW - 31;
    let e = err(&hs_config(), &issue_hs256(SECRET_A, &c));
    assert_eq!(
        e,
        AuthError::Expired {
            exp: NOW - 31,
            now: NOW,
            leeway_s: 30
        }
    );
    assert!(e
        .to_string()
        .starts_with("token expired at 2023-11-14T22:12:49Z"));
    // Inside the leeway it still verifies; with zero leeway exp == now is expired.
    c.exp = NOW - 29;
    assert!(verify(&hs_config(), &issue_hs256(SECRET_A, &c), NOW).is_ok());
    c.exp = NOW;
    let strict = AuthConfig {
        leeway_s: 0,
        ..hs_config()
    };
    assert!(matches!(
        err(&strict, &issue_hs256(SECRET_A, &c)),
        AuthError::Expired { .. }
    ));
}

#[test]
fn not_yet_valid_token_is_refused() {
    let mut c = claims();
    c.nbf = Some(NOW + 31);
    let e = err(&hs_config(), &issue_hs256(SECRET_A, &c));
    assert_eq!(
        e,
        AuthError::NotYetValid {
            nbf: NOW + 31,
            now: NOW,
            leeway_s: 30
        }
    );
    assert!(e.to_string().starts_with("token is not valid before "));
    c.nbf = Some(NOW + 30);
    assert!(verify(&hs_config(), &issue_hs256(SECRET_A, &c), NOW).is_ok());
}

#[test]
fn audience_is_checked_when_configured() {
    let cfg = AuthConfig {
        audience: Some("aetheris".into()),
        ..hs_config()
    };
    let mut c = claims();
    // Missing aud.
    assert!(matches!(
        err(&cfg, &issue_hs256(SECRET_A, &c)),
        AuthError::WrongAudience { .. }
    ));
    // Wrong string, wrong array.
    c.aud = Some(Audience::One("other".into()));
    assert!(matches!(
        err(&cfg, &issue_hs256(SECRET_A, &c)),
        AuthError::WrongAudience { .. }
    ));
    c.aud = Some(Audience::Many(vec!["a".into(), "b".into()]));
    assert!(matches!(
        err(&cfg, &issue_hs256(SECRET_A, &c)),
        AuthError::WrongAudience { .. }
    ));
    // Right string.
    c.aud = Some(Audience::One("aetheris".into()));
    assert!(verify(&cfg, &issue_hs256(SECRET_A, &c), NOW).is_ok());
    // Bad type.
    let mut p = payload();
    p["aud"] = json!(5);
    assert!(matches!(
        err(&cfg, &hs_raw(&hs_header(), &p, SECRET_A)),
        AuthError::InvalidClaim { claim: "aud", .. }
    ));
    // Without a configured audience, aud is not checked.
    c.aud = Some(Audience::One("other".into()));
    assert!(verify(&hs_config(), &issue_hs256(SECRET_A, &c), NOW).is_ok());
}

// ---- claims ---------------------------------------------------------------------------

#[test]
fn missing_required_claims_are_refused() {
    for claim in ["sub", "tenant", "exp"] {
        let mut p = payload();
        p.as_object_mut().unwrap().remove(claim);
        let t = hs_raw(&hs_header(), &p, SECRET_A);
        assert_eq!(err(&hs_config(), &t), AuthError::MissingClaim(claim));
        assert_eq!(
            AuthError::MissingClaim(claim).to_string(),
            format!("claim `{claim}` is missing")
        );
    }
}

#[test]
fn badly_typed_claims_are_refused() {
    let cases = [
        ("sub", json!(42)),
        ("sub", json!("")),
        ("tenant", json!(["acme"])),
        ("tenant", json!("")),
        ("exp", json!("tomorrow")),
        ("exp", json!(-5)),
        ("nbf", json!(true)),
        ("iat", json!({})),
        ("roles", json!("admin")),
        ("roles", json!(["admin", 1])),
    ];
    for (claim, v) in cases {
        let mut p = payload();
        p[claim] = v.clone();
        let t = hs_raw(&hs_header(), &p, SECRET_A);
        match err(&hs_config(), &t) {
            AuthError::InvalidClaim { claim: c, .. } => assert_eq!(c, claim, "{v}"),
            other => panic!("{claim}={v}: {other:?}"),
        }
    }
}

#[test]
fn unknown_roles_grant_nothing() {
    let mut c = claims();
    c.roles = vec![
        "root".into(),
        "Admin".into(),
        "viewer".into(),
        "viewer".into(),
    ];
    let t = format!("Bearer {}", issue_hs256(SECRET_A, &c));
    let p = authenticate(&hs_config(), Some(&t), NOW).unwrap();
    assert_eq!(p.roles, vec![Role::Viewer]);
    assert!(p.can(Permission::JobRead));
    assert!(!p.can(Permission::JobCreate));
    c.roles = vec!["superuser".into()];
    let t = format!("Bearer {}", issue_hs256(SECRET_A, &c));
    let p = authenticate(&hs_config(), Some(&t), NOW).unwrap();
    assert!(p.roles.is_empty());
    assert!(Permission::ALL.iter().all(|perm| !p.can(*perm)));
    assert_eq!(
        p.require(Permission::JobRead),
        Err(PermissionDenied {
            permission: Permission::JobRead
        })
    );
}

// ---- malformed input ------------------------------------------------------------------

#[test]
fn garbage_is_refused_without_panicking() {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET_A.to_vec()],
        ed25519_public_keys: vec![ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    };
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let garbage = [
        "",
        ".",
        "..",
        "...",
        "garbage",
        "a.b.c",
        "€€€.€€€.€€€",
        "eyJhbGciOiJIUzI1NiJ9.!!!.abc",
        &long,
    ];
    for g in garbage {
        assert!(
            matches!(err(&cfg, g), AuthError::Malformed(_)),
            "{g:.40}: {:?}",
            err(&cfg, g)
        );
    }
}

#[test]
fn two_segment_token_is_refused() {
    let token = issue_hs256(SECRET_A, &claims());
    let (two, _) = token.rsplit_once('.').unwrap();
    let e = err(&hs_config(), two);
    assert!(matches!(e, AuthError::Malformed(_)));
    assert!(e.to_string().contains("three dot-separated parts"), "{e}");
    assert!(matches!(
        err(&hs_config(), &format!("{token}.x")),
        AuthError::Malformed(_)
    ));
}

#[test]
fn bad_base64_in_each_part_is_refused() {
    let token = issue_hs256(SECRET_A, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    for (i, what) in ["header", "payload", "signature"].iter().enumerate() {
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        p[i] = format!("{}=", p[i]); // padding is not allowed in JWS
        let e = err(&hs_config(), &p.join("."));
        assert!(e.to_string().contains(what), "{what}: {e}");
        p[i] = "a+b/".into(); // standard alphabet is not base64url
        assert!(matches!(
            err(&hs_config(), &p.join(".")),
            AuthError::Malformed(_)
        ));
    }
}

#[test]
fn bad_json_is_refused() {
    let sig = b64([0u8; 32]);
    let p = b64(payload().to_string());
    let t = format!("{}.{p}.{sig}", b64("{not json"));
    assert_eq!(
        err(&hs_config(), &t),
        AuthError::Malformed("header is not valid JSON".into())
    );
    let t = format!("{}.{p}.{sig}", b64("[1,2]"));
    assert_eq!(
        err(&hs_config(), &t),
        AuthError::Malformed("header is not a JSON object".into())
    );
    // A correctly signed payload that is not JSON.
    let h = b64(hs_header().to_string());
    let body = b64("{\"sub\":");
    let sig = b64(hmac(SECRET_A, format!("{h}.{body}").as_bytes()));
    assert_eq!(
        err(&hs_config(), &format!("{h}.{body}.{sig}")),
        AuthError::Malformed("payload is not valid JSON".into())
    );
}

#[test]
fn wrong_signature_lengths_are_refused() {
    let h = b64(hs_header().to_string());
    let p = b64(payload().to_string());
    assert!(matches!(
        err(&hs_config(), &format!("{h}.{p}.")),
        AuthError::Malformed(_)
    ));
    assert!(matches!(
        err(&hs_config(), &format!("{h}.{p}.{}", b64([1u8; 31]))),
        AuthError::Malformed(_)
    ));
    let h = b64(json!({"alg": "EdDSA"}).to_string());
    assert!(matches!(
        err(&ed_config(), &format!("{h}.{p}.{}", b64([1u8; 63]))),
        AuthError::Malformed(_)
    ));
    assert_eq!(
        err(&ed_config(), &format!("{h}.{p}.{}", b64([0u8; 64]))),
        AuthError::BadSignature("EdDSA")
    );
}

// ---- Authorization header -------------------------------------------------------------

#[test]
fn header_must_be_bearer() {
    let cfg = hs_config();
    let token = issue_hs256(SECRET_A, &claims());
    assert_eq!(authenticate(&cfg, None, NOW), Err(AuthError::MissingHeader));
    assert_eq!(
        authenticate(&cfg, Some("   "), NOW),
        Err(AuthError::MissingHeader)
    );
    assert_eq!(
        authenticate(&cfg, Some("Basic YWxpY2U6c2VjcmV0"), NOW),
        Err(AuthError::UnsupportedScheme("Basic".into()))
    );
    assert_eq!(
        authenticate(&cfg, Some(&token), NOW),
        Err(AuthError::UnsupportedScheme(
            token.chars().take(32).collect()
        ))
    );
    assert_eq!(
        authenticate(&cfg, Some(&format!("Token {token}")), NOW),
        Err(AuthError::UnsupportedScheme("Token".into()))
    );
    assert!(matches!(
        authenticate(&cfg, Some("Bearer"), NOW),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        authenticate(&cfg, Some("Bearer "), NOW),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn errors_answer_401_problem_json_with_challenge() {
    use actix_web::ResponseError;
    let e = AuthError::Expired {
        exp: NOW - 100,
        now: NOW,
        leeway_s: 30,
    };
    let r = e.error_response();
    assert_eq!(r.status().as_u16(), 401);
    let ct = r.headers().get("content-type").unwrap().to_str().unwrap();
    assert_eq!(ct, "application/problem+json");
    let www = r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        www.starts_with("Bearer ") && www.contains("invalid_token"),
        "{www}"
    );
    let r = AuthError::MissingHeader.error_response();
    assert_eq!(r.status().as_u16(), 401);
    let www = r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!www.contains("error="), "{www}");
    let r = PermissionDenied {
        permission: Permission::TenantAdmin,
    }
    .error_response();
    assert_eq!(r.status().as_u16(), 403);
}

// ---- key rotation and kid -------------------------------------------------------------

#[test]
fn key_rotation_second_key_verifies() {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET_B.to_vec(), SECRET_A.to_vec()],
        ed25519_public_keys: vec![ed25519_public_key(&ED_B), ed25519_public_key(&ED_A)],
        ..AuthConfig::default()
    };
    // Issued tokens carry a kid; hand-built ones do not: both verify with the second key.
    assert!(verify(&cfg, &issue_hs256(SECRET_A, &claims()), NOW).is_ok());
    assert!(verify(&cfg, &issue_ed25519(ED_A, &claims()), NOW).is_ok());
    assert!(verify(&cfg, &hs_raw(&hs_header(), &payload(), SECRET_A), NOW).is_ok());
    assert!(verify(
        &cfg,
        &ed_raw(&json!({"alg": "EdDSA"}), &payload(), &ED_A),
        NOW
    )
    .is_ok());
    // An unknown kid is only a hint: every key of the type is tried.
    let h = json!({"alg": "HS256", "kid": "someone-elses-name"});
    assert!(verify(&cfg, &hs_raw(&h, &payload(), SECRET_A), NOW).is_ok());
    // A kid naming a configured key selects only that key.
    let h = json!({"alg": "HS256", "kid": key_id_hs256(SECRET_B)});
    assert_eq!(
        err(&cfg, &hs_raw(&h, &payload(), SECRET_A)),
        AuthError::BadSignature("HS256")
    );
    let h = json!({"alg": "HS256", "kid": 7});
    assert!(matches!(
        err(&cfg, &hs_raw(&h, &payload(), SECRET_A)),
        AuthError::Malformed(_)
    ));
    // A retired key no longer verifies.
    let retired = AuthConfig {
        hs256_secrets: vec![SECRET_B.to_vec()],
        ..AuthConfig::default()
    };
    assert_eq!(
        err(&retired, &issue_hs256(SECRET_A, &claims())),
        AuthError::BadSignature("HS256")
    );
}

// ---- keys -----------------------------------------------------------------------------

#[test]
fn key_strings_round_trip() {
    let secret = generate_hs256_secret().unwrap();
    assert_eq!(secret.len(), 32);
    assert_ne!(secret, generate_hs256_secret().unwrap());
    assert_eq!(
        decode_hs256_secret(&encode_key_hex(&secret)),
        Ok(secret.clone())
    );
    assert_eq!(
        decode_hs256_secret(&encode_key_base64(&secret)),
        Ok(secret.clone())
    );
    assert_eq!(decode_key(&hex::encode(&secret)), Ok(secret.clone()));
    assert_eq!(
        decode_key(&URL_SAFE_NO_PAD.encode(&secret)),
        Ok(secret.clone())
    );
    assert_eq!(
        decode_key(&format!("  {}\n", encode_key_hex(&secret))),
        Ok(secret)
    );

    let seed = generate_ed25519_signing_key().unwrap();
    let public = ed25519_public_key(&seed);
    assert_eq!(
        decode_ed25519_signing_key(&encode_key_base64(&seed)),
        Ok(seed)
    );
    assert_eq!(
        decode_ed25519_public_key(&encode_key_hex(&public)),
        Ok(public)
    );
    let cfg = AuthConfig {
        ed25519_public_keys: vec![public],
        ..AuthConfig::default()
    };
    assert!(cfg.validate().is_ok());
    assert!(verify(&cfg, &issue_ed25519(seed, &claims()), NOW).is_ok());
}

#[test]
fn bad_key_strings_are_refused() {
    assert_eq!(
        decode_key(""),
        Err(KeyError::Length {
            expected: "at least 1",
            got: 0
        })
    );
    assert_eq!(decode_key("hex:zz"), Err(KeyError::Encoding));
    assert_eq!(decode_key("base64:@@@"), Err(KeyError::Encoding));
    assert!(matches!(
        decode_hs256_secret("hex:0011"),
        Err(KeyError::Length { got: 2, .. })
    ));
    assert!(matches!(
        decode_ed25519_public_key(&encode_key_hex(&[1u8; 31])),
        Err(KeyError::Length { got: 31, .. })
    ));
    // y = 2 is not the y-coordinate of any curve point.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        decode_ed25519_public_key(&encode_key_hex(&not_a_point)),
        Err(KeyError::InvalidPublicKey)
    );
    let cfg = AuthConfig {
        ed25519_public_keys: vec![not_a_point],
        ..AuthConfig::default()
    };
    assert!(cfg.validate().is_err());
    assert!(AuthConfig::default().validate().is_err());
}

#[test]
fn debug_of_config_hides_secrets() {
    let cfg = hs_config();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains(&key_id_hs256(SECRET_A)), "{shown}");
}

// ---- RBAC tables ----------------------------------------------------------------------

#[test]
fn every_role_and_permission_matches_the_spec() {
    // An independent copy of the table in the issue; the code must agree cell by cell.
    let spec: &[(&str, &[&str])] = &[
        (
            "admin",
            &[
                "job:create",
                "job:read",
                "job:signal",
                "job:cancel",
                "job:confirm",
                "evidence:export",
                "tenant:admin",
                "audit:read",
                "system:read",
            ],
        ),
        (
            "operator",
            &[
                "job:create",
                "job:read",
                "job:signal",
                "job:cancel",
                "job:confirm",
                "system:read",
            ],
        ),
        ("submitter", &["job:create", "job:read", "job:signal"]),
        ("viewer", &["job:read"]),
        ("auditor", &["job:read", "audit:read", "evidence:export"]),
    ];
    assert_eq!(spec.len(), Role::ALL.len());
    for (role_name, granted) in spec {
        let role: Role = role_name.parse().unwrap();
        assert_eq!(role.to_string(), *role_name);
        let p = Principal {
            sub: "s".into(),
            tenant: "t".into(),
            roles: vec![role],
            granted: None,
        };
        for perm in Permission::ALL {
            let expected = granted.contains(&perm.as_str());
            assert_eq!(p.can(perm), expected, "{role} × {perm}");
            assert_eq!(
                permissions(role).contains(&perm),
                expected,
                "{role} × {perm}"
            );
        }
        assert_eq!(
            permissions(role).len(),
            granted.len(),
            "{role} has duplicates"
        );
    }
    for perm in Permission::ALL {
        assert_eq!(perm.as_str().parse::<Permission>(), Ok(perm));
    }
    // Roles add up.
    let p = Principal {
        sub: "s".into(),
        tenant: "t".into(),
        roles: vec![Role::Viewer, Role::Auditor],
        granted: None,
    };
    assert!(p.can(Permission::AuditRead) && !p.can(Permission::JobCreate));
    // A user row's roles cap the token's: admin ∩ viewer = viewer.
    let capped = Principal {
        sub: "s".into(),
        tenant: "t".into(),
        roles: vec![Role::Admin],
        granted: Some(vec![Role::Viewer]),
    };
    for perm in Permission::ALL {
        assert_eq!(capped.can(perm), perm == Permission::JobRead, "{perm:?}");
    }
}

#[test]
fn routes_map_to_the_specified_permissions() {
    use Permission::*;
    let cases = [
        ("POST", "/v1/jobs", RouteAccess::Requires(JobCreate)),
        ("GET", "/v1/jobs", RouteAccess::Requires(JobRead)),
        (
            "GET",
            "/v1/jobs/0190c0de-0000-7000-8000-000000000000",
            RouteAccess::Requires(JobRead),
        ),
        ("GET", "/v1/jobs/x/events", RouteAccess::Requires(JobRead)),
        ("GET", "/v1/jobs/x/ledger", RouteAccess::Requires(JobRead)),
        (
            "POST",
            "/v1/jobs/x/cancel",
            RouteAccess::Requires(JobCancel),
        ),
        (
            "POST",
            "/v1/jobs/x/signals/approval",
            RouteAccess::Requires(JobSignal),
        ),
        (
            "POST",
            "/v1/jobs/x/steps/refund/confirm",
            RouteAccess::Requires(JobConfirm),
        ),
        ("GET", "/v1/openapi.json", RouteAccess::Public),
        ("GET", "/v1/audit", RouteAccess::Requires(AuditRead)),
        ("GET", "/v1/tenants", RouteAccess::Requires(TenantAdmin)),
        ("POST", "/v1/tenants", RouteAccess::Requires(TenantAdmin)),
        (
            "PUT",
            "/v1/tenants/acme/limits",
            RouteAccess::Requires(TenantAdmin),
        ),
        ("GET", "/metrics", RouteAccess::Requires(SystemRead)),
        (
            "GET",
            "/v1/jobs/x/evidence",
            RouteAccess::Requires(EvidenceExport),
        ),
        (
            "GET",
            "/v1/evidence/checkpoint",
            RouteAccess::Requires(EvidenceExport),
        ),
        (
            "GET",
            "/v1/evidence/consistency",
            RouteAccess::Requires(EvidenceExport),
        ),
        (
            "PUT",
            "/v1/tenants/acme/evidence-policy",
            RouteAccess::Requires(TenantAdmin),
        ),
        ("GET", "/healthz", RouteAccess::Public),
        ("GET", "/readyz", RouteAccess::Public),
        ("get", "/healthz", RouteAccess::Public),
        // Not in the tables: never public.
        ("POST", "/healthz", RouteAccess::Unknown),
        ("DELETE", "/v1/jobs/x", RouteAccess::Unknown),
        ("POST", "/v1/jobs/x/signals/", RouteAccess::Unknown),
        ("GET", "/v1/jobs/x/y/z", RouteAccess::Unknown),
        ("GET", "/v1/nope", RouteAccess::Unknown),
        ("POST", "/v1/jobs/x/evidence", RouteAccess::Unknown),
        ("GET", "/v1/evidence", RouteAccess::Unknown),
    ];
    for (m, p, want) in cases {
        assert_eq!(route_access(m, p), want, "{m} {p}");
    }
    // Every table row is reachable by its own pattern.
    for r in ROUTES {
        let want = match r.access.permission() {
            None => RouteAccess::Public,
            Some(p) => RouteAccess::Requires(p),
        };
        assert_eq!(
            route_access(
                r.method.as_str(),
                &r.path.replace('{', "x").replace('}', "")
            ),
            want
        );
    }
}

// ---- docs -----------------------------------------------------------------------------

#[test]
fn docs_auth_md_contains_the_tables_the_code_renders() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/auth.md");
    let doc = std::fs::read_to_string(path).expect("docs/auth.md exists");
    for (name, table) in [
        ("role × permission", render_role_table()),
        ("route → permission", render_route_table()),
    ] {
        assert!(
            doc.contains(&table),
            "docs/auth.md is out of date: its {name} table must read exactly\n\n{table}"
        );
    }
}
