//! `[market]`: one section per input (`hashprice`, `energy`, `ai_value`, `ai_demand`), each a
//! source by `source = "..."` plus its refresh timing; firm contracts; plausible ranges.
//!
//! ```toml
//! [market.hashprice]
//! source = "mempool"
//! url = "https://mempool.space"
//! refresh_s = 300      # how often to read it
//! max_age_s = 3600     # a reading older than this is not used
//! timeout_s = 20       # per refresh
//!
//! [market.energy]
//! source = "ercot"
//! url = "https://prices.example/rtspp.csv"
//! settlement_point = "HB_WEST"
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};

use super::ai::{self, AiDemandSourceConfig, AiValueSourceConfig, FirmContract};
use super::checks::{Bounds, PlausibleRanges};
use super::energy::EnergySourceConfig;
use super::energy::tou::TouSchedule;
use super::feed::Location;
use super::hashprice::HashpriceSourceConfig;
use super::hashprice::btc_price::BtcPriceConfig;
use super::reading::GpuWant;
use super::source::TraceConfig;
use crate::config::EnvSource;
use crate::trace::Trace;

/// A configuration the market cannot run with: the dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct MarketConfigError {
    pub key: String,
    pub problem: String,
}

impl From<(String, String)> for MarketConfigError {
    fn from((key, problem): (String, String)) -> Self {
        Self { key, problem }
    }
}

/// How often an input is read and how long a reading is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub refresh_s: u64,
    pub max_age_s: u64,
    pub timeout_s: u64,
}

/// A source config with its refresh timing (the `refresh_s`, `max_age_s`, `timeout_s` keys
/// beside `source`).
#[derive(Debug, Clone, PartialEq)]
pub struct InputConfig<S> {
    pub source: S,
    pub timing: Timing,
}

/// The section key and default timing of each input's source config.
pub trait InputKind {
    const KEY: &'static str;
    const TIMING: Timing;
}

impl InputKind for HashpriceSourceConfig {
    const KEY: &'static str = "hashprice";
    // Blocks come every ten minutes; the price moves slowly enough.
    const TIMING: Timing = Timing {
        refresh_s: 300,
        max_age_s: 3_600,
        timeout_s: 30,
    };
}

impl InputKind for EnergySourceConfig {
    const KEY: &'static str = "energy";
    // ERCOT publishes 15-minute prices every 15 minutes, a few minutes late.
    const TIMING: Timing = Timing {
        refresh_s: 60,
        max_age_s: 1_800,
        timeout_s: 20,
    };
}

impl InputKind for AiValueSourceConfig {
    const KEY: &'static str = "ai_value";
    const TIMING: Timing = Timing {
        refresh_s: 300,
        max_age_s: 3_600,
        timeout_s: 20,
    };
}

impl InputKind for AiDemandSourceConfig {
    const KEY: &'static str = "ai_demand";
    const TIMING: Timing = Timing {
        refresh_s: 30,
        max_age_s: 300,
        timeout_s: 10,
    };
}

const TIMING_KEYS: [&str; 3] = ["refresh_s", "max_age_s", "timeout_s"];

impl<'de, S: DeserializeOwned + InputKind> Deserialize<'de> for InputConfig<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde's `flatten` cannot be combined with `deny_unknown_fields`; take the timing keys
        // out of the table by hand and hand the rest to the source's tagged enum.
        let mut table = toml::Table::deserialize(d)?;
        let mut timing = S::TIMING;
        for key in TIMING_KEYS {
            if let Some(v) = table.remove(key) {
                let secs = v
                    .as_integer()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| {
                        de::Error::custom(format!(
                            "market.{}.{key}: must be a whole number of seconds, got {v}",
                            S::KEY
                        ))
                    })?;
                match key {
                    "refresh_s" => timing.refresh_s = secs,
                    "max_age_s" => timing.max_age_s = secs,
                    _ => timing.timeout_s = secs,
                }
            }
        }
        let source = S::deserialize(toml::Value::Table(table))
            .map_err(|e| de::Error::custom(format!("market.{}: {}", S::KEY, e.message())))?;
        Ok(Self { source, timing })
    }
}

