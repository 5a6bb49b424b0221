//! pivot-sim: emulated miners of every dialect the agent speaks, a fake NVML library
//! (crate `pivot-fake-nvml`), and market traces — so pivot runs and is tested with no hardware.

// Replies with the forty-odd keys real firmwares send are single `json!` literals.
#![recursion_limit = "256"]

pub mod miner;
pub mod testenv;
