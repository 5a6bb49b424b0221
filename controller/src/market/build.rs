//! Turns `[market]` into sources.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ai::{AiDemandSourceConfig, AiValueSourceConfig};
use super::config::{self, InputConfig, MarketConfig, MarketConfigError};
use super::energy::tou::TouSchedule;
use super::energy::{CsvPriceSource, EnergyDocument, EnergySourceConfig, FeedFormat, TouSource};
use super::engine::{MarketParts, Sourced};
use super::feed::{JsonFeed, JsonNumberSource, Location};
use super::hashprice::HashpriceSourceConfig;
use super::hashprice::bitcoind::{BitcoindSource, RpcAuth, Secret};
use super::hashprice::btc_price::{BtcPrice, BtcPriceConfig};
use super::hashprice::mempool::MempoolSource;
use super::http::{self, HttpClient};
use super::reading::{AiDemand, AiValue, EnergyPrice, Hashprice};
use super::source::{self, Fixed, MarketSource, TraceConfig, TraceReplay};
use crate::config::EnvSource;
use crate::demand::config::DemandSource;
use crate::demand::source::WorkloadDemand;
use crate::trace::{Trace, TraceRow};

type Traces = HashMap<std::path::PathBuf, std::sync::Arc<Trace>>;

fn err(key: &str, problem: impl Into<String>) -> MarketConfigError {
    MarketConfigError {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

fn timeout<S>(c: &InputConfig<S>) -> Duration {
    Duration::from_secs(c.timing.timeout_s)
}

fn replay<V: Send + 'static>(
    traces: &mut Traces,
    t: &TraceConfig,
    key: &str,
    now: DateTime<Utc>,
    pick: fn(&TraceRow) -> V,
) -> Result<Box<dyn MarketSource<V>>, MarketConfigError> {
    let trace = config::load_trace(traces, t, key)?;
    let clock = t.clock(&trace, now);
    Ok(Box::new(TraceReplay::new(trace, &t.file, clock, pick)))
}

/// The HTTP client, built only when a source needs one: a site with fixed prices starts even
/// where TLS roots cannot be loaded.
struct LazyClient(Option<HttpClient>);

impl LazyClient {
    fn get(&mut self) -> Result<HttpClient, MarketConfigError> {
        if let Some(c) = &self.0 {
            return Ok(c.clone());
        }
        let c = HttpClient::new()
            .map_err(|e| err("market", format!("cannot build the HTTP client: {e}")))?;
        self.0 = Some(c.clone());
        Ok(c)
    }
}

impl MarketParts {
    /// Builds every source of `[market]`. `env` supplies bitcoind's password; `now` starts
    /// trace replays. Trace files are read here, once per path.
    pub fn from_config(
        c: &MarketConfig,
        env: &dyn EnvSource,
        now: DateTime<Utc>,
    ) -> Result<Self, MarketConfigError> {
        c.validate()?;
        let mut client = LazyClient(None);
        let mut traces = Traces::new();
        let url = |u: &str, key: &str| http::parse_url(u).map_err(|e| err(key, e));

        let h = &c.hashprice;
        let hashprice: Box<dyn MarketSource<Hashprice>> = match &h.source {
            HashpriceSourceConfig::Mempool {
                url: base,
                fees,
                network_hashrate,
                btc_price,
            } => {
                let price_config = btc_price
                    .clone()
                    .unwrap_or(BtcPriceConfig::Mempool { url: base.clone() });
                let price = BtcPrice::from_config(&price_config)
                    .map_err(|e| err("market.hashprice.btc_price", e))?;
                Box::new(MempoolSource::new(
                    url(base, "market.hashprice.url")?,
                    *fees,
                    *network_hashrate,
                    price,
                    client.get()?,
                    timeout(h),
                ))
            }
            HashpriceSourceConfig::Bitcoind {
                url: rpc,
                cookie_file,
                user,
                password_env,
                network_hashrate,
                btc_price,
            } => {
                let auth = match (cookie_file, user, password_env) {
                    (Some(path), _, _) => RpcAuth::Cookie(path.clone()),
                    (None, Some(user), Some(var)) => RpcAuth::Password {
                        user: user.clone(),
                        password: Secret::new(config::password(env, var)?),
                    },
                    _ => {
                        return Err(err(
                            "market.hashprice",
                            "bitcoind needs cookie_file, or user and password_env",
                        ));
                    }
                };
                let price = BtcPrice::from_config(btc_price)
                    .map_err(|e| err("market.hashprice.btc_price", e))?;
                Box::new(BitcoindSource::new(
                    url(rpc, "market.hashprice.url")?,
                    auth,
                    *network_hashrate,
                    price,
                    client.get()?,
                    timeout(h),
                ))
            }
            HashpriceSourceConfig::Fixed { usd_per_ph_day } => {
                Box::new(Fixed::new(Hashprice::only(*usd_per_ph_day)))
            }
            HashpriceSourceConfig::Trace(t) => replay(
                &mut traces,
                t,
                "market.hashprice.file",
                now,
                source::hashprice_of,
            )?,
        };

        let e = &c.energy;
        let energy: Box<dyn MarketSource<EnergyPrice>> = match &e.source {
            EnergySourceConfig::Fixed { usd_per_mwh } => Box::new(Fixed::new(EnergyPrice {
                usd_per_mwh: *usd_per_mwh,
            })),
            EnergySourceConfig::TimeOfUse {
                time_zone,
                default_usd_per_mwh,
                periods,
            } => Box::new(TouSource::new(TouSchedule::new(
                time_zone,
                *default_usd_per_mwh,
                periods,
                "market.energy",
            )?)),
            EnergySourceConfig::Ercot {
                url,
                file,
                settlement_point,
            } => Box::new(CsvPriceSource::new(
                Location::from_config(url.as_deref(), file.as_ref(), "market.energy")?,
                EnergyDocument::Ercot {
                    settlement_point: settlement_point.trim().to_owned(),
                },
                client.get()?,
                timeout(e),
            )),
            EnergySourceConfig::Feed {
                url,
                file,
                format,
                field,
                time_field,
            } => {
                let location =
                    Location::from_config(url.as_deref(), file.as_ref(), "market.energy")?;
                match (format, field) {
                    (FeedFormat::Csv, _) => Box::new(CsvPriceSource::new(
                        location,
                        EnergyDocument::Csv,
                        client.get()?,
                        timeout(e),
                    )),
                    (FeedFormat::Json, Some(field)) => Box::new(JsonNumberSource::new(
                        JsonFeed::new("energy feed", location, field.clone(), time_field.clone()),
                        client.get()?,
                        timeout(e),
                        |usd_per_mwh| EnergyPrice { usd_per_mwh },
                    )),
                    (FeedFormat::Json, None) => {
                        return Err(err(
                            "market.energy.field",
                            "a JSON feed needs the field that holds the price",
                        ));
                    }
                }
            }
            EnergySourceConfig::Trace(t) => {
                replay(&mut traces, t, "market.energy.file", now, source::energy_of)?
            }
        };

        let a = &c.ai_value;
        let ai_value: Box<dyn MarketSource<AiValue>> = match &a.source {
            AiValueSourceConfig::Fixed { usd_per_gpu_hour } => Box::new(Fixed::new(AiValue {
                usd_per_gpu_hour: *usd_per_gpu_hour,
            })),
            AiValueSourceConfig::Feed {
                url,
                file,
                field,
                time_field,
            } => Box::new(JsonNumberSource::new(
                JsonFeed::new(
                    "ai value feed",
                    Location::from_config(url.as_deref(), file.as_ref(), "market.ai_value")?,
                    field.clone(),
                    time_field.clone(),
                ),
                client.get()?,
                timeout(a),
                |usd_per_gpu_hour| AiValue { usd_per_gpu_hour },
            )),
            AiValueSourceConfig::Trace(t) => replay(
                &mut traces,
                t,
                "market.ai_value.file",
                now,
                source::ai_value_of,
            )?,
        };

        let d = &c.ai_demand;
        let ai_demand: Box<dyn MarketSource<AiDemand>> = match &d.source {
            AiDemandSourceConfig::Fixed { gpus } => Box::new(Fixed::new(AiDemand::wanted(*gpus))),
            AiDemandSourceConfig::Trace(t) => replay(
                &mut traces,
                t,
                "market.ai_demand.file",
                now,
                source::ai_demand_of,
            )?,
            AiDemandSourceConfig::Slurm(_)
            | AiDemandSourceConfig::Slurmrestd(_)
            | AiDemandSourceConfig::Kubernetes(_) => {
                let config = d.source.workload().ok_or_else(|| {
                    err("market.ai_demand.source", "not a workload manager's demand")
                })?;
                // slurmrestd shares the market's HTTPS client; squeue and Kubernetes need none.
                let client = match config.source {
                    DemandSource::Slurmrestd => Some(client.get()?),
                    DemandSource::Slurm | DemandSource::Kubernetes => None,
                };
                Box::new(WorkloadDemand::new(config, client))
            }
        };

        Ok(MarketParts {
            hashprice: Sourced {
                source: hashprice,
                timing: h.timing,
            },
            energy: Sourced {
                source: energy,
                timing: e.timing,
            },
            ai_value: Sourced {
                source: ai_value,
                timing: a.timing,
            },
            ai_demand: Sourced {
                source: ai_demand,
                timing: d.timing,
            },
            firm_contracts: c.firm_contracts.clone(),
            checks: c.checks.clone(),
        })
    }
}
