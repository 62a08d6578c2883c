//! Crash tests (being written).