/// `[market]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketConfig {
    pub hashprice: InputConfig<HashpriceSourceConfig>,
    pub energy: InputConfig<EnergySourceConfig>,
    pub ai_value: InputConfig<AiValueSourceConfig>,
    pub ai_demand: InputConfig<AiDemandSourceConfig>,
    pub firm_contracts: Vec<FirmContract>,
    pub checks: PlausibleRanges,
}

impl<S: InputKind> InputConfig<S> {
    fn with_default_timing(source: S) -> Self {
        Self {
            source,
            timing: S::TIMING,
        }
    }
}

impl Default for MarketConfig {
    /// Fixed 2026 values for `dev` and for sites that configure no market: hashprice 45
    /// USD/PH/day, energy 40 USD/MWh, AI 2.0 USD/GPU-hour, every GPU wanted.
    fn default() -> Self {
        Self {
            hashprice: InputConfig::with_default_timing(HashpriceSourceConfig::Fixed {
                usd_per_ph_day: 45.0,
            }),
            energy: InputConfig::with_default_timing(EnergySourceConfig::Fixed {
                usd_per_mwh: 40.0,
            }),
            ai_value: InputConfig::with_default_timing(AiValueSourceConfig::Fixed {
                usd_per_gpu_hour: 2.0,
            }),
            ai_demand: InputConfig::with_default_timing(AiDemandSourceConfig::Fixed {
                gpus: GpuWant::All,
            }),
            firm_contracts: Vec::new(),
            checks: PlausibleRanges::default(),
        }
    }
}

type Check = Result<(), (String, String)>;

fn timing(t: &Timing, key: &str) -> Check {
    let k = |f: &str| format!("market.{key}.{f}");
    if t.refresh_s == 0 {
        return Err((k("refresh_s"), "must be at least 1".into()));
    }
    if t.timeout_s == 0 {
        return Err((k("timeout_s"), "must be at least 1".into()));
    }
    if t.max_age_s < t.refresh_s {
        return Err((
            k("max_age_s"),
            format!(
                "must be at least refresh_s ({}), or every reading ages out before the next; got {}",
                t.refresh_s, t.max_age_s
            ),
        ));
    }
    // Bounded so that time arithmetic on them cannot overflow.
    if t.max_age_s > MAX_SECONDS || t.refresh_s > MAX_SECONDS || t.timeout_s > MAX_SECONDS {
        return Err((
            k("max_age_s"),
            format!("timings must be at most {MAX_SECONDS} s (a year)"),
        ));
    }
    Ok(())
}

/// Longest timing accepted, seconds.
pub const MAX_SECONDS: u64 = 366 * 86_400;

fn fixed(value: f64, key: &str, check: &str, bounds: Bounds) -> Check {
    if bounds.contains(value) {
        Ok(())
    } else {
        Err((
            key.to_owned(),
            format!(
                "{value} is outside the plausible range {} to {} (market.checks.{check})",
                bounds.min, bounds.max
            ),
        ))
    }
}

impl MarketConfig {
    /// Checks everything that needs no I/O. Errors name the dotted key.
    pub fn validate(&self) -> Result<(), MarketConfigError> {
        self.validate_inner().map_err(MarketConfigError::from)
    }

