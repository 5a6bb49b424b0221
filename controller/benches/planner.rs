//! Planner and backtest benchmarks (docs/BENCHMARKS.md): planner time at 1,000 / 10,000 /
//! 100,000 devices, a 30-day backtest of 10,000 devices, and decision quality on generated traces
//! (pivot and a plain fixed-band planner against the static site and the hindsight bound).
//!
//! `cargo bench -p pivot-controller --bench planner -- [speed] [backtest] [quality]` (all by default).

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use pivot_controller::backtest::{self, Options, baseline, generate};
use pivot_controller::fleet::Assumptions;
use pivot_controller::planner::{
    self, AiContract, GpuHostUnit, GpuUnit, HeldIntent, HostState, MarketView, MinerUnit,
    PlanInput, PlannerMemory, SiteLimits,
};
use pivot_controller::policy::{self, PolicyDocument};
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
        .map_or(DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
}

/// `devices` units: miners of three classes in mixed states, and one 8-GPU host per 40 devices.
fn fleet(devices: usize) -> PlanInput {
    let mut rng = generate::Rng::new(42);
    let hosts = devices / 40;
    let models = [
        ("S19j Pro", 3068.0, 104.0),
        ("S19 XP", 3010.0, 140.0),
        ("S21", 3500.0, 200.0),
    ];
    let miners: Vec<MinerUnit> = (0..devices - hosts)
        .map(|i| {
            let (model, w, ths) = models[i % 3];
            let asleep = rng.unit() < 0.3;
            MinerUnit {
                device_id: format!("miner-{i}"),
                host_id: format!("agent-{}", i / 500),
                model: model.into(),
                group: model.into(),
                nameplate_power_w: Some(w),
                nameplate_hashrate_ths: Some(ths),
                efficiency_j_per_th: Some(w / ths * rng.range(0.97, 1.03)),
                sleep_power_w: Some(15.0),
                state: if asleep {
                    MinerState::Sleeping
                } else {
                    MinerState::Mining
                },
                measured_power_w: Some(if asleep { 15.0 } else { w * 0.98 }),
                seen: rng.unit() > 0.01,
                reachable_by_agent: true,
                power_target: None,
                power_target_set_w: None,
                setting_before_trim_w: None,
                intent: Some(HeldIntent {
                    target: if asleep {
                        MinerTarget::Sleep
                    } else {
                        MinerTarget::Run {
                            power_target_w: None,
                        }
                    },
                    phase: IntentPhase::Confirmed,
                    retrying: false,
                }),
                last_change_at: Some(t0() - Duration::seconds((rng.unit() * 3600.0) as i64)),
                protected: false,
                pin: None,
            }
        })
        .collect();
    let gpu_hosts: Vec<GpuHostUnit> = (0..hosts)
        .map(|i| GpuHostUnit {
            host_id: format!("gpu-{i}"),
            group: "h100".into(),
            gpus: (0..8)
                .map(|g| GpuUnit {
                    device_id: format!("gpu-{i}-{g}"),
                    min_cap_w: 200.0,
                    max_cap_w: 700.0,
                    full_service_cap_w: 700.0,
                    cap_w: Some(700.0),
                })
                .collect(),
            base_power_w: 4600.0,
            max_power_w: None,
            measured_power_w: None,
            gpus_allocated: None,
            workload_device_id: Some(format!("host/gpu-{i}")),
            contract: AiContract::Interruptible,
            state: HostState::Serving,
            last_change_at: None,
            protected: false,
            pin: None,
        })
        .collect();
    let load: f64 = miners
        .iter()
        .map(|m| m.nameplate_power_w.unwrap_or(0.0))
        .sum::<f64>()
        + hosts as f64 * 10_200.0;
    PlanInput {
        now: t0(),
        site: SiteLimits {
            cap_w: load * 0.8,
            reserve_w: load * 0.01,
        },
        demand_response: Vec::new(),
        market: Some(MarketView {
            hashprice_usd_per_ph_day: 45.0,
            energy_usd_per_mwh: 65.0,
            ai_usd_per_gpu_hour: Some(2.0),
            ai_gpu_demand: Some((hosts * 4) as u32),
        }),
        policy: PolicyDocument::default(),
        assumptions: Assumptions {
            unknown_miner_max_w: 3500.0,
            sleeping_miner_w: 20.0,
        },
        miners,
        gpu_hosts,
        memory: PlannerMemory::default(),
    }
}

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// This process's CPU time (user + system) in ms, from /proc/self/stat (10 ms ticks): on a shared
/// machine wall time measures the neighbours too.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); the first after the name is field 3.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10.0
}

