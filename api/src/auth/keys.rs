//! Keys: the verification configuration ([`AuthConfig`]: HS256 secrets and Ed25519 public
//! keys, several of each for rotation), generating keys, their ids (`kid`), and reading
//! them from config strings (`hex:…`, `base64:…`). Secrets are never printed, and no
//! Ed25519 public key that is not a curve point, or that has small order (which would
//! accept forged signatures), passes [`AuthConfig::validate`] or
//! [`decode_ed25519_public_key`].

use super::edwards;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::digest::{Context, SHA256};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::fmt;

/// Default clock-skew allowance for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 30;
/// Shortest HS256 secret used (RFC 7518 §3.2: at least the hash output size). Shorter
/// secrets are reported by [`AuthConfig::validate`] and never used to verify.
pub const MIN_HS256_SECRET_LEN: usize = 32;

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
    /// enough, every Ed25519 public key a valid curve point not of small order. The
    /// message names the key by its position (`hs256_secrets[1]`).
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
            if let Err(e) = check_ed25519_public_key(k) {
                return Err(format!("ed25519_public_keys[{i}]: {e}"));
            }
        }
        Ok(())
    }
}

/// Refuses 32 bytes that are not a curve point, or are a point of small order: ring's
/// verifier would accept forged signatures under such a key.
pub(super) fn check_ed25519_public_key(key: &[u8; 32]) -> Result<(), KeyError> {
    if !edwards::is_curve_point(key) {
        return Err(KeyError::InvalidPublicKey);
    }
    if edwards::is_small_order(key) {
        return Err(KeyError::SmallOrderPublicKey);
    }
    Ok(())
}

/// 32 random bytes from the operating system's generator.
fn random_32() -> Result<[u8; 32], KeyError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Random)?;
    Ok(b)
}

/// A new random HS256 secret (32 bytes from the operating system's generator).
pub fn generate_hs256_secret() -> Result<Vec<u8>, KeyError> {
    random_32().map(|b| b.to_vec())
}

/// A new random Ed25519 signing key (its 32-byte seed).
pub fn generate_ed25519_signing_key() -> Result<[u8; 32], KeyError> {
    random_32()
}

/// The ring key pair of an Ed25519 signing key (RFC 8032 seed). ring only refuses seeds
/// that are not 32 bytes long, so this is `Some` for every input.
pub(super) fn ed25519_key_pair(signing_key_bytes: &[u8; 32]) -> Option<Ed25519KeyPair> {
    Ed25519KeyPair::from_seed_unchecked(signing_key_bytes).ok()
}

/// The 32 bytes of a ring key pair's public key (always 32 bytes for Ed25519).
pub(super) fn public_key_bytes(pair: &Ed25519KeyPair) -> [u8; 32] {
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    public
}

/// The public key of an Ed25519 signing key (seed).
pub fn ed25519_public_key(signing_key_bytes: &[u8; 32]) -> [u8; 32] {
    // `None` is unreachable; all zeros would be a small-order point `validate` refuses.
    ed25519_key_pair(signing_key_bytes).map_or([0; 32], |pair| public_key_bytes(&pair))
}

fn short_digest(domain: &[u8], key: &[u8]) -> String {
    let mut h = Context::new(&SHA256);
    h.update(domain);
    h.update(key);
    hex::encode(&h.finish().as_ref()[..8])
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
    #[error("key is an Ed25519 point of small order, under which anyone could forge signatures")]
    SmallOrderPublicKey,
    #[error("the operating system's random number generator failed")]
    Random,
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

/// An Ed25519 public key from a config string (32 bytes, a valid curve point not of small
/// order).
pub fn decode_ed25519_public_key(s: &str) -> Result<[u8; 32], KeyError> {
    let k = decode_32(s)?;
    check_ed25519_public_key(&k)?;
    Ok(k)
}

/// An Ed25519 signing key (32-byte seed) from a config string.
pub fn decode_ed25519_signing_key(s: &str) -> Result<[u8; 32], KeyError> {
    decode_32(s)
}
