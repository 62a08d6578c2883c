//! aetheris-api: the actix-web gateway. Owns the REST routes under `/v1`, problem+json
//! errors (RFC 9457), the body size limit, `/healthz`, `/readyz` and `/metrics`, and the
//! wiring that runs gateway and worker in one process (`node`).
//!
//! Invariant kept here (G1, G8): a 2xx answer to a submission means the job is durably
//! stored; any malformed or hostile request gets a 4xx problem+json naming the problem and
//! stores nothing (validation happens entirely before the store is touched).

pub mod auth;
pub mod node;
pub mod problem;
pub mod routes;

pub use node::{start_node, NodeConfig, NodeHandle};
pub use problem::ApiError;
