//! Evidence signing keys: Ed25519 by `ring`, a key being its 32-byte seed. Owns the key
//! file text format, byte-compatible with `aetheris token keygen` (`base64:<padded standard
//! base64>` plus a newline; `hex:…`, bare hex and the URL-safe alphabet are read too), and
//! the key id: lower-case hex SHA-256 of the raw 32-byte public key (the DSSE `keyid`).
//! Invariant: a signing key is never printed (`Debug` shows its key id only).

use crate::error::EvidenceError;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::fmt;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): followed by the 32 key bytes
/// it is what `openssl pkeyutl -pubin` reads.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 signing key (its seed and the expanded key pair).
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// The key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, EvidenceError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| EvidenceError::Key(format!("not an Ed25519 seed: {e}")))?;
        Ok(SigningKey { seed, pair })
    }

    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, EvidenceError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| EvidenceError::Key("the system random source failed".into()))?;
        Self::from_seed(seed)
    }

    /// Reads a key file's text (see the module docs).
    pub fn from_key_file(text: &str) -> Result<Self, EvidenceError> {
        Self::from_seed(decode_32(text, "signing key")?)
    }

    /// The key file text: `base64:<seed>` and a newline (write it with mode 0600).
    pub fn to_key_file(&self) -> String {
        format!("base64:{}\n", STANDARD.encode(self.seed))
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }

    /// Hex SHA-256 of the public key.
    pub fn keyid(&self) -> String {
        keyid(&self.public_key())
    }

    /// The Ed25519 signature of `message` (deterministic: the same bytes every time).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid())
            .finish_non_exhaustive()
    }
}

/// The key id of an Ed25519 public key: lower-case hex SHA-256 of its 32 raw bytes.
pub fn keyid(public_key: &[u8; 32]) -> String {
    hex::encode(digest(&SHA256, public_key))
}

/// The public key file text: `base64:<key>` and a newline.
pub fn public_key_file(public_key: &[u8; 32]) -> String {
    format!("base64:{}\n", STANDARD.encode(public_key))
}

/// Reads a public key file's text (or a `--public-key` string): 32 bytes, as for
/// [`SigningKey::from_key_file`].
pub fn decode_public_key(text: &str) -> Result<[u8; 32], EvidenceError> {
    decode_32(text, "public key")
}

/// The public key as DER SubjectPublicKeyInfo (44 bytes), for OpenSSL and other tools.
pub fn public_key_spki_der(public_key: &[u8; 32]) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    der
}

/// The public key as a PEM `PUBLIC KEY` block (what `openssl pkey -pubout` writes).
pub fn public_key_pem(public_key: &[u8; 32]) -> String {
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(public_key_spki_der(public_key))
    )
}

/// Whether `signature` is a valid Ed25519 signature of `message` by `public_key`.
pub fn verify_signature(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Decodes `hex:…`, `base64:…` or an unprefixed string (even-length all-hex is hex,
/// anything else base64 in any common alphabet) into exactly 32 bytes.
fn decode_32(text: &str, what: &str) -> Result<[u8; 32], EvidenceError> {
    let s = text.trim();
    let encoding = || {
        EvidenceError::Key(format!(
            "{what} is neither hex nor base64 (prefix `hex:` or `base64:`)"
        ))
    };
    let from_hex = |t: &str| hex::decode(t).map_err(|_| encoding());
    let from_b64 = |t: &str| {
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or_else(encoding)
    };
    let bytes = if let Some(t) = s.strip_prefix("hex:") {
        from_hex(t)?
    } else if let Some(t) = s.strip_prefix("base64:") {
        from_b64(t)?
    } else if !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
    {
        from_hex(s)?
    } else {
        from_b64(s)?
    };
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        EvidenceError::Key(format!(
            "{what} is {} bytes; an Ed25519 key is 32",
            bytes.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1 TEST 1: seed, public key, and the signature of the empty message.
    #[test]
    fn rfc8032_test_vector_1() {
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let key = SigningKey::from_seed(seed).unwrap();
        assert_eq!(
            hex::encode(key.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = key.sign(b"");
        assert_eq!(
            hex::encode(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(verify_signature(&key.public_key(), b"", &sig));
        assert!(!verify_signature(&key.public_key(), b"x", &sig));
    }

    #[test]
    fn key_files_round_trip_in_every_accepted_spelling() {
        let key = SigningKey::generate().unwrap();
        let text = key.to_key_file();
        assert!(text.starts_with("base64:") && text.ends_with('\n'));
        let again = SigningKey::from_key_file(&text).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let pk = key.public_key();
        for spelling in [
            public_key_file(&pk),
            format!("hex:{}", hex::encode(pk)),
            hex::encode(pk),
            URL_SAFE_NO_PAD.encode(pk),
        ] {
            assert_eq!(decode_public_key(&spelling).unwrap(), pk, "{spelling}");
        }
        for bad in ["", "hex:zz", "base64:AAAA", "hex:00"] {
            assert!(matches!(decode_public_key(bad), Err(EvidenceError::Key(_))));
        }
        assert!(!format!("{key:?}").contains(&STANDARD.encode(key.seed)));
    }

    #[test]
    fn keyid_is_hex_sha256_of_the_raw_public_key() {
        let pk = [7u8; 32];
        assert_eq!(keyid(&pk), hex::encode(ring::digest::digest(&SHA256, &pk)));
        assert_eq!(public_key_spki_der(&pk).len(), 44);
    }
}
