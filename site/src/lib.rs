//! pivot-site: a whole simulated pivot site in one process tree — the controller, rack agents
//! driving pivot-sim miners of all six dialects, GPU hosts on the fake NVML library whose AI jobs
//! come from a SIMULATED workload manager — playing a market trace in accelerated time and
//! printing every decision the controller takes.

pub mod clock;
pub mod controller;
pub mod fleet;
pub mod generate;
pub mod hosts;
pub mod narrator;
pub mod policy;
pub mod scenario;
pub mod scheduler;
pub mod site;
pub mod sitemodel;
pub mod summary;
pub mod utility;
pub mod workload;

/// Where the bundled trace lives in the repository.
pub const BUNDLED_TRACE_PATH: &str = "site/traces/two-days.csv";

/// The bundled trace (synthetic; `pivot-site generate-trace --seed 7` writes it).
pub const BUNDLED_TRACE: &str = include_str!("../traces/two-days.csv");

/// The seed the bundled trace was generated with.
pub const BUNDLED_SEED: u64 = 7;

/// The site the bundled trace's caps and AI demand are written for: the default site.
pub const BUNDLED_REFERENCE: scenario::Reference = scenario::Reference {
    cap_w: 847_000.0,
    gpus: 64,
};
