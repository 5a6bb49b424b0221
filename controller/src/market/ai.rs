//! AI value and AI demand: firm contracts (configuration only), the value of interruptible GPU
//! capacity (fixed, a JSON feed, a trace), and how many GPUs the AI side could use now.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::reading::GpuWant;
use super::source::TraceConfig;
use crate::demand::config::{DemandConfig, DemandKeys, DemandSource};

/// `[[market.firm_contracts]]`: hosts leased take-or-pay. They are always powered and earn
/// `usd_per_mwh` on their whole draw.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmContract {
    pub name: String,
    /// Agent host ids.
    pub hosts: Vec<String>,
    pub usd_per_mwh: f64,
}

/// Checks contracts: names and hosts unique, prices finite and not negative.
pub fn validate_firm(contracts: &[FirmContract]) -> Result<(), (String, String)> {
    let mut hosts: Vec<(&str, &str)> = Vec::new();
    for (i, c) in contracts.iter().enumerate() {
        let k = |f: &str| format!("market.firm_contracts[{i}].{f}");
        if c.name.trim().is_empty() {
            return Err((k("name"), "must not be empty".into()));
        }
        if contracts[..i].iter().any(|o| o.name == c.name) {
            return Err((k("name"), format!("`{}` is used twice", c.name)));
        }
        if !(c.usd_per_mwh.is_finite() && c.usd_per_mwh >= 0.0) {
            return Err((
                k("usd_per_mwh"),
                format!("must be a price >= 0, got {}", c.usd_per_mwh),
            ));
        }
        if c.hosts.is_empty() {
            return Err((k("hosts"), "names no host".into()));
        }
        for h in &c.hosts {
            if let Some((_, other)) = hosts.iter().find(|(x, _)| *x == h.as_str()) {
                return Err((
                    k("hosts"),
                    format!("host `{h}` is already under contract `{other}`"),
                ));
            }
            hosts.push((h, &c.name));
        }
    }
    Ok(())
}

/// `[market.ai_value]`, by `source`: what a GPU-hour of interruptible capacity with work earns.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum AiValueSourceConfig {
    Fixed {
        usd_per_gpu_hour: f64,
    },
    /// A JSON document (URL or file) with the price at `field`.
    Feed {
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        file: Option<PathBuf>,
        field: String,
        #[serde(default)]
        time_field: Option<String>,
    },
    Trace(TraceConfig),
}

/// `[market.ai_demand]`, by `source`: the site's workload manager (what pending and running
/// jobs want), configuration, or a trace.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum AiDemandSourceConfig {
    /// `gpus = "all"` or a number.
    Fixed {
        gpus: GpuWant,
    },
    Trace(TraceConfig),
    /// `squeue --json` run by the controller (`partitions`, `[market.ai_demand.slurm]`).
    Slurm(DemandKeys),
    /// slurmrestd's jobs endpoint (`[market.ai_demand.slurmrestd]`: url, user_name, token).
    Slurmrestd(DemandKeys),
    /// Pods asking for GPUs (`[market.ai_demand.kubernetes]`: kubeconfig, namespaces).
    Kubernetes(DemandKeys),
}

impl AiDemandSourceConfig {
    /// The workload manager's demand configuration, when a workload manager is the source.
    pub fn workload(&self) -> Option<DemandConfig> {
        match self {
            Self::Slurm(k) => Some(k.with_source(DemandSource::Slurm)),
            Self::Slurmrestd(k) => Some(k.with_source(DemandSource::Slurmrestd)),
            Self::Kubernetes(k) => Some(k.with_source(DemandSource::Kubernetes)),
            Self::Fixed { .. } | Self::Trace(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for GpuWant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GpuWant;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""all" or a number of GPUs"#)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<GpuWant, E> {
                if s == "all" {
                    Ok(GpuWant::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GpuWant, E> {
                u32::try_from(n)
                    .map(GpuWant::Gpus)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GpuWant, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct W {
        gpus: GpuWant,
    }

    #[test]
    fn gpu_demand_reads_all_or_a_count() {
        assert_eq!(
            toml::from_str::<W>("gpus = \"all\"").unwrap().gpus,
            GpuWant::All
        );
        assert_eq!(
            toml::from_str::<W>("gpus = 64").unwrap().gpus,
            GpuWant::Gpus(64)
        );
        let e = toml::from_str::<W>("gpus = -1").err().unwrap().to_string();
        assert!(e.contains(r#""all" or a number of GPUs"#), "{e}");
        assert!(toml::from_str::<W>("gpus = \"some\"").is_err());
        assert!(toml::from_str::<W>("gpus = 5000000000").is_err());
    }

    #[test]
    fn a_host_under_two_contracts_is_refused() {
        let c = |name: &str, hosts: &[&str]| FirmContract {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            usd_per_mwh: 180.0,
        };
        assert!(validate_firm(&[c("a", &["gpu-1"]), c("b", &["gpu-2"])]).is_ok());
        let e = validate_firm(&[c("a", &["gpu-1"]), c("b", &["gpu-1"])]).unwrap_err();
        assert_eq!(e.0, "market.firm_contracts[1].hosts");
        assert!(e.1.contains("`a`"), "{}", e.1);
        assert_eq!(
            validate_firm(&[c("a", &["x"]), c("a", &["y"])])
                .unwrap_err()
                .0,
            "market.firm_contracts[1].name"
        );
        assert!(validate_firm(&[c("a", &[])]).is_err());
    }
}
