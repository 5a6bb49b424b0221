//! End-to-end tests: real binaries, real sockets, third-party clients.

mod agent;
mod controller;
