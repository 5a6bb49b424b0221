//! The bundled trace's generator: 48 synthetic hours at five-minute rows for a Texas site in
//! July (not market data), made to show every kind of decision once. Seeded SplitMix64 (the
//! backtest's), so `pivot-site generate-trace --seed 7` writes the bundled file byte for byte.
//!
//! Local time is America/Chicago (UTC−5 in July); the trace starts on Tuesday 2026-07-14 at
//! midnight. What is in it, by local time:
//! - energy: a day/night shape (low 20s at night, high 40s in the afternoon, mid 50s in the
//!   evening), hotter on Wednesday (the S19j Pro's and M50S's breakevens are crossed in the
//!   late afternoon), with AR(1) noise;
//! - Tuesday 17:30–18:15: an evening spike to 420 USD/MWh, above every miner's breakeven;
//! - Wednesday 03:00–04:00: negative prices (wind at night);
//! - Tuesday 14:30–15:30: a demand-response deployment, the site capped at 45 % of its cap;
//! - Wednesday 15:00–17:30: a 4CP-style peak window, the site capped to what its GPU hosts
//!   draw, so every miner sleeps while AI keeps running;
//! - hashprice drifting from 45.0 to about 46.6 USD/PH/day (+3.6 %), with noise;
//! - AI demand that comes and goes in job-sized steps, from 8 to all 64 reference GPUs.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use pivot_controller::backtest::generate::Rng;
use pivot_controller::trace::{Trace, TraceError, TraceRow};

use crate::scenario::Reference;

/// Rows of five minutes in 48 hours.
const ROWS: i64 = 48 * 12;

fn start() -> DateTime<Utc> {
    // Tuesday 2026-07-14 00:00 in Chicago (CDT, UTC−5).
    DateTime::from_timestamp(1_784_005_200, 0).unwrap_or_default()
}

/// Piecewise-linear day shape of the energy price, USD/MWh, by local hour.
fn energy_shape(hour: f64) -> f64 {
    const POINTS: [(f64, f64); 12] = [
        (0.0, 24.0),
        (4.0, 21.0),
        (6.0, 24.0),
        (8.0, 32.0),
        (11.0, 40.0),
        (14.0, 46.0),
        (16.0, 50.0),
        (18.0, 55.0),
        (19.5, 57.0),
        (21.0, 44.0),
        (23.0, 30.0),
        (24.0, 24.0),
    ];
    for w in POINTS.windows(2) {
        let ((h0, p0), (h1, p1)) = (w[0], w[1]);
        if (h0..=h1).contains(&hour) {
            return p0 + (p1 - p0) * (hour - h0) / (h1 - h0);
        }
    }
    24.0
}

/// Reference GPUs wanted by local (day, hour): steps as jobs arrive and finish.
fn demand_level(day: i64, hour: f64) -> f64 {
    let steps: &[(f64, f64)] = if day == 0 {
        &[(0.0, 16.0), (8.0, 40.0), (13.5, 64.0), (20.0, 24.0)]
    } else {
        &[
            (0.0, 16.0),
            (7.0, 48.0),
            (12.0, 8.0),
            (16.0, 56.0),
            (21.0, 32.0),
        ]
    };
    steps
        .iter()
        .rev()
        .find(|(from, _)| hour >= *from)
        .map_or(16.0, |(_, gpus)| *gpus)
}

/// The spike's shape, one value per five-minute row from 17:30.
const SPIKE: [f64; 9] = [
    185.0, 260.0, 390.0, 420.0, 350.0, 300.0, 240.0, 160.0, 125.0,
];

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The trace for a site of `reference` size.
pub fn two_days(seed: u64, reference: Reference) -> Result<Trace, TraceError> {
    let mut rng = Rng::new(seed);
    let t0 = start();
    let mut noise: f64 = 0.0;
    let mut jitter: f64 = 0.0;
    let gpus = f64::from(reference.gpus);
    let scale = gpus / 64.0;
    let rows = (0..ROWS)
        .map(|i| {
            let time = t0 + Duration::minutes(5 * i);
            let day = i / 288;
            let minute = (i % 288) * 5;
            let hour = minute as f64 / 60.0;
            noise = 0.8 * noise + rng.normal() * 2.0;
            // Wednesday is hotter: the afternoon and evening run about 12 USD/MWh higher.
            let heat = if day == 1 {
                12.0 * (-(hour - 17.5).powi(2) / 10.0).exp()
            } else {
                0.0
            };
            let mut energy = energy_shape(hour) + heat + noise;
            if day == 0 && (17 * 60 + 30..18 * 60 + 15).contains(&minute) {
                let k = usize::try_from((minute - (17 * 60 + 30)) / 5).unwrap_or(0);
                energy = SPIKE.get(k).copied().unwrap_or(125.0) + noise;
            }
            if day == 1 && (3 * 60..4 * 60).contains(&minute) {
                energy = -18.0 + noise.clamp(-4.0, 4.0);
            }
            let cap_w = if day == 0 && (14 * 60 + 30..15 * 60 + 30).contains(&minute) {
                Some((reference.cap_w * 0.45 / 1000.0).round() * 1000.0)
            } else if day == 1 && (15 * 60..17 * 60 + 30).contains(&minute) {
                // What the GPU hosts draw serving (10.2 kW each) and a margin for the sleeping
                // miners and the reserve.
                Some((f64::from(reference.gpus) / 8.0 * 10_200.0 * 1.35 / 1000.0).round() * 1000.0)
            } else {
                None
            };
            // Hashprice: BTC drifting up over the two days, small noise.
            let hashprice = 45.0 + 1.6 * (i as f64 / ROWS as f64) + rng.normal() * 0.08;
            let ai_price = 2.0
                + 0.08 * (std::f64::consts::TAU * (hour - 14.0) / 24.0).cos()
                + if day == 1 { 0.05 } else { 0.0 };
            // Jobs start and end: the level moves by a few GPUs about every half hour.
            if i % 6 == 0 {
                jitter = [-4.0, 0.0, 0.0, 4.0][usize::try_from(rng.next_u64() % 4).unwrap_or(1)];
            }
            let demand = (demand_level(day, hour) * scale + jitter * scale).clamp(0.0, gpus);
            TraceRow {
                time,
                hashprice_usd_per_ph_day: round2(hashprice),
                energy_usd_per_mwh: round2(energy),
                ai_usd_per_gpu_hour: round2(ai_price),
                ai_gpu_demand: Some(demand.round() as u32),
                cap_w,
            }
        })
        .collect();
    Trace::from_rows(rows)
}