    fn validate_inner(&self) -> Check {
        let r = &self.checks;
        r.validate()?;
        timing(&self.hashprice.timing, "hashprice")?;
        timing(&self.energy.timing, "energy")?;
        timing(&self.ai_value.timing, "ai_value")?;
        timing(&self.ai_demand.timing, "ai_demand")?;
        match &self.hashprice.source {
            HashpriceSourceConfig::Mempool { url, btc_price, .. } => {
                super::http::parse_url(url).map_err(|e| ("market.hashprice.url".to_owned(), e))?;
                if let Some(p) = btc_price {
                    btc(p, r)?;
                }
            }
            HashpriceSourceConfig::Bitcoind {
                url,
                cookie_file,
                user,
                password_env,
                btc_price,
                ..
            } => {
                super::http::parse_url(url).map_err(|e| ("market.hashprice.url".to_owned(), e))?;
                match (cookie_file, user, password_env) {
                    (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                    (Some(_), _, _) => {
                        return Err((
                            "market.hashprice.cookie_file".into(),
                            "set cookie_file, or user and password_env, not both".into(),
                        ));
                    }
                    _ => {
                        return Err((
                            "market.hashprice".into(),
                            "bitcoind needs cookie_file, or user and password_env".into(),
                        ));
                    }
                }
                btc(btc_price, r)?;
            }
            HashpriceSourceConfig::Fixed { usd_per_ph_day } => fixed(
                *usd_per_ph_day,
                "market.hashprice.usd_per_ph_day",
                "hashprice_usd_per_ph_day",
                r.hashprice_usd_per_ph_day,
            )?,
            HashpriceSourceConfig::Trace(t) => t.validate("market.hashprice")?,
        }
        match &self.energy.source {
            EnergySourceConfig::Fixed { usd_per_mwh } => fixed(
                *usd_per_mwh,
                "market.energy.usd_per_mwh",
                "energy_usd_per_mwh",
                r.energy_usd_per_mwh,
            )?,
            EnergySourceConfig::TimeOfUse {
                time_zone,
                default_usd_per_mwh,
                periods,
            } => {
                TouSchedule::new(time_zone, *default_usd_per_mwh, periods, "market.energy")?;
                fixed(
                    *default_usd_per_mwh,
                    "market.energy.default_usd_per_mwh",
                    "energy_usd_per_mwh",
                    r.energy_usd_per_mwh,
                )?;
                for (i, p) in periods.iter().enumerate() {
                    fixed(
                        p.usd_per_mwh,
                        &format!("market.energy.periods[{i}].usd_per_mwh"),
                        "energy_usd_per_mwh",
                        r.energy_usd_per_mwh,
                    )?;
                }
            }
            EnergySourceConfig::Ercot {
                url,
                file,
                settlement_point,
            } => {
                Location::from_config(url.as_deref(), file.as_ref(), "market.energy")?;
                if settlement_point.trim().is_empty() {
                    return Err((
                        "market.energy.settlement_point".into(),
                        "must name a settlement point (HB_NORTH, LZ_WEST, ...)".into(),
                    ));
                }
            }
            EnergySourceConfig::Feed {
                url,
                file,
                format,
                field,
                ..
            } => {
                Location::from_config(url.as_deref(), file.as_ref(), "market.energy")?;
                let json = *format == super::energy::FeedFormat::Json;
                if json && field.as_deref().is_none_or(|f| f.trim().is_empty()) {
                    return Err((
                        "market.energy.field".into(),
                        "a JSON feed needs the field that holds the price".into(),
                    ));
                }
                if !json && field.is_some() {
                    return Err((
                        "market.energy.field".into(),
                        "only a JSON feed has a field; a CSV feed has columns time,usd_per_mwh"
                            .into(),
                    ));
                }
            }
            EnergySourceConfig::Trace(t) => t.validate("market.energy")?,
        }
        match &self.ai_value.source {
            AiValueSourceConfig::Fixed { usd_per_gpu_hour } => fixed(
                *usd_per_gpu_hour,
                "market.ai_value.usd_per_gpu_hour",
                "ai_usd_per_gpu_hour",
                r.ai_usd_per_gpu_hour,
            )?,
            AiValueSourceConfig::Feed {
                url, file, field, ..
            } => {
                Location::from_config(url.as_deref(), file.as_ref(), "market.ai_value")?;
                if field.trim().is_empty() {
                    return Err((
                        "market.ai_value.field".into(),
                        "must name the field that holds the price".into(),
                    ));
                }
            }
            AiValueSourceConfig::Trace(t) => t.validate("market.ai_value")?,
        }
        if let AiDemandSourceConfig::Trace(t) = &self.ai_demand.source {
            t.validate("market.ai_demand")?;
        }
        ai::validate_firm(&self.firm_contracts)
    }

    /// Everything [`validate`](Self::validate) checks, and what needs the machine: trace files
    /// parse, feed and cookie files can be read, password variables are set. For
    /// `check-config`; relative paths resolve against the working directory.
    pub fn check(&self, env: &dyn EnvSource) -> Result<(), MarketConfigError> {
        self.validate()?;
        let mut traces = HashMap::new();
        for (key, t) in self.traces() {
            load_trace(&mut traces, t, key)?;
        }
        let readable = |path: &Path, key: &str| -> Result<(), MarketConfigError> {
            std::fs::File::open(path)
                .map(drop)
                .map_err(|e| MarketConfigError {
                    key: key.to_owned(),
                    problem: format!("cannot read {}: {e}", path.display()),
                })
        };
        if let HashpriceSourceConfig::Bitcoind {
            cookie_file,
            password_env,
            ..
        } = &self.hashprice.source
        {
            if let Some(c) = cookie_file {
                readable(c, "market.hashprice.cookie_file")?;
            }
            if let Some(var) = password_env {
                password(env, var)?;
            }
        }
        match &self.energy.source {
            EnergySourceConfig::Ercot { file: Some(f), .. }
            | EnergySourceConfig::Feed { file: Some(f), .. } => {
                readable(f, "market.energy.file")?;
            }
            _ => {}
        }
        if let AiValueSourceConfig::Feed { file: Some(f), .. } = &self.ai_value.source {
            readable(f, "market.ai_value.file")?;
        }
        Ok(())
    }

    /// The trace sources, with their section keys.
    pub fn traces(&self) -> Vec<(&'static str, &TraceConfig)> {
        let mut out = Vec::new();
        if let HashpriceSourceConfig::Trace(t) = &self.hashprice.source {
            out.push(("market.hashprice.file", t));
        }
        if let EnergySourceConfig::Trace(t) = &self.energy.source {
            out.push(("market.energy.file", t));
        }
        if let AiValueSourceConfig::Trace(t) = &self.ai_value.source {
            out.push(("market.ai_value.file", t));
        }
        if let AiDemandSourceConfig::Trace(t) = &self.ai_demand.source {
            out.push(("market.ai_demand.file", t));
        }
        out
    }
}

fn btc(p: &BtcPriceConfig, r: &PlausibleRanges) -> Check {
    p.validate("market.hashprice.btc_price")?;
    if let BtcPriceConfig::Fixed { usd } = p {
        fixed(*usd, "market.hashprice.btc_price.usd", "btc_usd", r.btc_usd)?;
    }
    Ok(())
}

/// The password in environment variable `var`.
pub fn password(env: &dyn EnvSource, var: &str) -> Result<String, MarketConfigError> {
    match env.get(var) {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(MarketConfigError {
            key: "market.hashprice.password_env".into(),
            problem: format!(
                "environment variable {var} is not set (it holds bitcoind's RPC password)"
            ),
        }),
    }
}

/// Loads a trace once per path.
pub fn load_trace(
    cache: &mut HashMap<std::path::PathBuf, std::sync::Arc<Trace>>,
    t: &TraceConfig,
    key: &str,
) -> Result<std::sync::Arc<Trace>, MarketConfigError> {
    if let Some(tr) = cache.get(&t.file) {
        return Ok(std::sync::Arc::clone(tr));
    }
    let trace = Trace::load(&t.file).map_err(|e| MarketConfigError {
        key: key.to_owned(),
        problem: e.to_string(),
    })?;
    let trace = std::sync::Arc::new(trace);
    cache.insert(t.file.clone(), std::sync::Arc::clone(&trace));
    Ok(trace)
}
