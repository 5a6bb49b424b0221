//! What the market says at one instant: per input the value in force (if any) with its time,
//! source, age and health; whether the planner may run on it, and if not, every reason.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ai::FirmContract;
use super::error::{Origin, SourceError};
use super::reading::{AiDemand, AiValue, EnergyPrice, GpuWant, Hashprice, Input, Reading};

/// How an input's source is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Not read yet.
    Pending,
    /// The last refresh gave a good reading.
    Fresh,
    /// The last refresh was good but its reading has aged past `max_age_s` since (refreshes
    /// are late).
    Stale,
    /// The last refresh was refused; the last good reading, if any, stays in force until it
    /// is older than `max_age_s`.
    Failed(SourceError),
}

/// One input at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSnapshot<V> {
    pub input: Input,
    pub origin: Origin,
    /// The reading in force: the last good one, while it is no older than `max_age`.
    pub value: Option<Reading<V>>,
    /// The last good reading, in force or not.
    pub last_good: Option<Reading<V>>,
    /// Age of the last good reading.
    pub age: Option<Duration>,
    pub max_age: Duration,
    pub health: Health,
    pub last_attempt: Option<DateTime<Utc>>,
}

impl<V> InputSnapshot<V> {
    /// Why this input cannot be planned on, if it cannot.
    pub fn blocker(&self) -> Option<String> {
        if self.value.is_some() {
            return None;
        }
        let last_good = match (&self.last_good, self.age) {
            (Some(r), Some(age)) => format!(
                "the last good reading ({}, from {}) is {} old, over the {} limit (max_age_s)",
                r.at,
                r.source,
                words(age),
                words(self.max_age)
            ),
            _ => "no good reading yet".to_owned(),
        };
        Some(match &self.health {
            Health::Failed(e) => format!(
                "{}: {last_good}; the latest refresh failed: {e}",
                self.input
            ),
            Health::Pending => format!(
                "{}: {last_good}; the first refresh of {} has not run",
                self.input, self.origin
            ),
            Health::Stale | Health::Fresh => {
                format!("{}: {last_good}; refreshes are late", self.input)
            }
        })
    }

    fn number(&self, f: impl Fn(&V) -> Option<f64>) -> Option<f64> {
        self.value.as_ref().and_then(|r| f(&r.value))
    }
}

/// `2h 3m 5s`.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// The whole market at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketSnapshot {
    pub at: DateTime<Utc>,
    pub hashprice: InputSnapshot<Hashprice>,
    pub energy: InputSnapshot<EnergyPrice>,
    pub ai_value: InputSnapshot<AiValue>,
    pub ai_demand: InputSnapshot<AiDemand>,
    pub firm_contracts: Arc<[FirmContract]>,
}

/// The numbers the planner plans from, all of them in force.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerInputs {
    pub hashprice_usd_per_ph_day: f64,
    pub energy_usd_per_mwh: f64,
    pub ai_usd_per_gpu_hour: f64,
    pub ai_gpu_demand: GpuWant,
    pub firm_contracts: Arc<[FirmContract]>,
}

/// The figures `GetEconomics` reports; `None` where the input has no value in force or the
/// source does not know the figure (a fixed hashprice has no BTC price).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Economics {
    pub hashprice_usd_per_ph_day: Option<f64>,
    pub btc_usd: Option<f64>,
    pub network_hashrate_ehs: Option<f64>,
    pub energy_price_usd_per_mwh: Option<f64>,
    pub ai_usd_per_gpu_hour: Option<f64>,
    pub ai_gpu_demand: Option<GpuWant>,
    pub ai_gpus_pending: Option<u32>,
    pub ai_gpus_running: Option<u32>,
}

impl MarketSnapshot {
    /// The planner's inputs when every input has a value in force; otherwise every reason it
    /// has not, one sentence per input (for status and the audit log; the planner then runs
    /// its safe policy).
    pub fn planner_inputs(&self) -> Result<PlannerInputs, Vec<String>> {
        match (
            &self.hashprice.value,
            &self.energy.value,
            &self.ai_value.value,
            &self.ai_demand.value,
        ) {
            (Some(h), Some(e), Some(a), Some(d)) => Ok(PlannerInputs {
                hashprice_usd_per_ph_day: h.value.usd_per_ph_day,
                energy_usd_per_mwh: e.value.usd_per_mwh,
                ai_usd_per_gpu_hour: a.value.usd_per_gpu_hour,
                ai_gpu_demand: d.value.wanted,
                firm_contracts: Arc::clone(&self.firm_contracts),
            }),
            _ => Err([
                self.hashprice.blocker(),
                self.energy.blocker(),
                self.ai_value.blocker(),
                self.ai_demand.blocker(),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }

    pub fn economics(&self) -> Economics {
        let demand = self.ai_demand.value.as_ref().map(|r| r.value);
        Economics {
            hashprice_usd_per_ph_day: self.hashprice.number(|h| Some(h.usd_per_ph_day)),
            btc_usd: self.hashprice.number(|h| h.btc_usd),
            network_hashrate_ehs: self.hashprice.number(|h| h.network_hashrate_ehs),
            energy_price_usd_per_mwh: self.energy.number(|e| Some(e.usd_per_mwh)),
            ai_usd_per_gpu_hour: self.ai_value.number(|a| Some(a.usd_per_gpu_hour)),
            ai_gpu_demand: demand.map(|d| d.wanted),
            ai_gpus_pending: demand.and_then(|d| d.pending_gpus),
            ai_gpus_running: demand.and_then(|d| d.running_gpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        assert_eq!(words(Duration::from_secs(5)), "5s");
        assert_eq!(words(Duration::from_secs(65)), "1m 5s");
        assert_eq!(words(Duration::from_secs(7385)), "2h 3m 5s");
    }
}
