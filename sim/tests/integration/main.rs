//! pivot-sim's integration tests: one binary (see sim/Cargo.toml), one module per subject.

// Helpers outside #[test] functions panic too: in a test binary that is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod asic_rs;
mod cli;
mod dialects;
mod fidelity;
mod pyasic;
mod rest;
