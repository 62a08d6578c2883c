//! aetheris-api: the actix-web gateway. Owns the REST routes under `/v1` (one route table
//! driving routing, permissions, docs/auth.md and the OpenAPI document), problem+json
//! errors (RFC 9457), request bodies (deadline, size, strict JSON), connection admission,
//! `/healthz`, `/readyz` and `/metrics`, the wiring that runs gateway and worker in one
//! process (`node`), a worker process's admin listener (`admin`), and the trace UI at
//! `/ui` (`ui`: server-rendered pages on the same authorization as the API).
//!
//! Invariant kept here (G1, G8): a 2xx answer to a submission means the job is durably
//! stored; any malformed or hostile request gets a 4xx problem+json naming the problem and
//! stores nothing (validation happens entirely before the store is touched); no client can
//! hold the gateway's connections or HTTP workers long enough to stop it answering others.

pub mod admin;
pub mod auth;
pub mod body;
pub mod conn;
pub mod node;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod ui;

pub use admin::{start_admin, AdminHandle};
pub use node::{start_node, NodeConfig, NodeHandle};
pub use problem::ApiError;
