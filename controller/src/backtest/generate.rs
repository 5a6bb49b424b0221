//! Deterministic, seeded traces and sites for tests and benchmarks (docs/formats.md describes
//! them). The generator is its own small PRNG (SplitMix64), so a seed gives the same trace on
//! every platform and with every version of any random-number crate.
//!
//! - [`hybrid_site`]: a ~13 MW hybrid site — S19j Pro (29.5 J/TH), S19 XP (21.5), S21 (17.5),
//!   200 interruptible and 40 firm 8×H100 hosts (4.6 kW base + 8 × 700 W) — whose loads exceed
//!   the cap, so the cap binds and every watt has a use.
//! - [`month_with_spikes`]: 30 days at 5 minutes: a daily price shape with noise, evening price
//!   spikes of 300–3,000 USD/MWh lasting 15 minutes to 2 hours, negative nights, three DR caps,
//!   and AI demand that comes and goes (level changes every few hours, noise between).
//! - [`wobble_week`]: 7 days at 5 minutes, post-halving (hashprice ~28 USD/PH/day) with the
//!   energy price wobbling around the S19j Pro's breakeven (~39.5 USD/MWh), and noisy AI demand.

use chrono::{DateTime, Duration, Timelike, Utc};

use super::site::{Contract, HostGroup, MinerGroup, Site};
use crate::trace::{Trace, TraceError, TraceRow};

/// SplitMix64: tiny, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn miners(count: u32, model: &str, power_w: f64, hashrate_ths: f64) -> MinerGroup {
    MinerGroup {
        count,
        model: model.into(),
        power_w,
        hashrate_ths,
        sleep_w: 15.0,
        power_target_min_w: None,
        group: None,
        transition_s: None,
    }
}

fn h100(count: u32, contract: Contract) -> HostGroup {
    HostGroup {
        count,
        gpus: 8,
        gpu_power_w: 700.0,
        gpu_min_w: 200.0,
        host_base_w: 4600.0,
        contract,
        firm_usd_per_mwh: (contract == Contract::Firm).then_some(190.0),
        group: Some(
            if contract == Contract::Firm {
                "h100-firm"
            } else {
                "h100"
            }
            .into(),
        ),
        transition_s: None,
    }
}

/// The benchmark's ~13 MW hybrid site: 13.24 MW of load under a 13 MW cap (0.2 MW reserve).
pub fn hybrid_site() -> Site {
    Site {
        cap_w: 13_000_000.0,
        reserve_w: 200_000.0,
        miners: vec![
            miners(1200, "S19j Pro", 3068.0, 104.0),
            miners(1200, "S19 XP", 3010.0, 140.0),
            miners(1000, "S21", 3500.0, 200.0),
        ],
        gpu_hosts: vec![h100(200, Contract::Interruptible), h100(40, Contract::Firm)],
    }
}

/// A site of about `devices` units (miners in the three classes, one GPU host per 40), with the
/// cap at 97 % of the load, for timing runs.
pub fn scaled_site(devices: u32) -> Site {
    let hosts = (devices / 40).max(1);
    let per_class = (devices - hosts.min(devices)) / 3;
    let mut site = Site {
        cap_w: 0.0,
        reserve_w: 0.0,
        miners: vec![
            miners(per_class, "S19j Pro", 3068.0, 104.0),
            miners(per_class, "S19 XP", 3010.0, 140.0),
            miners(per_class, "S21", 3500.0, 200.0),
        ],
        gpu_hosts: vec![h100(hosts, Contract::Interruptible)],
    };
    let load = full_load_w(&site);
    site.cap_w = (load * 0.97).round();
    site.reserve_w = (load * 0.01).round();
    site
}

/// Every miner mining and every host serving: what a site's cap is set against.
pub(super) fn full_load_w(site: &Site) -> f64 {
    let miners: f64 = site
        .miners
        .iter()
        .map(|m| f64::from(m.count) * m.power_w)
        .sum();
    let hosts: f64 = site
        .gpu_hosts
        .iter()
        .map(|h| f64::from(h.count) * h.serving_w())
        .sum();
    miners + hosts
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
}

/// AI demand in GPUs: a level that changes every 2–8 hours, plus job-sized noise between.
struct Demand {
    level: f64,
    until: DateTime<Utc>,
    total_gpus: f64,
}

impl Demand {
    fn next(&mut self, rng: &mut Rng, t: DateTime<Utc>) -> u32 {
        if t >= self.until {
            // Quiet spells, partial use and full use, in about equal measure.
            let r = rng.unit();
            self.level = if r < 0.3 {
                0.0
            } else if r < 0.7 {
                rng.range(0.2, 0.7) * self.total_gpus
            } else {
                self.total_gpus
            };
            self.until = t + Duration::minutes(rng.range(120.0, 480.0).round() as i64);
        }
        let noise = rng.normal() * 0.04 * self.total_gpus;
        (self.level + noise).clamp(0.0, self.total_gpus).round() as u32
    }
}

