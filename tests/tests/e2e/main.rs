//! End-to-end tests: real binaries, real sockets, third-party clients.

mod controller;