/// The trace as the bundled file: what it is and how it was made, then TRACE.csv.
pub fn bundled_csv(seed: u64, reference: Reference) -> Result<String, TraceError> {
    let trace = two_days(seed, reference)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# SYNTHETIC market trace for pivot-site: 48 hours at 5-minute rows, not market data.\n\
         # Made by `pivot-site generate-trace --seed {seed}` (site/src/generate.rs, which says\n\
         # what is in it); times are UTC, the site is in Texas (America/Chicago, UTC-5 in July),\n\
         # starting Tuesday 2026-07-14 00:00 local. The cap_w and ai_gpu_demand columns are for\n\
         # the reference site below; pivot-site scales them to the site it simulates.\n\
         # pivot-site reference: cap_w={} gpus={}",
        reference.cap_w, reference.gpus
    );
    out.push_str(&crate::scenario::to_csv(&trace));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: Reference = Reference {
        cap_w: 847_000.0,
        gpus: 64,
    };

    fn local(t: DateTime<Utc>) -> String {
        t.with_timezone(&chrono_tz::America::Chicago)
            .format("%a %H:%M")
            .to_string()
    }

    #[test]
    fn the_trace_has_every_event_it_promises() {
        let t = two_days(7, REF).unwrap();
        let rows = t.rows();
        assert_eq!(rows.len(), 576);
        assert_eq!(local(t.start()), "Tue 00:00");
        assert_eq!((t.end() - t.start()).num_hours(), 48);
        // The spike: above the S21's breakeven (17.5 J/TH at 46 USD/PH/day: 110 USD/MWh).
        let spike: Vec<&TraceRow> = rows
            .iter()
            .filter(|r| r.energy_usd_per_mwh > 110.0)
            .collect();
        assert!(spike.len() >= 8, "{}", spike.len());
        assert!(spike.iter().all(|r| local(r.time).starts_with("Tue 17") || local(r.time).starts_with("Tue 18")));
        // One negative hour, at night.
        let negative: Vec<&TraceRow> = rows.iter().filter(|r| r.energy_usd_per_mwh < 0.0).collect();
        assert_eq!(negative.len(), 12);
        assert_eq!(local(negative[0].time), "Wed 03:00");
        // Two cap windows: the DR event and the 4CP-style window.
        let windows = crate::scenario::cap_windows(&t);
        assert_eq!(windows.len(), 2);
        assert_eq!(
            (local(windows[0].start), local(windows[0].end)),
            ("Tue 14:30".into(), "Tue 15:30".into())
        );
        assert_eq!(
            (local(windows[1].start), local(windows[1].end)),
            ("Wed 15:00".into(), "Wed 17:30".into())
        );
        assert!(windows[1].target_power_w < windows[0].target_power_w);
        // Hashprice moves a few percent; AI demand comes and goes.
        let h: Vec<f64> = rows.iter().map(|r| r.hashprice_usd_per_ph_day).collect();
        let (lo, hi) = (
            h.iter().copied().fold(f64::MAX, f64::min),
            h.iter().copied().fold(f64::MIN, f64::max),
        );
        assert!((0.02..0.08).contains(&((hi - lo) / lo)), "{lo}..{hi}");
        let d: Vec<u32> = rows.iter().filter_map(|r| r.ai_gpu_demand).collect();
        assert!(
            d.iter().min().unwrap() <= &12 && d.iter().max().unwrap() >= &60,
            "{d:?}"
        );
    }

    #[test]
    fn the_bundled_file_is_this_generator_s_output() {
        let text = bundled_csv(7, crate::BUNDLED_REFERENCE).unwrap();
        assert_eq!(
            text,
            crate::BUNDLED_TRACE,
            "site/traces/two-days.csv differs from `pivot-site generate-trace --seed 7`; regenerate it"
        );
        let parsed = Trace::parse(&text, "bundled").unwrap();
        assert_eq!(parsed, two_days(7, crate::BUNDLED_REFERENCE).unwrap());
    }
}
