//! The backtest: "what would this site have earned over this trace?" Runs the planner — the
//! same `planner::plan`, with the same band, dwell, ramp and AI rules — over a price trace
//! against a modelled fleet (SITE.toml), with each move taking the modelled transition time
//! during which the device draws and earns as before. The model and the formats are in
//! docs/formats.md; the static site and the hindsight bound it is measured against are in
//! [`baseline`].

pub mod baseline;
mod fleet;
pub mod generate;
mod sim;
pub mod site;

#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

pub use baseline::Totals;
pub use site::{Site, SiteError};

use crate::policy::PolicyDocument;
use crate::trace::Trace;

/// How a backtest runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub policy: PolicyDocument,
    /// How long before a trace's lower cap the planner hears of it (as a DR event).
    pub dr_notice: Duration,
    /// Replanning timer, besides every trace row, every transition's end and every
    /// demand-response event heard of or ended.
    pub replan_every: Duration,
    /// A timer tick replans only once the last plan's `revisit_at` has come (nothing else
    /// could have changed its answer); `false` replans on every tick.
    pub skip_idle_replans: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: PolicyDocument::default(),
            dr_notice: Duration::minutes(10),
            replan_every: Duration::seconds(60),
            skip_idle_replans: true,
        }
    }
}

/// One trace row's outcome (averages over the row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub time: DateTime<Utc>,
    pub mining_w: f64,
    pub ai_w: f64,
    /// Cap in force (the row's, else the site's).
    pub cap_w: f64,
    pub margin_usd_per_h: f64,
    /// Mining revenue over the row, per hour.
    pub mining_usd_per_h: f64,
    /// AI revenue (firm included) over the row, per hour.
    pub ai_usd_per_h: f64,
}

/// A backtest's result; `--json` prints it as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub margin_usd: f64,
    pub mining_revenue_usd: f64,
    pub ai_revenue_usd: f64,
    pub energy_cost_usd: f64,
    /// Rows in which the modelled draw exceeded the cap in force at any moment.
    pub cap_violations: u32,
    /// Transitions completed (a miner woken or put to sleep, a host released or drained).
    pub device_switches: u64,
    /// Plans made (every row, transition end and DR event heard of, and the timer ticks that
    /// were not skipped).
    pub plans: u64,
    pub intervals: Vec<Interval>,
}

/// Runs the planner over `trace` against `site`.
pub fn run(site: &Site, trace: &Trace, options: &Options) -> Report {
    sim::run(site, trace, options)
}

/// Share of the decision value captured: (x − static) / (bound − static).
pub fn captured(x: f64, static_site: f64, bound: f64) -> f64 {
    let span = bound - static_site;
    if span.abs() < 1e-9 {
        1.0
    } else {
        (x - static_site) / span
    }
}

impl Report {
    /// The human summary `pivot-controller backtest` prints by default.
    pub fn summary(&self, trace: &Trace, static_site: &Totals, bound: &Totals) -> String {
        let days = (trace.end() - trace.start()).num_minutes() as f64 / 1440.0;
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "backtest: {} rows, {:.1} days from {}",
            trace.rows().len(),
            days,
            trace.start().format("%Y-%m-%d %H:%M UTC")
        ));
        line(format!("  margin            {:>14.2} USD", self.margin_usd));
        line(format!(
            "  mining revenue    {:>14.2} USD",
            self.mining_revenue_usd
        ));
        line(format!(
            "  AI revenue        {:>14.2} USD",
            self.ai_revenue_usd
        ));
        line(format!(
            "  energy cost       {:>14.2} USD",
            self.energy_cost_usd
        ));
        line(format!(
            "  cap violations    {:>14} intervals",
            self.cap_violations
        ));
        line(format!("  device switches   {:>14}", self.device_switches));
        line(format!(
            "  static site       {:>14.2} USD   (every host powered, miners in the rest of the cap)",
            static_site.margin_usd
        ));
        line(format!(
            "  hindsight bound   {:>14.2} USD   (perfect foresight, no switching cost)",
            bound.margin_usd
        ));
        line(format!(
            "  pivot over static {:>14.2} USD = {:.1} % of the decision value (bound - static)",
            self.margin_usd - static_site.margin_usd,
            100.0 * captured(self.margin_usd, static_site.margin_usd, bound.margin_usd)
        ));
        s
    }
}

/// A duration as "90", "90s", "10m" or "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 10m or 1h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .filter(|v| *v <= 366 * 86_400)
    .ok_or_else(|| format!("`{s}` is not a duration like 90s, 10m or 1h (at most a year)"))?;
    Ok(Duration::seconds(secs))
}
