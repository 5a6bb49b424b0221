//! pivot-agent's integration tests: one binary (each file under tests/ would link the crate again).

mod gpu;
mod miner;
