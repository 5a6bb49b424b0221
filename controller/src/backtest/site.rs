//! SITE.toml: the modelled fleet a backtest runs against (docs/formats.md). Every problem is
//! refused naming the file, line and key.

use std::path::Path;

use serde::Deserialize;

use crate::toml_lines::TomlLines;

/// Default modelled transition times (issue 9): a miner sleeps or wakes in 120 s, a GPU host is
/// released or drained in 300 s.
pub const MINER_TRANSITION_S: u32 = 120;
pub const HOST_TRANSITION_S: u32 = 300;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub cap_w: f64,
    #[serde(default)]
    pub reserve_w: f64,
    #[serde(default)]
    pub miners: Vec<MinerGroup>,
    #[serde(default)]
    pub gpu_hosts: Vec<HostGroup>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MinerGroup {
    pub count: u32,
    pub model: String,
    pub power_w: f64,
    pub hashrate_ths: f64,
    /// Draw asleep (default 0).
    #[serde(default)]
    pub sleep_w: f64,
    /// Lowest power target; hashrate scales linearly with power down to it.
    #[serde(default)]
    pub power_target_min_w: Option<f64>,
    /// Group label for schedules and protection (default: the model).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub transition_s: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Contract {
    Interruptible,
    Firm,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    pub count: u32,
    pub gpus: u32,
    /// GPU cap at full service, W.
    pub gpu_power_w: f64,
    /// GPU cap when drained, W.
    pub gpu_min_w: f64,
    pub host_base_w: f64,
    pub contract: Contract,
    #[serde(default)]
    pub firm_usd_per_mwh: Option<f64>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub transition_s: Option<u32>,
}

impl MinerGroup {
    pub fn label(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.model)
    }
}

impl HostGroup {
    pub fn label(&self) -> &str {
        self.group.as_deref().unwrap_or("gpu")
    }
    pub fn serving_w(&self) -> f64 {
        self.host_base_w + f64::from(self.gpus) * self.gpu_power_w
    }
    pub fn drained_w(&self) -> f64 {
        self.host_base_w + f64::from(self.gpus) * self.gpu_min_w
    }
}

/// A site file that was refused; `problems` are "line N: key: problem".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {}", problems.join("; "))]
pub struct SiteError {
    pub source_name: String,
    pub problems: Vec<String>,
}

/// More devices than this is a typo (and keeps every later count far from overflow).
const MAX_COUNT: u32 = 1_000_000;

impl Site {
    pub fn load(path: &Path) -> Result<Site, SiteError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SiteError {
            source_name: name.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Site::parse(&text, &name)
    }

    pub fn parse(text: &str, source_name: &str) -> Result<Site, SiteError> {
        let lines = TomlLines::new(text);
        let err = |problems| SiteError {
            source_name: source_name.to_owned(),
            problems,
        };
        let site: Site = toml::from_str(text).map_err(|e| err(vec![lines.describe(&e)]))?;
        let mut problems = Vec::new();
        let mut bad = |key: String, problem: String| problems.push(lines.at_key(&key, problem));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(site.cap_w) {
            bad(
                "cap_w".into(),
                format!("{} must be a number > 0", site.cap_w),
            );
        }
        if !non_negative(site.reserve_w) || site.reserve_w >= site.cap_w {
            bad(
                "reserve_w".into(),
                format!("{} must be >= 0 and below cap_w", site.reserve_w),
            );
        }
        for (i, m) in site.miners.iter().enumerate() {
            let k = |f: &str| format!("miners[{i}].{f}");
            if m.count == 0 || m.count > MAX_COUNT {
                bad(k("count"), format!("{} must be 1..={MAX_COUNT}", m.count));
            }
            if m.model.trim().is_empty() {
                bad(k("model"), "must not be empty".into());
            }
            for (f, v) in [("power_w", m.power_w), ("hashrate_ths", m.hashrate_ths)] {
                if !positive(v) {
                    bad(k(f), format!("{v} must be a number > 0"));
                }
            }
            if !non_negative(m.sleep_w) || (positive(m.power_w) && m.sleep_w >= m.power_w) {
                bad(
                    k("sleep_w"),
                    format!("{} must be >= 0 and below power_w", m.sleep_w),
                );
            }
            if let Some(min) = m.power_target_min_w
                && !(positive(min) && min <= m.power_w)
            {
                bad(
                    k("power_target_min_w"),
                    format!("{min} must be > 0 and at most power_w"),
                );
            }
            if m.transition_s.is_some_and(|s| s > 86_400) {
                bad(k("transition_s"), "more than a day".into());
            }
        }
        for (i, h) in site.gpu_hosts.iter().enumerate() {
            let k = |f: &str| format!("gpu_hosts[{i}].{f}");
            if h.count == 0 || h.count > MAX_COUNT {
                bad(k("count"), format!("{} must be 1..={MAX_COUNT}", h.count));
            }
            if h.gpus == 0 || h.gpus > 64 {
                bad(k("gpus"), format!("{} must be 1..=64", h.gpus));
            }
            if !positive(h.gpu_power_w) {
                bad(
                    k("gpu_power_w"),
                    format!("{} must be a number > 0", h.gpu_power_w),
                );
            }
            if !non_negative(h.gpu_min_w) || h.gpu_min_w > h.gpu_power_w {
                bad(
                    k("gpu_min_w"),
                    format!("{} must be >= 0 and at most gpu_power_w", h.gpu_min_w),
                );
            }
            if !non_negative(h.host_base_w) {
                bad(
                    k("host_base_w"),
                    format!("{} must be a number >= 0", h.host_base_w),
                );
            }
            match (h.contract, h.firm_usd_per_mwh) {
                (Contract::Firm, None) => bad(
                    k("firm_usd_per_mwh"),
                    "required with contract = \"firm\"".into(),
                ),
                (Contract::Firm, Some(v)) if !non_negative(v) => {
                    bad(k("firm_usd_per_mwh"), format!("{v} must be a number >= 0"));
                }
                (Contract::Interruptible, Some(_)) => {
                    bad(k("firm_usd_per_mwh"), "only for contract = \"firm\"".into());
                }
                _ => {}
            }
            if h.transition_s.is_some_and(|s| s > 86_400) {
                bad(k("transition_s"), "more than a day".into());
            }
        }
        if problems.is_empty() {
            Ok(site)
        } else {
            Err(err(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_and_values_are_refused_with_line_and_key() {
        let e = Site::parse("cap_w = 1e6\n[[miners]]\ncount = 2\nmodel = \"S21\"\npower_w = -3\nhashrate_ths = 200\n", "s.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "s.toml: line 5: miners[0].power_w: -3 must be a number > 0"
        );
        let e = Site::parse("cap_w = 1e6\n\n[[gpu_hosts]]\ncount = 1\ngpus = 8\ngpu_power_w = 700\ngpu_min_w = 200\nhost_base_w = 4600\ncontract = \"firm\"\n", "s.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gpu_hosts[0].firm_usd_per_mwh: required"), "{e}");
        let e = Site::parse("cap_w = 1e6\nreserve = 5\n", "s.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("s.toml: line 2: reserve: unknown field `reserve`"),
            "{e}"
        );
        let e = Site::parse("cap_w = 1e6\n[[miners]]\ncount = \"many\"\n", "s.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("s.toml: line 3: miners[0].count:"), "{e}");
    }
}
