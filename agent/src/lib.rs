//! pivot-agent: the per-host daemon that reads and drives ASIC miners and GPUs for the controller.

pub mod gpu;
pub mod host;
pub mod miner;
