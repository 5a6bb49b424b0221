//! End-to-end tests: real binaries, real sockets, third-party clients.

// Helpers outside #[test] functions are test code too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod attacks;
mod brain;
mod controller;
mod handoff;
mod handoff_daemon;
mod kubernetes;
mod operator;
mod slurm;
mod tls;
