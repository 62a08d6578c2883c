//! DSSE envelopes carrying in-toto Statements, signed with Ed25519.
//!
//! The signature is over DSSE's pre-authentication encoding
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (LEN: the byte
//! length in ASCII decimal), never over the JSON, so any DSSE verifier (securesystemslib,
//! or `openssl pkeyutl -verify -rawin` on PAE bytes rebuilt with shell tools) checks it the
//! same way we do. The envelope is `{"payload": base64(body), "payloadType":
//! "application/vnd.in-toto+json", "signatures": [{"keyid", "sig": base64}]}` with the
//! standard padded base64 alphabet. Invariant: an envelope opens only with exactly one
//! signature, the in-toto payload type, a keyid naming one of the given keys, and a
//! signature by that key over the PAE of exactly the payload bytes.

use crate::error::EvidenceError;
use crate::keys::{keyid, verify_signature, SigningKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The payload type of an in-toto attestation in DSSE.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

const ENVELOPE: &str = "envelope.json";

/// DSSE's pre-authentication encoding of a payload: the bytes that are signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope as serialized in `envelope.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Standard base64 of the payload bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Hex SHA-256 of the signer's raw public key.
    pub keyid: String,
    /// Standard base64 of the 64-byte Ed25519 signature over the PAE bytes.
    pub sig: String,
}

/// What an opened envelope yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub payload: Vec<u8>,
    pub signer_keyid: String,
}

impl Envelope {
    /// Signs `payload` (an in-toto Statement) with `key`.
    pub fn sign(payload: &[u8], key: &SigningKey) -> Envelope {
        let sig = key.sign(&pae(PAYLOAD_TYPE, payload));
        Envelope {
            payload: STANDARD.encode(payload),
            payload_type: PAYLOAD_TYPE.to_string(),
            signatures: vec![EnvelopeSignature {
                keyid: key.keyid(),
                sig: STANDARD.encode(sig),
            }],
        }
    }

    /// The PAE bytes this envelope's signature covers (for tools and tests).
    pub fn pae_bytes(&self) -> Result<Vec<u8>, EvidenceError> {
        let payload = STANDARD
            .decode(&self.payload)
            .map_err(|e| EvidenceError::file(ENVELOPE, format!("payload is not base64: {e}")))?;
        Ok(pae(&self.payload_type, &payload))
    }

    /// Parses `envelope.json` and checks it as the module docs say, against any of
    /// `public_keys` (several for key rotation).
    pub fn open(json: &[u8], public_keys: &[[u8; 32]]) -> Result<Opened, EvidenceError> {
        let bad = |d: String| EvidenceError::file(ENVELOPE, d);
        let env: Envelope =
            serde_json::from_slice(json).map_err(|e| bad(format!("not a DSSE envelope: {e}")))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(bad(format!(
                "payloadType is {:?}, expected {PAYLOAD_TYPE:?}",
                env.payload_type
            )));
        }
        let [signature] = env.signatures.as_slice() else {
            return Err(bad(format!(
                "{} signatures; an evidence package has exactly one",
                env.signatures.len()
            )));
        };
        let Some(key) = public_keys.iter().find(|k| keyid(k) == signature.keyid) else {
            return Err(bad(format!(
                "signed by key {:?}, which is not among the {} given public key(s)",
                signature.keyid,
                public_keys.len()
            )));
        };
        let sig = STANDARD
            .decode(&signature.sig)
            .map_err(|e| bad(format!("signature is not base64: {e}")))?;
        let pae = env.pae_bytes()?;
        if !verify_signature(key, &pae, &sig) {
            return Err(bad(format!(
                "the signature by key {} does not verify: the statement was changed or \
                 the signature swapped",
                signature.keyid
            )));
        }
        let payload = STANDARD
            .decode(&env.payload)
            .map_err(|e| bad(format!("payload is not base64: {e}")))?;
        Ok(Opened {
            payload,
            signer_keyid: signature.keyid.clone(),
        })
    }
}

/// An in-toto Statement v1 with predicate `P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement<P> {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: P,
}

/// One attested artifact: a file of the package and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub name: String,
    pub digest: SubjectDigest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectDigest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_dsse_v1_encoding() {
        // The DSSE spec's own example (protocol.md, "Test vector"): type "http://example.com/HelloWorld",
        // body "hello world".
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn envelopes_open_only_as_signed() {
        let key = SigningKey::from_seed([1; 32]).unwrap();
        let other = SigningKey::from_seed([2; 32]).unwrap();
        let env = Envelope::sign(b"{\"a\":1}", &key);
        let json = serde_json::to_vec(&env).unwrap();
        let opened = Envelope::open(&json, &[other.public_key(), key.public_key()]).unwrap();
        assert_eq!(opened.payload, b"{\"a\":1}");
        assert_eq!(opened.signer_keyid, key.keyid());
        assert!(Envelope::open(&json, &[other.public_key()]).is_err());

        let mut changed = env.clone();
        changed.payload = STANDARD.encode(b"{\"a\":2}");
        let json = serde_json::to_vec(&changed).unwrap();
        assert!(Envelope::open(&json, &[key.public_key()]).is_err());
    }
}
