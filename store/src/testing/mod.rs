//! Test support (feature `test-util`, and this crate's own tests): the conformance suite
//! every backend must pass (`conformance`, with the `conformance_tests!` macro) and a
//! throwaway PostgreSQL cluster for tests (`pg_cluster`). Not part of the production
//! library.

pub mod conformance;
pub mod pg_cluster;