/// Mean CPU ms per call over enough calls to fill about a second of CPU.
fn cpu_ms_per_call(mut f: impl FnMut(), runs: usize) -> f64 {
    let start = cpu_ms();
    for _ in 0..runs {
        f();
    }
    (cpu_ms() - start) / runs as f64
}

fn speed() {
    println!("## planner time (devices = miners + 8-GPU hosts, 1 per 40)");
    println!(
        "| devices | plan wall ms (median) | plan CPU ms (mean) | moves | clone of the input CPU ms (baseline) | plan ÷ clone | plan CPU ÷ 50 ms target |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for devices in [1_000usize, 10_000, 100_000] {
        let input = fleet(devices);
        let runs = if devices >= 100_000 { 11 } else { 31 };
        let cpu_runs = 1_000_000 / devices;
        let plan_cpu = cpu_ms_per_call(
            || drop(std::hint::black_box(planner::plan(&input))),
            cpu_runs,
        );
        let clone_cpu = cpu_ms_per_call(|| drop(std::hint::black_box(input.clone())), cpu_runs);
        let mut moves = 0;
        let plan_ms = median_ms(
            || {
                let p = planner::plan(&input);
                moves = p.summary.moves;
            },
            runs,
        );
        let clone_ms = median_ms(
            || {
                std::hint::black_box(input.clone());
            },
            runs,
        );
        let _ = clone_ms;
        println!(
            "| {devices} | {plan_ms:.2} | {plan_cpu:.2} | {moves} | {clone_cpu:.2} | {:.2} | {:.3} |",
            plan_cpu / clone_cpu,
            plan_cpu / 50.0
        );
    }
}

