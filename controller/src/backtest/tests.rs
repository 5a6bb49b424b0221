//! Backtests small enough to work out by hand, and the decision-quality relations on generated
//! traces (pivot between the static site and the hindsight bound, no cap violation).

use chrono::Duration;

use super::*;
use crate::trace::Trace;

/// Two 30 J/TH miners (3 kW, 100 TH) and one 1-GPU host (1 kW base, GPU 1 kW / 200 W), 10 kW cap.
const SITE: &str = r#"
cap_w = 10000
[[miners]]
count = 2
model = "S30"
power_w = 3000
hashrate_ths = 100
[[gpu_hosts]]
count = 1
gpus = 1
gpu_power_w = 1000
gpu_min_w = 200
host_base_w = 1000
contract = "interruptible"
"#;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_price_spike_worked_out_by_hand() {
    let site = Site::parse(SITE, "site.toml").unwrap_or_else(|e| panic!("{e}"));
    // Miner breakeven: 48 × 1000 / (24 × 30) = 66.7 USD/MWh. The host is worth 2 USD/h / 2 kW.
    let trace = Trace::parse(
        "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour\n\
         2026-06-01T00:00:00Z,48,40,2\n\
         2026-06-01T01:00:00Z,48,100,2\n\
         2026-06-01T02:00:00Z,48,40,2\n",
        "trace.csv",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = run(&site, &trace, &Options::default());
    // Hour 0: all on: mining 200 TH × 48 / 1000 / 24 = 0.4 USD/h, AI 2 USD/h, 8 kW × 40.
    // Hour 1: the miners are told to sleep at 01:00 and mine for the 120 s it takes:
    //   mining 0.4 × 2/60, energy (8 kW × 2/60 h + 2 kW × 58/60 h) × 100 USD/MWh = 0.22.
    // Hour 2: woken at 02:00, asleep for 120 s: mining 0.4 × 58/60,
    //   energy (2 kW × 2/60 + 8 kW × 58/60) × 40 = 0.312.
    let mining = 0.4 + 0.4 * 2.0 / 60.0 + 0.4 * 58.0 / 60.0;
    let energy = 0.32 + 0.22 + 0.312;
    assert!(close(r.mining_revenue_usd, mining), "{r:?}");
    assert!(close(r.ai_revenue_usd, 6.0), "{r:?}");
    assert!(close(r.energy_cost_usd, energy), "{r:?}");
    assert!(close(r.margin_usd, mining + 6.0 - energy), "{r:?}");
    assert_eq!(r.device_switches, 4);
    assert_eq!(r.cap_violations, 0);
    assert_eq!(r.intervals.len(), 3);
    let i1 = &r.intervals[1];
    assert!(close(i1.mining_w, 6000.0 * 2.0 / 60.0), "{i1:?}");
    assert!(close(i1.ai_w, 2000.0));
    assert!(close(i1.margin_usd_per_h, 0.4 * 2.0 / 60.0 + 2.0 - 0.22));
    assert_eq!(i1.cap_w, 10_000.0);
    // Pivot sits between the static site and the hindsight bound.
    let s = baseline::static_site(&site, &trace);
    let b = baseline::hindsight_bound(&site, &trace);
    assert!(close(s.margin_usd, 2.08 * 2.0 + (0.4 + 2.0 - 0.8)), "{s:?}");
    assert!(close(b.margin_usd, 2.08 * 2.0 + (2.0 - 0.2)), "{b:?}");
    assert!(s.margin_usd < r.margin_usd && r.margin_usd < b.margin_usd);
}

