//! pivot-agent: the per-host daemon that reads and drives ASIC miners and GPUs for the controller.

pub mod config;
pub mod daemon;
pub mod gpu;
pub mod host;
pub mod inventory;
pub mod link;
pub mod metrics;
pub mod miner;
pub mod poll;
pub mod reconcile;
pub mod state;
pub mod workload;
