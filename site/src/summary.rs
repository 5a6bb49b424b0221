//! What the run earned, read back the way an operator would: the controller's site history
//! (`GetHistory`) integrated over trace time, each sample's margin held until the next, and
//! the cap in force at each sample from the trace; beside it, what `pivot-controller backtest`
//! computes for the same site, trace and policy.

use chrono::{DateTime, Utc};
use pivot_controller::backtest::{self, Options, Site, Totals, baseline};
use pivot_controller::trace::Trace;
use pivot_proto::v1;
use serde::Serialize;

use crate::clock::SiteClock;

/// The history of a run, integrated in trace time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Realised {
    pub margin_usd: f64,
    /// Trace hours the samples cover.
    pub hours: f64,
    pub samples: usize,
    /// Samples whose measured draw was above the cap in force at their trace time.
    pub measured_above_cap: usize,
    /// Samples whose committed power was above it.
    pub committed_above_cap: usize,
}

/// The cap in force at trace time `t`: the trace's, else the site's.
pub fn cap_at(trace: &Trace, site_cap_w: f64, t: DateTime<Utc>) -> f64 {
    trace.at(t).and_then(|r| r.cap_w).unwrap_or(site_cap_w)
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// Integrates `samples` (any order) between the trace's start and end: each sample's margin
/// holds from its time until the next sample's.
pub fn realised(
    samples: &[v1::SiteSample],
    clock: &SiteClock,
    trace: &Trace,
    site_cap_w: f64,
) -> Realised {
    let mut rows: Vec<(DateTime<Utc>, &v1::SiteSample)> = samples
        .iter()
        .filter_map(|s| Some((clock.trace_time(time(s.at.as_ref())?), s)))
        .filter(|(t, _)| *t >= trace.start() && *t < trace.end())
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    let mut out = Realised {
        samples: rows.len(),
        ..Realised::default()
    };
    for (i, (t, s)) in rows.iter().enumerate() {
        let until = rows.get(i + 1).map_or(trace.end(), |(next, _)| *next);
        let hours = (until - *t).num_milliseconds() as f64 / 3.6e6;
        out.hours += hours;
        out.margin_usd += s.margin_usd_per_h.unwrap_or(0.0) * hours;
        let cap = cap_at(trace, site_cap_w, *t);
        if s.measured_w > cap {
            out.measured_above_cap += 1;
        }
        if s.committed_w > cap {
            out.committed_above_cap += 1;
        }
    }
    out
}

/// The backtest of the same site, trace and policy, and its two baselines.
#[derive(Debug, Clone, Serialize)]
pub struct Modelled {
    pub backtest: backtest::Report,
    pub static_site: Totals,
    pub hindsight_bound: Totals,
}

pub fn modelled(site: &Site, trace: &Trace, options: &Options) -> Modelled {
    Modelled {
        backtest: backtest::run(site, trace, options),
        static_site: baseline::static_site(site, trace),
        hindsight_bound: baseline::hindsight_bound(site, trace),
    }
}

/// `(a − b) / |b|` in percent; 0 when both are 0.
pub fn percent_off(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        if a == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (a - b) / b.abs() * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sample(wall: &str, margin: f64, measured: f64) -> v1::SiteSample {
        v1::SiteSample {
            at: Some(pivot_proto::model::timestamp_to_proto(at(wall))),
            cap_w: 1000.0,
            committed_w: measured,
            measured_w: measured,
            mining_w: 0.0,
            ai_w: 0.0,
            margin_usd_per_h: Some(margin),
        }
    }

    #[test]
    fn samples_hold_until_the_next_in_trace_time_and_caps_come_from_the_trace() {
        let trace = Trace::parse(
            "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,cap_w\n\
             2026-07-14T05:00:00Z,45,30,2,\n2026-07-14T06:00:00Z,45,30,2,500\n",
            "t.csv",
        )
        .unwrap();
        // 360x: a trace hour is ten wall seconds; the trace runs two hours (20 s).
        let clock = SiteClock::new(at("2030-01-01T00:00:00Z"), trace.start(), 360.0).unwrap();
        let samples = vec![
            sample("2030-01-01T00:00:15Z", 100.0, 600.0),
            sample("2030-01-01T00:00:00Z", 10.0, 900.0),
            sample("2030-01-01T00:00:05Z", 20.0, 900.0),
            // After the trace's end: not counted.
            sample("2030-01-01T00:00:21Z", 1e9, 1e9),
        ];
        let r = realised(&samples, &clock, &trace, 1000.0);
        assert_eq!(r.samples, 3);
        assert!((r.hours - 2.0).abs() < 1e-9);
        // 0.5 h at 10 + 1 h at 20 + 0.5 h at 100.
        assert!((r.margin_usd - 75.0).abs() < 1e-9, "{r:?}");
        // 600 W is above the trace's 500 W cap in its second hour.
        assert_eq!((r.measured_above_cap, r.committed_above_cap), (1, 1));
        assert_eq!(percent_off(99.0, 100.0), -1.0);
    }
}