#[test]
fn a_cap_heard_ahead_is_met_and_one_heard_late_is_a_violation() {
    let site = Site::parse(SITE, "site.toml").unwrap_or_else(|e| panic!("{e}"));
    let trace = Trace::parse(
        "time,hashprice_usd_per_ph_day,energy_usd_per_mwh,ai_usd_per_gpu_hour,ai_gpu_demand,cap_w\n\
         2026-06-01T00:00:00Z,48,40,2,,\n\
         2026-06-01T00:15:00Z,48,40,2,,4000\n\
         2026-06-01T00:30:00Z,48,40,2,,\n",
        "trace.csv",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = run(&site, &trace, &Options::default());
    assert_eq!(r.cap_violations, 0, "{r:?}");
    assert_eq!(r.intervals[1].cap_w, 4000.0);
    assert!(close(r.intervals[1].mining_w, 0.0), "{:?}", r.intervals[1]);
    let late = Options {
        dr_notice: Duration::zero(),
        ..Options::default()
    };
    assert_eq!(run(&site, &trace, &late).cap_violations, 1);
}

#[test]
fn durations_parse_as_documented() {
    assert_eq!(parse_duration("10m"), Ok(Duration::minutes(10)));
    assert_eq!(parse_duration("90"), Ok(Duration::seconds(90)));
    assert_eq!(parse_duration("1h"), Ok(Duration::hours(1)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("99999999999h").is_err());
}

#[test]
fn on_a_generated_month_pivot_beats_static_stays_under_the_bound_and_the_cap() {
    let site = generate::hybrid_site();
    let trace = generate::month_with_spikes(7, &site).unwrap_or_else(|e| panic!("{e}"));
    // Two days of it (a spike and DR caps fall in them) keep the test quick.
    let week =
        Trace::from_rows(trace.rows()[3 * 288..5 * 288].to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let r = run(&site, &week, &Options::default());
    let s = baseline::static_site(&site, &week);
    let b = baseline::hindsight_bound(&site, &week);
    assert_eq!(r.cap_violations, 0);
    assert!(
        r.margin_usd > s.margin_usd,
        "pivot {} static {}",
        r.margin_usd,
        s.margin_usd
    );
    assert!(
        r.margin_usd <= b.margin_usd,
        "pivot {} above bound {}",
        r.margin_usd,
        b.margin_usd
    );
}

/// The hybrid site at about a hundredth of its size (the cap binds the same way).
fn small_hybrid_site() -> Site {
    let mut site = generate::hybrid_site();
    for m in &mut site.miners {
        m.count /= 100;
    }
    for h in &mut site.gpu_hosts {
        h.count = (h.count / 20).max(1);
    }
    let load = generate::full_load_w(&site);
    site.cap_w = (load * 0.97).round();
    site.reserve_w = (load * 0.015).round();
    site
}

fn days(trace: &Trace, from: usize, to: usize) -> Trace {
    Trace::from_rows(trace.rows()[from * 288..to * 288].to_vec()).unwrap_or_else(|e| panic!("{e}"))
}

/// Skipping the timer ticks before the plan's `revisit_at` changes nothing: the same money, the
/// same switches, row by row, as replanning on every tick — with fewer plans.
#[test]
fn skipping_ticks_before_revisit_at_changes_no_result() {
    let site = small_hybrid_site();
    for seed in 1..=3 {
        let month = generate::month_with_spikes(seed, &site).unwrap_or_else(|e| panic!("{e}"));
        let wobble = generate::wobble_week(seed, &site).unwrap_or_else(|e| panic!("{e}"));
        // Days with a DR cap (day 3) and a spike or a negative night, and a wobbling day.
        for trace in [days(&month, 2, 5), days(&wobble, 0, 1)] {
            let skip = run(&site, &trace, &Options::default());
            let every = run(
                &site,
                &trace,
                &Options {
                    skip_idle_replans: false,
                    ..Options::default()
                },
            );
            assert_eq!(skip.device_switches, every.device_switches, "seed {seed}");
            assert_eq!(skip.cap_violations, every.cap_violations, "seed {seed}");
            assert!(
                close(skip.margin_usd, every.margin_usd),
                "seed {seed}: {} vs {}",
                skip.margin_usd,
                every.margin_usd
            );
            for (a, b) in skip.intervals.iter().zip(&every.intervals) {
                assert!(
                    close(a.margin_usd_per_h, b.margin_usd_per_h) && close(a.mining_w, b.mining_w),
                    "seed {seed}: {a:?} vs {b:?}"
                );
            }
            assert!(
                skip.plans * 2 < every.plans,
                "seed {seed}: {} plans skipping, {} not",
                skip.plans,
                every.plans
            );
        }
    }
}
