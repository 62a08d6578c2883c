//! Authentication and RBAC for the gateway: verifying and issuing bearer JWTs (compact JWS,
//! HS256 and EdDSA/Ed25519 only, written by hand on ring: [`jwt`]), the keys that sign and verify
//! them ([`keys`]), and turning a verified token into a [`Principal`] (subject, tenant,
//! roles) with the single role → permission table ([`rbac`]). Which permission each route
//! needs is the route table's (`crate::routes::ROUTES`); docs/auth.md embeds both tables
//! and a test fails when the document is out of date.
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
//! the route's permission, scoping queries by [`Principal::tenant`]) is the router's job.

mod edwards;
pub mod jwt;
pub mod keys;
pub mod rbac;

pub use jwt::*;
pub use keys::*;
pub use rbac::*;
