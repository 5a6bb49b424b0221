//! pivot-controller's integration tests: one binary (each file under tests/ would link the
//! crate again), one module per area.

// Helpers outside #[test] functions are test code too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fake_http;
mod hostile;
mod market;
mod status_burst;
mod watch_lag;
