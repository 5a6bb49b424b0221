//! Plausible ranges for market values (`[market.checks]`): a reading outside them is refused,
//! whatever source gave it, because a wrong price moves megawatts.

use serde::Deserialize;

use super::error::SourceErrorKind;
use super::reading::{AiDemand, AiValue, EnergyPrice, Hashprice};

/// An inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: f64,
    pub max: f64,
}

impl Bounds {
    pub const fn new(min: f64, max: f64) -> Self {
        Self { min, max }
    }

    pub fn contains(&self, v: f64) -> bool {
        v.is_finite() && v >= self.min && v <= self.max
    }
}

/// `[market.checks]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlausibleRanges {
    pub hashprice_usd_per_ph_day: Bounds,
    pub btc_usd: Bounds,
    pub network_hashrate_ehs: Bounds,
    /// ERCOT's offer cap is 5,000 and its floor −251 USD/MWh; the default leaves room for
    /// other markets without letting a unit error (USD/kWh × 1000) through.
    pub energy_usd_per_mwh: Bounds,
    pub ai_usd_per_gpu_hour: Bounds,
}

impl Default for PlausibleRanges {
    fn default() -> Self {
        Self {
            hashprice_usd_per_ph_day: Bounds::new(1.0, 1_000.0),
            btc_usd: Bounds::new(1_000.0, 10_000_000.0),
            network_hashrate_ehs: Bounds::new(10.0, 100_000.0),
            energy_usd_per_mwh: Bounds::new(-1_000.0, 10_000.0),
            ai_usd_per_gpu_hour: Bounds::new(0.0, 100.0),
        }
    }
}

impl PlausibleRanges {
    /// Every range by its key, for validation.
    pub fn all(&self) -> [(&'static str, Bounds); 5] {
        [
            ("hashprice_usd_per_ph_day", self.hashprice_usd_per_ph_day),
            ("btc_usd", self.btc_usd),
            ("network_hashrate_ehs", self.network_hashrate_ehs),
            ("energy_usd_per_mwh", self.energy_usd_per_mwh),
            ("ai_usd_per_gpu_hour", self.ai_usd_per_gpu_hour),
        ]
    }

    /// Each range has finite ends and `min <= max`; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, b) in self.all() {
            if !(b.min.is_finite() && b.max.is_finite() && b.min <= b.max) {
                return Err((
                    format!("market.checks.{key}"),
                    format!("needs finite min <= max, got {} to {}", b.min, b.max),
                ));
            }
        }
        Ok(())
    }
}

/// A value that can be checked against the plausible ranges.
pub trait Plausible {
    fn check(&self, ranges: &PlausibleRanges) -> Result<(), SourceErrorKind>;
}

fn within(quantity: &str, key: &str, value: f64, b: Bounds) -> Result<(), SourceErrorKind> {
    if b.contains(value) {
        Ok(())
    } else {
        Err(SourceErrorKind::Implausible {
            quantity: quantity.to_owned(),
            key: key.to_owned(),
            value,
            min: b.min,
            max: b.max,
        })
    }
}

impl Plausible for Hashprice {
    fn check(&self, r: &PlausibleRanges) -> Result<(), SourceErrorKind> {
        // The parts first: a wrong BTC price or hashrate explains a wrong hashprice better.
        if let Some(v) = self.btc_usd {
            within("BTC price (USD)", "btc_usd", v, r.btc_usd)?;
        }
        if let Some(v) = self.network_hashrate_ehs {
            within(
                "network hashrate (EH/s)",
                "network_hashrate_ehs",
                v,
                r.network_hashrate_ehs,
            )?;
        }
        within(
            "hashprice (USD/PH/day)",
            "hashprice_usd_per_ph_day",
            self.usd_per_ph_day,
            r.hashprice_usd_per_ph_day,
        )
    }
}

impl Plausible for EnergyPrice {
    fn check(&self, r: &PlausibleRanges) -> Result<(), SourceErrorKind> {
        within(
            "energy price (USD/MWh)",
            "energy_usd_per_mwh",
            self.usd_per_mwh,
            r.energy_usd_per_mwh,
        )
    }
}

impl Plausible for AiValue {
    fn check(&self, r: &PlausibleRanges) -> Result<(), SourceErrorKind> {
        within(
            "AI value (USD/GPU-hour)",
            "ai_usd_per_gpu_hour",
            self.usd_per_gpu_hour,
            r.ai_usd_per_gpu_hour,
        )
    }
}

impl Plausible for AiDemand {
    /// A count of GPUs has no plausible range beyond its type (`u32`).
    fn check(&self, _: &PlausibleRanges) -> Result<(), SourceErrorKind> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_accept_real_values_and_refuse_absurd_ones() {
        let r = PlausibleRanges::default();
        assert!(Hashprice::only(45.0).check(&r).is_ok());
        assert!(Hashprice::only(0.0).check(&r).is_err());
        assert!(
            EnergyPrice {
                usd_per_mwh: -251.0
            }
            .check(&r)
            .is_ok()
        );
        assert!(
            EnergyPrice {
                usd_per_mwh: 5_000.0
            }
            .check(&r)
            .is_ok()
        );
        assert!(EnergyPrice { usd_per_mwh: 1e9 }.check(&r).is_err());
        assert!(
            EnergyPrice {
                usd_per_mwh: f64::NAN
            }
            .check(&r)
            .is_err()
        );
        assert!(
            AiValue {
                usd_per_gpu_hour: 2.0
            }
            .check(&r)
            .is_ok()
        );
        assert!(
            AiValue {
                usd_per_gpu_hour: -0.1
            }
            .check(&r)
            .is_err()
        );
        let mut h = Hashprice::only(45.0);
        h.network_hashrate_ehs = Some(-5.0);
        let e = h.check(&r).unwrap_err().to_string();
        assert!(
            e.contains("network hashrate") && e.contains("market.checks.network_hashrate_ehs"),
            "{e}"
        );
        h.network_hashrate_ehs = Some(900.0);
        h.btc_usd = Some(1e9);
        assert!(h.check(&r).unwrap_err().to_string().contains("BTC price"));
    }

    #[test]
    fn validation_names_the_key() {
        let r = PlausibleRanges {
            btc_usd: Bounds::new(5.0, 1.0),
            ..Default::default()
        };
        assert_eq!(r.validate().unwrap_err().0, "market.checks.btc_usd");
    }
}
