//! pivot-sim: emulated miners of every dialect the agent speaks, a fake NVML library
//! (crate `pivot-fake-nvml`), and market traces — so pivot runs and is tested with no hardware.

pub mod miner;
pub mod testenv;