fn backtest_speed() {
    let site = generate::scaled_site(10_000);
    let Ok(trace) = generate::month_with_spikes(1, &site) else {
        return;
    };
    let start = Instant::now();
    let r = backtest::run(&site, &trace, &Options::default());
    let secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let b = baseline::hindsight_bound(&site, &trace);
    let bound_secs = start.elapsed().as_secs_f64();
    println!("## backtest time: 30 days at 5 minutes, 10,000 devices");
    println!(
        "| rows | units | plans | backtest s | ms per plan | hindsight bound s (baseline) | violations |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let units: u32 = site.miners.iter().map(|m| m.count).sum::<u32>()
        + site.gpu_hosts.iter().map(|h| h.count).sum::<u32>();
    println!(
        "| {} | {units} | {} | {secs:.2} | {:.3} | {bound_secs:.3} | {} |",
        trace.rows().len(),
        r.plans,
        secs * 1e3 / r.plans as f64,
        r.cap_violations
    );
    let _ = b;
}

/// The plain planner pivot is compared with: the same code with a fixed 10 USD/MWh band and none
/// of pivot's timing rules (no dwell, no AI buffer, no drain delay).
fn plain_policy() -> PolicyDocument {
    let mut p = PolicyDocument::default();
    p.economic.hysteresis_usd_per_mwh = 10.0;
    p.economic.min_dwell_s = 0;
    p.economic.ai_buffer_hosts = 0;
    p.economic.ai_buffer_fraction = 0.0;
    p.economic.ai_drain_delay_s = 0;
    p
}

fn quality() {
    let site = generate::hybrid_site();
    let Ok(pivot_policy) = policy::validate(policy::DEFAULT_POLICY) else {
        return;
    };
    println!(
        "## decision quality (hybrid site: 13 MW cap, 3,400 miners, 200 interruptible + 40 firm 8×H100 hosts)"
    );
    println!(
        "| trace | seed | static USD | bound USD | pivot USD | pivot captured | violations | switches | plain USD | plain captured | plain violations | plain switches |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, seed) in [
        ("month: spikes, negative hours, DR caps", 1u64),
        ("month: spikes, negative hours, DR caps", 2),
        ("post-halving wobble week", 1),
        ("post-halving wobble week", 2),
    ] {
        let trace = if name.starts_with("month") {
            generate::month_with_spikes(seed, &site)
        } else {
            generate::wobble_week(seed, &site)
        };
        let Ok(trace) = trace else { continue };
        let s = baseline::static_site(&site, &trace).margin_usd;
        let b = baseline::hindsight_bound(&site, &trace).margin_usd;
        let pivot = backtest::run(
            &site,
            &trace,
            &Options {
                policy: pivot_policy.clone(),
                ..Options::default()
            },
        );
        let plain = backtest::run(
            &site,
            &trace,
            &Options {
                policy: plain_policy(),
                ..Options::default()
            },
        );
        println!(
            "| {name} | {seed} | {s:.0} | {b:.0} | {:.0} | {:.1} % | {} | {} | {:.0} | {:.1} % | {} | {} |",
            pivot.margin_usd,
            100.0 * backtest::captured(pivot.margin_usd, s, b),
            pivot.cap_violations,
            pivot.device_switches,
            plain.margin_usd,
            100.0 * backtest::captured(plain.margin_usd, s, b),
            plain.cap_violations,
            plain.device_switches,
        );
    }
}

/// One setting of the policy keys a sweep varies.
#[derive(Debug, Clone)]
struct Setting(Vec<(String, f64)>);

impl Setting {
    fn apply(&self, p: &mut PolicyDocument) {
        let e = &mut p.economic;
        for (k, v) in &self.0 {
            let v = *v;
            match k.as_str() {
                "band" => e.hysteresis_usd_per_mwh = v,
                "dwell" => e.min_dwell_s = v as u64,
                "buffer" => e.ai_buffer_hosts = v as u32,
                "fraction" => e.ai_buffer_fraction = v,
                "drain" => e.ai_drain_delay_s = v as u64,
                "lead" => e.shed_lead_s = v as u64,
                "ramp" => e.ramp_limit_w_per_min = v,
                "floor" => e.min_margin_usd_per_mwh = v,
                other => eprintln!("unknown sweep key {other}"),
            }
        }
    }

    fn label(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `sweep key=v1,v2 ...`: every combination of the given policy keys (band, dwell, buffer,
/// drain, lead, ramp, floor) on the month traces (seeds 1 and 2 to choose on, 3 held out) and
/// the wobble week (seed 1), against the static site and the bound; `SWEEP_THREADS` workers.
fn sweep(args: &[String]) {
    let mut grid: Vec<Setting> = vec![Setting(Vec::new())];
    for a in args {
        let Some((k, vs)) = a.split_once('=') else {
            continue;
        };
        let values: Vec<f64> = vs.split(',').filter_map(|v| v.parse().ok()).collect();
        grid = grid
            .into_iter()
            .flat_map(|s| {
                values.iter().map(move |v| {
                    let mut next = s.clone();
                    next.0.push((k.to_owned(), *v));
                    next
                })
            })
            .collect();
    }
    let site = generate::hybrid_site();
    let traces: Vec<(String, pivot_controller::trace::Trace)> =
        [("month", 1u64), ("month", 2), ("month", 3), ("wobble", 1)]
            .into_iter()
            .filter_map(|(name, seed)| {
                let t = if name == "month" {
                    generate::month_with_spikes(seed, &site)
                } else {
                    generate::wobble_week(seed, &site)
                };
                t.ok().map(|t| (format!("{name}{seed}"), t))
            })
            .collect();
    let spans: Vec<(f64, f64)> = traces
        .iter()
        .map(|(_, t)| {
            (
                baseline::static_site(&site, t).margin_usd,
                baseline::hindsight_bound(&site, t).margin_usd,
            )
        })
        .collect();
    let Ok(base) = policy::validate(policy::DEFAULT_POLICY) else {
        return;
    };
    let threads: usize = std::env::var("SWEEP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    print!("| setting |");
    for (name, _) in &traces {
        print!(" {name} captured | {name} switches |");
    }
    println!(" violations |");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(setting) = grid.get(i) else { break };
                    let mut policy = base.clone();
                    setting.apply(&mut policy);
                    let mut line = format!("| {} |", setting.label());
                    let mut violations = 0;
                    for ((_, trace), (s, b)) in traces.iter().zip(&spans) {
                        let r = backtest::run(
                            &site,
                            trace,
                            &Options {
                                policy: policy.clone(),
                                ..Options::default()
                            },
                        );
                        violations += r.cap_violations;
                        line.push_str(&format!(
                            " {:.1} % | {} |",
                            100.0 * backtest::captured(r.margin_usd, *s, *b),
                            r.device_switches
                        ));
                    }
                    line.push_str(&format!(" {violations} |"));
                    let _guard = out.lock();
                    println!("{line}");
                }
            });
        }
    });
}

