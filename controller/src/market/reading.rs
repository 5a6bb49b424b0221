//! What a market source gives: a value, the time it describes and the source it came from.

use std::fmt;

use chrono::{DateTime, Utc};

/// One reading of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<V> {
    pub value: V,
    /// The time the value describes (an ERCOT interval's start, a price's own timestamp), never
    /// later than when it was fetched.
    pub at: DateTime<Utc>,
    /// Which source gave it, in words (`mempool https://mempool.space`).
    pub source: String,
}

/// The market inputs the planner needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Hashprice,
    Energy,
    AiValue,
    AiDemand,
}

impl Input {
    pub const ALL: [Input; 4] = [
        Input::Hashprice,
        Input::Energy,
        Input::AiValue,
        Input::AiDemand,
    ];

    /// The config key of the input's section under `[market]`.
    pub fn key(self) -> &'static str {
        match self {
            Input::Hashprice => "hashprice",
            Input::Energy => "energy",
            Input::AiValue => "ai_value",
            Input::AiDemand => "ai_demand",
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Input::Hashprice => "hashprice",
            Input::Energy => "energy price",
            Input::AiValue => "AI value",
            Input::AiDemand => "AI demand",
        })
    }
}

/// Mining revenue per unit of hashrate, with the figures it was computed from where the source
/// knows them (a fixed value or a trace knows only the result).
#[derive(Debug, Clone, PartialEq)]
pub struct Hashprice {
    pub usd_per_ph_day: f64,
    pub btc_usd: Option<f64>,
    pub network_hashrate_ehs: Option<f64>,
    /// Height of the chain tip the figures describe.
    pub tip_height: Option<u64>,
    /// Subsidy of the next block, BTC.
    pub subsidy_btc: Option<f64>,
    /// Mean fees per block over the averaging window, BTC.
    pub mean_fees_btc: Option<f64>,
    /// Blocks the fee mean was taken over.
    pub fee_window_blocks: Option<u64>,
}

impl Hashprice {
    /// A bare hashprice (fixed value, trace).
    pub fn only(usd_per_ph_day: f64) -> Self {
        Self {
            usd_per_ph_day,
            btc_usd: None,
            network_hashrate_ehs: None,
            tip_height: None,
            subsidy_btc: None,
            mean_fees_btc: None,
            fee_window_blocks: None,
        }
    }
}

/// Energy price in force, USD/MWh. Negative prices are real (wind at night) and accepted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyPrice {
    pub usd_per_mwh: f64,
}

/// Value of interruptible GPU capacity that has work, USD per GPU-hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AiValue {
    pub usd_per_gpu_hour: f64,
}

/// How many GPUs the AI side wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuWant {
    /// Every GPU on the site has work.
    All,
    Gpus(u32),
}

impl fmt::Display for GpuWant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuWant::All => f.write_str("all"),
            GpuWant::Gpus(n) => write!(f, "{n}"),
        }
    }
}

/// GPUs the AI side could use now. Workload-manager sources (Slurm, Kubernetes) know pending
/// and running GPUs; configuration and traces know only what is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AiDemand {
    pub pending_gpus: Option<u32>,
    pub running_gpus: Option<u32>,
    pub wanted: GpuWant,
}

impl AiDemand {
    /// Demand from a workload manager's queue: pending and running jobs' GPUs.
    pub fn from_jobs(pending_gpus: u32, running_gpus: u32) -> Self {
        Self {
            pending_gpus: Some(pending_gpus),
            running_gpus: Some(running_gpus),
            wanted: GpuWant::Gpus(pending_gpus.saturating_add(running_gpus)),
        }
    }

    /// Demand stated without a queue behind it (configuration, trace).
    pub fn wanted(wanted: GpuWant) -> Self {
        Self {
            pending_gpus: None,
            running_gpus: None,
            wanted,
        }
    }
}
