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
                power_target: None,
                intent: Some(HeldIntent {
                    target: if asleep {
                        MinerTarget::Sleep
                    } else {
                        MinerTarget::Run {
                            power_target_w: None,
                        }
                    },
                    phase: IntentPhase::Confirmed,
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
    // Not part of "all": a profiling target.
    if args.iter().any(|a| a == "profile") {
        profile();
    }
}