/// `losses`: where pivot's margin falls short of the hindsight bound, by kind of row.
fn losses(args: &[String]) {
    let mut site = generate::hybrid_site();
    // LOSSES_TRANSITION_S=0: every move instant, to see what the transitions alone cost.
    if let Some(t) = std::env::var("LOSSES_TRANSITION_S")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        for m in &mut site.miners {
            m.transition_s = Some(t);
        }
        for h in &mut site.gpu_hosts {
            h.transition_s = Some(t);
        }
    }
    let Ok(mut policy) = policy::validate(policy::DEFAULT_POLICY) else {
        return;
    };
    let setting = Setting(
        args.iter()
            .filter_map(|a| {
                let (k, v) = a.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    );
    setting.apply(&mut policy);
    println!("# losses with {}", setting.label());
    let which = std::env::var("LOSSES_TRACES").unwrap_or_else(|_| "month1,month2,wobble1".into());
    for (name, seed) in which.split(',').filter_map(|w| {
        let (name, seed) = w.split_at(w.find(|c: char| c.is_ascii_digit())?);
        Some((name, seed.parse::<u64>().ok()?))
    }) {
        let trace = if name == "month" {
            generate::month_with_spikes(seed, &site)
        } else {
            generate::wobble_week(seed, &site)
        };
        let Ok(trace) = trace else { continue };
        let start = Instant::now();
        let r = backtest::run(
            &site,
            &trace,
            &Options {
                policy: policy.clone(),
                ..Options::default()
            },
        );
        let secs = start.elapsed().as_secs_f64();
        let bound = baseline::hindsight_bound_rows(&site, &trace);
        let stat = baseline::static_site_rows(&site, &trace);
        let b = baseline::hindsight_bound(&site, &trace);
        let s = baseline::static_site(&site, &trace);
        println!(
            "## {name} seed {seed}: captured {:.1} %, {} plans in {secs:.1} s, {} switches",
            100.0 * backtest::captured(r.margin_usd, s.margin_usd, b.margin_usd),
            r.plans,
            r.device_switches
        );
        println!(
            "totals USD   pivot: mining {:.0} ai {:.0} energy {:.0} | bound: mining {:.0} ai {:.0} energy {:.0} | static: mining {:.0} ai {:.0} energy {:.0}",
            r.mining_revenue_usd,
            r.ai_revenue_usd,
            r.energy_cost_usd,
            b.mining_revenue_usd,
            b.ai_revenue_usd,
            b.energy_cost_usd,
            s.mining_revenue_usd,
            s.ai_revenue_usd,
            s.energy_cost_usd
        );
        // Row kinds: a spike, a DR cap (or the hour after), a negative price, the rest.
        let rows = trace.rows();
        let mut by_kind: std::collections::BTreeMap<&str, (usize, f64, f64, usize)> =
            std::collections::BTreeMap::new();
        let mut after_cap = 0usize;
        for (i, row) in rows.iter().enumerate() {
            if row.cap_w.is_some() {
                after_cap = 12;
            } else {
                after_cap = after_cap.saturating_sub(1);
            }
            let kind = if row.energy_usd_per_mwh > 150.0 {
                "spike"
            } else if row.cap_w.is_some() || after_cap > 0 {
                "dr"
            } else if row.energy_usd_per_mwh < 0.0 {
                "negative"
            } else if row
                .ai_gpu_demand
                .is_some_and(|d| i > 0 && rows[i - 1].ai_gpu_demand.is_some_and(|p| d > p))
            {
                "ai-up"
            } else {
                "other"
            };
            let hours = trace.interval_len(i).num_milliseconds() as f64 / 3.6e6;
            let pivot = r.intervals[i].margin_usd_per_h * hours;
            let e = by_kind.entry(kind).or_default();
            e.0 += 1;
            e.1 += bound[i].margin_usd - pivot;
            e.2 += bound[i].margin_usd - stat[i].margin_usd;
            if pivot > bound[i].margin_usd + 1e-6 {
                e.3 += 1;
            }
        }
        if std::env::var_os("LOSSES_ROWS").is_some() {
            for (i, row) in rows.iter().enumerate() {
                let hours = trace.interval_len(i).num_milliseconds() as f64 / 3.6e6;
                let ai_short = bound[i].ai_revenue_usd - r.intervals[i].ai_usd_per_h * hours;
                let lost = bound[i].margin_usd - r.intervals[i].margin_usd_per_h * hours;
                if row.energy_usd_per_mwh > 150.0
                    || (i > 0 && rows[i - 1].energy_usd_per_mwh > 150.0)
                {
                    println!(
                        "{} spike energy {:.0} lost {lost:.0} USD (ai short {ai_short:.0}), pivot mining {:.0} kW ai {:.0} kW",
                        row.time.format("%d %H:%M"),
                        row.energy_usd_per_mwh,
                        r.intervals[i].mining_w / 1e3,
                        r.intervals[i].ai_w / 1e3
                    );
                } else if ai_short > 5.0 {
                    println!(
                        "{} demand {:?} prev {:?} energy {:.0} ai short {ai_short:.1} USD, pivot ai_w {:.0} kW",
                        row.time.format("%d %H:%M"),
                        row.ai_gpu_demand,
                        i.checked_sub(1).and_then(|p| rows[p].ai_gpu_demand),
                        row.energy_usd_per_mwh,
                        r.intervals[i].ai_w / 1e3
                    );
                }
            }
        }
        println!("| rows | n | bound − pivot USD | bound − static USD | rows pivot > bound |");
        for (k, (n, lost, span, above)) in by_kind {
            println!("| {k} | {n} | {lost:.0} | {span:.0} | {above} |");
        }
    }
}

/// `profile`: plans 100,000 devices a few times and nothing else (for perf or callgrind).
fn profile() {
    let input = fleet(100_000);
    let runs: usize = std::env::var("PLANNER_PROFILE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut moves = 0;
    for _ in 0..runs {
        moves += std::hint::black_box(planner::plan(&input)).summary.moves;
    }
    println!("{runs} plans, {moves} moves");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = args.is_empty();
    let want = |k: &str| all || args.iter().any(|a| a == k);
    if want("speed") {
        speed();
    }
    if want("backtest") {
        backtest_speed();
    }
    if want("quality") {
        quality();
    }
    // Not part of "all": a profiling target and a look at where value is lost.
    if args.iter().any(|a| a == "profile") {
        profile();
    }
    if args.first().is_some_and(|a| a == "losses") {
        losses(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "sweep") {
        sweep(&args[1..]);
    }
}