/// 30 days at 5 minutes from 2026-06-01: spikes, negative nights, DR caps, AI demand.
pub fn month_with_spikes(seed: u64, site: &Site) -> Result<Trace, TraceError> {
    let mut rng = Rng::new(seed);
    let start = at("2026-06-01T00:00:00Z");
    let n = 30 * 288;
    let total_gpus = interruptible_gpus(site);
    let mut demand = Demand {
        level: total_gpus,
        until: start,
        total_gpus,
    };
    // Spikes: about eight, in the afternoons and evenings; DR caps: three of 1–2 hours.
    let spikes: Vec<(usize, usize, f64)> = (0..8)
        .map(|_| {
            let day = (rng.unit() * 30.0) as usize;
            let at = day * 288 + 14 * 12 + (rng.unit() * 84.0) as usize;
            let len = 3 + (rng.unit() * 21.0) as usize;
            (at, at + len, rng.range(300.0, 3000.0))
        })
        .collect();
    let drs: Vec<(usize, usize, f64)> = (0..3)
        .map(|k| {
            let at = (3 + k * 9) * 288 + 15 * 12 + (rng.unit() * 24.0) as usize;
            let len = 12 + (rng.unit() * 12.0) as usize;
            (at, at + len, site.cap_w * rng.range(0.5, 0.7))
        })
        .collect();
    let negative_nights: Vec<bool> = (0..30).map(|_| rng.unit() < 0.3).collect();
    let mut noise = 0.0;
    let mut hashprice: f64 = 45.0;
    let rows = (0..n)
        .map(|i| {
            let t = start + Duration::minutes(5 * i as i64);
            let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
            noise = 0.85 * noise + rng.normal() * 6.0;
            hashprice = (hashprice + rng.normal() * 0.05).clamp(38.0, 52.0);
            // Low at night, a peak around 17:00.
            let shape = 28.0 + 22.0 * (-(hour - 17.0).powi(2) / 12.0).exp()
                - 6.0 * (-(hour - 3.0).powi(2) / 8.0).exp();
            let mut energy = shape + noise;
            let day = i / 288;
            if negative_nights[day] && (1.0..5.0).contains(&hour) {
                energy = -5.0 - rng.range(0.0, 25.0);
            }
            if let Some((_, _, p)) = spikes.iter().find(|(a, b, _)| (*a..*b).contains(&i)) {
                energy = p * rng.range(0.8, 1.2);
            }
            let cap_w = drs
                .iter()
                .find(|(a, b, _)| (*a..*b).contains(&i))
                .map(|(_, _, c)| c.round());
            TraceRow {
                time: t,
                hashprice_usd_per_ph_day: round2(hashprice),
                energy_usd_per_mwh: round2(energy),
                ai_usd_per_gpu_hour: 2.0,
                ai_gpu_demand: Some(demand.next(&mut rng, t)),
                cap_w,
            }
        })
        .collect();
    Trace::from_rows(rows)
}

/// 7 days at 5 minutes after a halving: energy wobbling around the S19j Pro's breakeven.
pub fn wobble_week(seed: u64, site: &Site) -> Result<Trace, TraceError> {
    let mut rng = Rng::new(seed);
    let start = at("2028-04-20T00:00:00Z");
    let total_gpus = interruptible_gpus(site);
    let mut demand = Demand {
        level: total_gpus,
        until: start,
        total_gpus,
    };
    let mut noise = 0.0;
    let rows = (0..7 * 288)
        .map(|i| {
            let t = start + Duration::minutes(5 * i as i64);
            noise = 0.5 * noise + rng.normal() * 8.0;
            let hashprice = 28.0 + rng.normal() * 0.3;
            TraceRow {
                time: t,
                hashprice_usd_per_ph_day: round2(hashprice),
                energy_usd_per_mwh: round2(39.5 + noise),
                ai_usd_per_gpu_hour: 2.0,
                ai_gpu_demand: Some(demand.next(&mut rng, t)),
                cap_w: None,
            }
        })
        .collect();
    Trace::from_rows(rows)
}

fn interruptible_gpus(site: &Site) -> f64 {
    site.gpu_hosts
        .iter()
        .filter(|h| h.contract == Contract::Interruptible)
        .map(|h| f64::from(h.count * h.gpus))
        .sum()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Writes a trace as TRACE.csv.
pub fn to_csv(trace: &Trace) -> String {
    let mut s = String::from(
        "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w\n",
    );
    for r in trace.rows() {
        s.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.hashprice_usd_per_ph_day,
            r.energy_usd_per_mwh,
            r.ai_usd_per_gpu_hour,
            r.ai_gpu_demand.map(|d| d.to_string()).unwrap_or_default(),
            r.cap_w.map(|c| c.to_string()).unwrap_or_default(),
        ));
    }
    s
}
