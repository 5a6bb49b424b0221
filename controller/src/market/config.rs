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
        if let Some(d) = self.ai_demand.source.workload() {
            d.validate_at("market.ai_demand")
                .map_err(|e| (e.key, e.problem))?;
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
        if let Some(d) = self.ai_demand.source.workload() {
            d.check_at("market.ai_demand", env)
                .map_err(|e| MarketConfigError {
                    key: e.key,
                    problem: e.problem,
                })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    use crate::config::NoEnv;
    use crate::market::engine::{Market, MarketParts};
    use crate::market::hashprice::NetworkHashrate;
    use crate::market::hashprice::mempool::MempoolFees;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        market: MarketConfig,
    }

    fn parse(text: &str) -> Result<MarketConfig, String> {
        toml::from_str::<Doc>(text)
            .map(|d| d.market)
            .map_err(|e| e.to_string())
    }

    const FULL: &str = r#"
[market.hashprice]
source = "mempool"
url = "https://mempool.space"
fees = "blocks"
network_hashrate = "measured"
refresh_s = 120
max_age_s = 1800

[market.hashprice.btc_price]
source = "json"
url = "https://prices.example/btc?key=abc"
field = "data.amount"

[market.energy]
source = "ercot"
url = "https://prices.example/np6-905-cd.csv"
settlement_point = "HB_WEST"
timeout_s = 5

[market.ai_value]
source = "feed"
file = "/var/lib/pivot/spot.json"
field = "data.0.usd_per_gpu_hour"

[market.ai_demand]
source = "fixed"
gpus = 64

[[market.firm_contracts]]
name = "lease-a"
hosts = ["gpu-01", "gpu-02"]
usd_per_mwh = 180.0

[market.checks]
energy_usd_per_mwh = { min = -300, max = 6000 }
"#;

    #[test]
    fn a_full_section_parses_with_timings_beside_the_source() {
        let c = parse(FULL).unwrap();
        assert_eq!(
            c.hashprice.source,
            HashpriceSourceConfig::Mempool {
                url: "https://mempool.space".into(),
                fees: MempoolFees::Blocks,
                network_hashrate: NetworkHashrate::Measured,
                btc_price: Some(BtcPriceConfig::Json {
                    url: "https://prices.example/btc?key=abc".into(),
                    field: "data.amount".into(),
                    time_field: None,
                }),
            }
        );
        assert_eq!(
            c.hashprice.timing,
            Timing {
                refresh_s: 120,
                max_age_s: 1_800,
                timeout_s: 30
            }
        );
        assert_eq!(
            c.energy.timing,
            Timing {
                refresh_s: 60,
                max_age_s: 1_800,
                timeout_s: 5
            }
        );
        assert_eq!(
            c.ai_demand.source,
            AiDemandSourceConfig::Fixed {
                gpus: GpuWant::Gpus(64)
            }
        );
        assert_eq!(c.firm_contracts[0].hosts, ["gpu-01", "gpu-02"]);
        assert_eq!(c.checks.energy_usd_per_mwh, Bounds::new(-300.0, 6_000.0));
        assert_eq!(c.checks.btc_usd, PlausibleRanges::default().btc_usd);
        c.validate().unwrap();
    }

    #[test]
    fn no_section_means_the_fixed_dev_values() {
        let c = parse("").unwrap();
        assert_eq!(c, MarketConfig::default());
        c.validate().unwrap();
        let partial = parse("[market.energy]\nsource = \"fixed\"\nusd_per_mwh = -10\n").unwrap();
        assert_eq!(partial.hashprice, MarketConfig::default().hashprice);
    }

    #[test]
    fn unknown_keys_and_kinds_are_named() {
        for (text, want) in [
            (
                "[market.energy]\nsource = \"fixed\"\nusd_per_mhw = 3\n",
                "usd_per_mhw",
            ),
            ("[market.energy]\nsource = \"nordpool\"\n", "nordpool"),
            (
                "[market.energy]\nsource = \"fixed\"\nusd_per_mwh = 3\nrefresh_s = \"often\"\n",
                "market.energy.refresh_s",
            ),
            (
                "[market.energy]\nsource = \"fixed\"\nusd_per_mwh = 3\nmax_age_s = -1\n",
                "market.energy.max_age_s",
            ),
            (
                "[market.hashprice]\nsource = \"fixed\"\nusd_per_ph_day = 45\n[market.hashprice.btc_price]\nsource = \"fixed\"\nusd = 1\n",
                "btc_price",
            ),
            ("[market]\nenergy_usd_per_mwh = 3\n", "energy_usd_per_mwh"),
            ("[market.checks]\nbtc = { min = 1, max = 2 }\n", "btc"),
            (
                "[market.ai_demand]\nsource = \"fixed\"\ngpus = \"many\"\n",
                "all",
            ),
            (
                "[[market.firm_contracts]]\nname = \"a\"\nhosts = [\"h\"]\nusd_per_mwh = 1\nprice = 2\n",
                "price",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        for (text, key) in [
            (
                "[market.hashprice]\nsource = \"mempool\"\nurl = \"mempool.space\"\n",
                "market.hashprice.url",
            ),
            (
                "[market.hashprice]\nsource = \"fixed\"\nusd_per_ph_day = 5000\n",
                "market.hashprice.usd_per_ph_day",
            ),
            (
                "[market.hashprice]\nsource = \"bitcoind\"\nurl = \"http://127.0.0.1:8332\"\nuser = \"pivot\"\n[market.hashprice.btc_price]\nsource = \"fixed\"\nusd = 100000\n",
                "market.hashprice",
            ),
            (
                "[market.hashprice]\nsource = \"bitcoind\"\nurl = \"http://127.0.0.1:8332\"\ncookie_file = \"/c\"\nuser = \"u\"\npassword_env = \"P\"\n[market.hashprice.btc_price]\nsource = \"fixed\"\nusd = 100000\n",
                "market.hashprice.cookie_file",
            ),
            (
                "[market.hashprice]\nsource = \"bitcoind\"\nurl = \"http://127.0.0.1:8332\"\ncookie_file = \"/c\"\n[market.hashprice.btc_price]\nsource = \"fixed\"\nusd = 5\n",
                "market.hashprice.btc_price.usd",
            ),
            (
                "[market.energy]\nsource = \"fixed\"\nusd_per_mwh = 40\nrefresh_s = 600\nmax_age_s = 300\n",
                "market.energy.max_age_s",
            ),
            (
                "[market.energy]\nsource = \"fixed\"\nusd_per_mwh = 40\ntimeout_s = 0\n",
                "market.energy.timeout_s",
            ),
            (
                "[market.energy]\nsource = \"ercot\"\nsettlement_point = \"HB_NORTH\"\n",
                "market.energy",
            ),
            (
                "[market.energy]\nsource = \"ercot\"\nurl = \"https://x.example/a.csv\"\nsettlement_point = \" \"\n",
                "market.energy.settlement_point",
            ),
            (
                "[market.energy]\nsource = \"feed\"\nurl = \"https://x.example/a\"\nformat = \"json\"\n",
                "market.energy.field",
            ),
            (
                "[market.energy]\nsource = \"time_of_use\"\ntime_zone = \"America/Chicago\"\ndefault_usd_per_mwh = 40\n[[market.energy.periods]]\ndays = [\"weekdays\"]\nstart_hour = 14\nend_hour = 19\nusd_per_mwh = 1e9\n",
                "market.energy.periods[0].usd_per_mwh",
            ),
            (
                "[market.ai_value]\nsource = \"trace\"\nfile = \"t.csv\"\nspeed = 0\n",
                "market.ai_value.speed",
            ),
            (
                "[market.checks]\nbtc_usd = { min = 10, max = 1 }\n",
                "market.checks.btc_usd",
            ),
        ] {
            let c = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn check_reads_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.csv");
        let c = parse(&format!(
            "[market.energy]\nsource = \"trace\"\nfile = \"{}\"\n",
            missing.display()
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.check(&NoEnv).unwrap_err().key, "market.energy.file");
        let c = parse(
            "[market.hashprice]\nsource = \"bitcoind\"\nurl = \"http://127.0.0.1:8332\"\nuser = \"pivot\"\npassword_env = \"PIVOT_BTC_RPC\"\n[market.hashprice.btc_price]\nsource = \"fixed\"\nusd = 100000\n",
        )
        .unwrap();
        let e = c.check(&NoEnv).unwrap_err();
        assert_eq!(e.key, "market.hashprice.password_env");
        assert!(e.problem.contains("PIVOT_BTC_RPC"), "{e}");
        assert!(MarketParts::from_config(&c, &NoEnv, Utc::now()).is_err());
    }

    #[test]
    fn a_workload_manager_is_an_ai_demand_source() {
        let c = parse(
            "[market.ai_demand]\nsource = \"slurm\"\npartitions = [\"ai\"]\nrefresh_s = 5\n\
             [market.ai_demand.slurm]\nslurm_conf = \"/etc/slurm/slurm.conf\"\ntimeout_s = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.ai_demand.timing.refresh_s, 5);
        let d = c.ai_demand.source.workload().unwrap();
        assert_eq!(d.source, crate::demand::config::DemandSource::Slurm);
        assert_eq!(d.partitions, ["ai"]);
        assert_eq!(d.slurm.unwrap().timeout_s, 3.0);
        let k = parse(
            "[market.ai_demand]\nsource = \"kubernetes\"\n[market.ai_demand.kubernetes]\nnamespaces = [\"ai\"]\n",
        )
        .unwrap();
        k.validate().unwrap();
        assert!(matches!(
            k.ai_demand.source,
            AiDemandSourceConfig::Kubernetes(_)
        ));

        // Typos and wrong values are named under market.ai_demand.
        let e =
            parse("[market.ai_demand]\nsource = \"slurm\"\npartition = [\"ai\"]\n").unwrap_err();
        assert!(e.contains("partition"), "{e}");
        for (text, key) in [
            (
                "[market.ai_demand]\nsource = \"slurmrestd\"\n",
                "market.ai_demand.slurmrestd",
            ),
            (
                "[market.ai_demand]\nsource = \"slurmrestd\"\n[market.ai_demand.slurmrestd]\nurl = \"slurm:6820\"\nuser_name = \"pivot\"\ntoken_env = \"SLURM_JWT\"\n",
                "market.ai_demand.slurmrestd.url",
            ),
            (
                "[market.ai_demand]\nsource = \"kubernetes\"\npartitions = [\"ai\"]\n",
                "market.ai_demand.partitions",
            ),
            (
                "[market.ai_demand]\nsource = \"slurm\"\n[market.ai_demand.kubernetes]\n",
                "market.ai_demand.kubernetes",
            ),
            (
                "[market.ai_demand]\nsource = \"slurm\"\n[market.ai_demand.slurm]\ntimeout_s = 0\n",
                "market.ai_demand.slurm.timeout_s",
            ),
        ] {
            let c = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        // check-config goes further: the token's variable must be set.
        let c = parse(
            "[market.ai_demand]\nsource = \"slurmrestd\"\n[market.ai_demand.slurmrestd]\nurl = \"https://slurm.lan:6820\"\nuser_name = \"pivot\"\ntoken_env = \"PIVOT_SLURM_JWT\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let e = c.check(&NoEnv).unwrap_err();
        assert_eq!(e.key, "market.ai_demand.slurmrestd.token_env");
        assert!(e.problem.contains("PIVOT_SLURM_JWT"), "{e}");
        // The source is built without touching the network (the client is made lazily).
        MarketParts::from_config(&c, &NoEnv, Utc::now()).unwrap();
    }

    #[tokio::test]
    async fn a_shared_trace_replays_every_input_accelerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.csv");
        std::fs::write(
            &path,
            "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand\n\
             2026-06-01T00:00:00Z,45,30,2.0,\n\
             2026-06-01T01:00:00Z,44,-5,2.5,16\n\
             2026-06-01T02:00:00Z,43,900,2.5,0\n",
        )
        .unwrap();
        let mut text = String::new();
        for input in ["hashprice", "energy", "ai_value", "ai_demand"] {
            text.push_str(&format!(
                "[market.{input}]\nsource = \"trace\"\nfile = \"{}\"\nspeed = 60\nstart_offset_s = 1800\n",
                path.display()
            ));
        }
        let c = parse(&text).unwrap();
        c.check(&NoEnv).unwrap();
        let start = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut m = Market::new(MarketParts::from_config(&c, &NoEnv, start).unwrap());
        // 30 s of wall time at 60× = 30 min of trace after the 30 min offset: the 01:00 row.
        let now = start + chrono::Duration::seconds(30);
        m.refresh_all(now).await;
        let p = m.snapshot(now).planner_inputs().unwrap();
        assert_eq!(p.hashprice_usd_per_ph_day, 44.0);
        assert_eq!(p.energy_usd_per_mwh, -5.0);
        assert_eq!(p.ai_gpu_demand, GpuWant::Gpus(16));
        // Past the trace's end (03:00) the refresh fails, and the last good value holds...
        let now = start + chrono::Duration::seconds(200);
        m.refresh_all(now).await;
        let s = m.snapshot(now);
        assert!(
            matches!(&s.energy.health, crate::market::Health::Failed(e) if e.to_string().contains("repeat = true"))
        );
        assert_eq!(s.planner_inputs().unwrap().energy_usd_per_mwh, -5.0);
        // ...until it ages out; then every input says why.
        let now = start + chrono::Duration::seconds(3_700);
        m.refresh_all(now).await;
        let reasons = m.snapshot(now).planner_inputs().unwrap_err();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("repeat = true"), "{}", reasons[0]);
    }
}
