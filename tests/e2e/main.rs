//! End-to-end tests of Aetheris: the `aetheris` binary run as a child process (crash
//! tests) and whole nodes started in-process (API, supervision, replay). One test binary,
//! one module per concern (`ui` drives the trace UI in headless Chromium; `operations` the
//! supervision view, the dashboard and the alert rules; `retention` the collector of
//! finished jobs in a real `aetheris dev`).

mod agent_crash;
mod agents;
mod api;
mod audit;
mod auth;
mod bench;
mod cancel;
mod config;
mod crash;
mod evidence;
mod fairness;
mod fake_llm;
mod fencing;
mod hostile;
mod limits;
mod operations;
mod pg_bootstrap;
mod pg_cluster;
mod postgres;
mod readme;
mod retention;
mod server_auth;
mod startup;
mod supervision;
mod support;
mod tenant_cli;
mod tracing;
mod ui;
mod waits;
mod worker_admin;
