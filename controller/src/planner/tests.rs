//! Unit tests of each planning rule, on small fleets worked out by hand.

use chrono::{DateTime, Duration, Utc};
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget, Target, WorkloadState};

use super::*;
use crate::fleet::Assumptions;
use crate::policy::{self, PolicyDocument};

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A mining, seen, confirmed miner of a model with nameplate power and hashrate.
pub(super) fn miner(id: &str, model: &str, power_w: f64, ths: f64) -> MinerUnit {
    MinerUnit {
        device_id: id.into(),
        host_id: "agent-1".into(),
        model: model.into(),
        group: "default".into(),
        nameplate_power_w: Some(power_w),
        nameplate_hashrate_ths: Some(ths),
        efficiency_j_per_th: None,
        sleep_power_w: Some(0.0),
        state: MinerState::Mining,
        measured_power_w: None,
        seen: true,
        reachable_by_agent: true,
        power_target: None,
        power_target_set_w: None,
        setting_before_trim_w: None,
        intent: Some(HeldIntent {
            target: MinerTarget::Run {
                power_target_w: None,
            },
            phase: IntentPhase::Confirmed,
            retrying: false,
        }),
        last_change_at: None,
        protected: false,
        pin: None,
    }
}

pub(super) fn s19jpro(id: &str) -> MinerUnit {
    miner(id, "S19j Pro", 3068.0, 104.0)
}
pub(super) fn s21(id: &str) -> MinerUnit {
    miner(id, "S21", 3500.0, 200.0)
}

pub(super) fn asleep(mut m: MinerUnit) -> MinerUnit {
    m.state = MinerState::Sleeping;
    m.intent = Some(HeldIntent {
        target: MinerTarget::Sleep,
        phase: IntentPhase::Confirmed,
        retrying: false,
    });
    m
}

/// An 8×H100 host: base 4.6 kW, caps 200–700 W.
pub(super) fn h100_host(id: &str, serving: bool) -> GpuHostUnit {
    let cap = if serving { 700.0 } else { 200.0 };
    GpuHostUnit {
        host_id: id.into(),
        group: "gpu".into(),
        gpus: (0..8)
            .map(|g| GpuUnit {
                device_id: format!("{id}-gpu{g}"),
                min_cap_w: 200.0,
                max_cap_w: 700.0,
                full_service_cap_w: 700.0,
                cap_w: Some(cap),
            })
            .collect(),
        base_power_w: 4600.0,
        max_power_w: None,
        measured_power_w: None,
        gpus_allocated: None,
        workload_device_id: Some(format!("host/{id}")),
        contract: AiContract::Interruptible,
        state: if serving {
            HostState::Serving
        } else {
            HostState::Drained
        },
        last_change_at: None,
        protected: false,
        pin: None,
    }
}

pub(super) fn market(hashprice: f64, energy: f64, demand: Option<u32>) -> MarketView {
    MarketView {
        hashprice_usd_per_ph_day: hashprice,
        energy_usd_per_mwh: energy,
        ai_usd_per_gpu_hour: Some(2.0),
        ai_gpu_demand: demand,
    }
}

pub(super) fn policy_with(extra: &str) -> PolicyDocument {
    let text = format!("{}\n{extra}", policy::DEFAULT_POLICY);
    // A helper for tests: a bad extra is a test bug.
    match policy::validate(&text) {
        Ok(p) => p,
        Err(e) => panic!("test policy invalid: {e:?}"),
    }
}

pub(super) fn input(
    miners: Vec<MinerUnit>,
    hosts: Vec<GpuHostUnit>,
    m: Option<MarketView>,
) -> PlanInput {
    PlanInput {
        now: t0(),
        site: SiteLimits {
            cap_w: 1e9,
            reserve_w: 0.0,
        },
        demand_response: Vec::new(),
        market: m,
        policy: PolicyDocument::default(),
        assumptions: Assumptions {
            unknown_miner_max_w: 3500.0,
            sleeping_miner_w: 20.0,
        },
        miners,
        gpu_hosts: hosts,
        memory: PlannerMemory::default(),
    }
}

fn moved<'a>(p: &'a Plan, id: &str) -> Option<(&'a Phase, &'a Move)> {
    p.moves().find(|(_, m)| m.device_id == id)
}

fn to(p: &Plan, id: &str) -> Option<Target> {
    moved(p, id).map(|(_, m)| m.to)
}

const SLEEP: Option<Target> = Some(Target::Miner(MinerTarget::Sleep));
const RUN: Option<Target> = Some(Target::Miner(MinerTarget::Run {
    power_target_w: None,
}));

#[test]
fn energy_above_breakeven_sleeps_the_least_efficient_and_says_why() {
    // Hashprice 40: S19j Pro (29.5 J/TH) breakeven 56.5 USD/MWh, S21 (17.5) 95.2.
    let p = plan(&input(
        vec![s19jpro("a"), s19jpro("b"), s21("c")],
        vec![],
        Some(market(40.0, 80.0, None)),
    ));
    assert_eq!(to(&p, "a"), SLEEP);
    assert_eq!(to(&p, "b"), SLEEP);
    assert_eq!(to(&p, "c"), None);
    assert_eq!(p.phases.len(), 1);
    assert_eq!(p.phases[0].kind, PhaseKind::Curtail);
    let e = &p.explanations[0];
    assert_eq!(
        (e.model.as_str(), e.action, e.devices),
        ("S19j Pro", Action::Sleep, 2)
    );
    // 2 × 3068 W × (80 − 56.5) USD/MWh = 0.144 USD/h.
    assert!((e.gain_usd_per_h - 0.1442).abs() < 1e-3, "{e:?}");
    assert!(
        e.text.starts_with(
            "energy 80 USD/MWh > S19j Pro breakeven 56: sleeping 2 miners (6 kW), saves 0.14 USD/h"
        ),
        "{}",
        e.text
    );
    assert_eq!(p.summary.mining_w, 3500.0);
    // Margin once done: S21 200 TH at 40 USD/PH/day = 0.333 USD/h, minus 3.5 kW at 80.
    assert!((p.summary.margin_usd_per_h - (40.0 * 0.2 / 24.0 - 0.28)).abs() < 1e-9);
}

#[test]
fn a_miner_smaller_than_the_sleeping_assumption_is_still_slept_above_its_breakeven() {
    // A Bitaxe Gamma (17 W, 1.2 TH/s: 14.2 J/TH, breakeven 117 USD/MWh at hashprice 40) never
    // read asleep, under the default 100 W sleeping assumption: counted asleep at 100 W (capped
    // at 17), its sleep saved nothing and it mined through any price.
    let mut bitaxe = miner("bx", "Bitaxe Gamma", 17.0, 1.2);
    bitaxe.sleep_power_w = None;
    let mut i = input(
        vec![bitaxe.clone()],
        vec![],
        Some(market(40.0, 240.0, None)),
    );
    i.assumptions.sleeping_miner_w = 100.0;
    let p = plan(&i);
    assert_eq!(to(&p, "bx"), SLEEP, "{:?}", p.explanations);
    // Below its breakeven it mines on.
    i.market = Some(market(40.0, 100.0, None));
    assert_eq!(to(&plan(&i), "bx"), None);
    // A large miner keeps the site's assumption: a 3 kW S19j Pro asleep counts at 100 W.
    let mut big = asleep(s19jpro("a"));
    big.sleep_power_w = None;
    i.miners = vec![big];
    i.market = Some(market(40.0, 240.0, None));
    assert!((plan(&i).summary.mining_w - 100.0).abs() < 1e-9);
}

#[test]
fn cheap_energy_wakes_sleeping_miners_most_efficient_first() {
    let mut i = input(
        vec![asleep(s19jpro("a")), asleep(s21("c"))],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.policy.economic.ramp_limit_w_per_min = 4000.0;
    let p = plan(&i);
    assert_eq!(p.phases.len(), 2);
    assert_eq!(p.phases[0].moves[0].device_id, "c");
    assert_eq!(p.phases[1].moves[0].device_id, "a");
    assert_eq!(p.phases[0].not_before, None);
    assert_eq!(p.phases[1].not_before, Some(t0() + Duration::minutes(1)));
    assert_eq!(p.memory.last_grant_at, Some(t0()));
    // The next plan's first step waits for the ramp minute.
    i.memory = p.memory.clone();
    i.now = t0() + Duration::seconds(20);
    let again = plan(&i);
    assert_eq!(
        again.phases[0].not_before,
        Some(t0() + Duration::minutes(1))
    );
    // Planned again while that step waits: it stays where it was, and comes at its minute.
    for s in [40, 59] {
        i.memory = plan(&i).memory;
        i.now = t0() + Duration::seconds(s);
        assert_eq!(
            plan(&i).phases[0].not_before,
            Some(t0() + Duration::minutes(1)),
            "at {s} s"
        );
    }
    i.memory = plan(&i).memory;
    i.now = t0() + Duration::minutes(1);
    assert_eq!(plan(&i).phases[0].not_before, None);
}

#[test]
fn without_a_ramp_limit_every_grant_goes_in_one_step_at_once() {
    // ramp_limit_w_per_min = 0 is "no limit": no steps, and no minute after the last plan's grant.
    let mut i = input(
        vec![asleep(s19jpro("a")), asleep(s21("b")), asleep(s21("c"))],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.policy.economic.ramp_limit_w_per_min = 0.0;
    i.memory.last_grant_at = Some(t0() - Duration::seconds(10));
    let p = plan(&i);
    assert_eq!(p.phases.len(), 1, "{:?}", p.phases);
    assert_eq!(p.phases[0].kind, PhaseKind::Grant);
    assert_eq!(p.phases[0].moves.len(), 3);
    assert_eq!(p.phases[0].not_before, None);
    assert_eq!(p.revisit_at, None);
}

#[test]
fn inside_the_band_nothing_moves() {
    // S19j Pro breakeven 56.5; band 4 → a running one stops above 58.5, a sleeping one wakes below 54.5.
    for energy in [55.0, 58.0] {
        let p = plan(&input(
            vec![s19jpro("on"), asleep(s19jpro("off"))],
            vec![],
            Some(market(40.0, energy, None)),
        ));
        assert!(p.phases.is_empty(), "energy {energy}: {:?}", p.phases);
    }
    let p = plan(&input(
        vec![s19jpro("on"), asleep(s19jpro("off"))],
        vec![],
        Some(market(40.0, 59.0, None)),
    ));
    assert_eq!(to(&p, "on"), SLEEP);
    let p = plan(&input(
        vec![s19jpro("on"), asleep(s19jpro("off"))],
        vec![],
        Some(market(40.0, 54.0, None)),
    ));
    assert_eq!(to(&p, "off"), RUN);
}

#[test]
fn dwell_holds_economic_moves_but_not_a_cap() {
    let mut m = s19jpro("a");
    m.last_change_at = Some(t0() - Duration::seconds(100));
    let mut i = input(vec![m], vec![], Some(market(40.0, 200.0, None)));
    assert!(plan(&i).phases.is_empty());
    i.now = t0() + Duration::seconds(200);
    assert_eq!(to(&plan(&i), "a"), SLEEP);
    i.now = t0();
    i.site.cap_w = 1000.0;
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert!(matches!(
        moved(&p, "a").map(|(_, m)| m.reason),
        Some(Reason::Cap { .. })
    ));
}

#[test]
fn a_cap_sheds_in_merit_order_and_trims_a_miner_with_a_power_target() {
    let mut trim = miner("xp", "S19 XP", 3010.0, 140.0);
    trim.power_target = Some(PowerTargetRange {
        min_w: 1500.0,
        max_w: 3010.0,
        step_w: Some(100.0),
    });
    let mut i = input(
        vec![s19jpro("old"), trim, s21("new")],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.site = SiteLimits {
        cap_w: 6000.0,
        reserve_w: 200.0,
    };
    let p = plan(&i);
    // S21 first (3500 W), then the S19 XP trimmed into the 2300 W left (steps of 100 above 1500).
    assert_eq!(to(&p, "old"), SLEEP);
    assert_eq!(
        to(&p, "xp"),
        Some(Target::Miner(MinerTarget::Run {
            power_target_w: Some(2300)
        }))
    );
    assert_eq!(to(&p, "new"), None);
    assert!(p.summary.committed_w <= 5800.0);
    assert!((p.summary.committed_w - 5800.0).abs() < 1e-9);
    assert_eq!(p.limit.limit_w, 5800.0);
}

/// An S21 on LuxOS: profiles from 1,700 W up to an overclock of 5,590 W around its stock
/// 3,500 W (pivot-sim's shape of the profile list).
fn luxos_s21(id: &str, set_w: Option<f64>) -> MinerUnit {
    let mut m = s21(id);
    m.power_target = Some(PowerTargetRange {
        min_w: 1700.0,
        max_w: 5590.0,
        step_w: None,
    });
    m.power_target_set_w = set_w;
    m
}

/// [`luxos_s21`] trimmed by Pivot to `w` (its confirmed intent), reading that setting.
fn trimmed_s21(id: &str, w: u32) -> MinerUnit {
    let mut m = luxos_s21(id, Some(f64::from(w)));
    m.intent = Some(HeldIntent {
        target: MinerTarget::Run {
            power_target_w: Some(w),
        },
        phase: IntentPhase::Confirmed,
        retrying: false,
    });
    m
}

#[test]
fn a_miner_is_counted_at_its_setting_and_restored_to_its_rating_not_the_top_of_its_range() {
    let committed = |m: MinerUnit| {
        plan(&input(vec![m], vec![], Some(market(40.0, 30.0, None))))
            .summary
            .start_committed_w
    };
    // Running at its stock setting: its rating, not the overclock at the top of its range.
    assert_eq!(committed(luxos_s21("a", Some(3500.0))), 3500.0);
    // Set above its rating by an operator: what it is set to.
    assert_eq!(committed(luxos_s21("a", Some(4200.0))), 4200.0);
    // Its setting unknown: the most it can be set to.
    assert_eq!(committed(luxos_s21("a", None)), 5590.0);

    // Trimmed to 2,000 W and now worth running in full: restored to its rating.
    let trimmed = trimmed_s21("t", 2000);
    let p = plan(&input(
        vec![trimmed],
        vec![],
        Some(market(40.0, 30.0, None)),
    ));
    assert_eq!(p.summary.start_committed_w, 2000.0);
    assert_eq!(
        to(&p, "t"),
        Some(Target::Miner(MinerTarget::Run {
            power_target_w: Some(3500)
        }))
    );
    assert_eq!(p.summary.committed_w, 3500.0);
}

/// A miner whose owner set it below its rating, trimmed for a cap, keeps that setting for its
/// restore; one Pivot trimmed is restored to what it was set to before, over- or under-clocked,
/// and one Pivot trimmed and then put to sleep wakes at it, not at the trim.
#[test]
fn a_trim_keeps_the_owners_setting_and_full_power_goes_back_to_it() {
    let mut tuned = luxos_s21("tuned", Some(3000.0));
    tuned.intent = None;
    let cap_input = |m: MinerUnit, cap_w: f64| {
        let mut i = input(vec![m], vec![], Some(market(40.0, 30.0, None)));
        i.site = SiteLimits {
            cap_w,
            reserve_w: 0.0,
        };
        i
    };
    // Counted at its own setting (3,000 W), not its rating, and trimmed below it with the
    // setting kept for the restore.
    let p = plan(&cap_input(tuned.clone(), 10_000.0));
    assert_eq!(p.summary.start_committed_w, 3000.0);
    assert!(moved(&p, "tuned").is_none());
    let p = plan(&cap_input(tuned.clone(), 2500.0));
    let (_, mv) = moved(&p, "tuned").expect("trimmed for the cap");
    assert_eq!(
        mv.to,
        Target::Miner(MinerTarget::Run {
            power_target_w: Some(2500)
        })
    );
    assert_eq!(mv.setting_before_w, Some(3000.0));
    // Never "trimmed" above its own setting when the cap would allow more than it draws.
    let p = plan(&cap_input(tuned, 3200.0));
    assert!(
        moved(&p, "tuned").is_none(),
        "{:?}",
        p.moves().collect::<Vec<_>>()
    );

    // Trimmed by Pivot from an owner's 4,200 W (kept in the ledger) and 3,000 W: full power is
    // that setting again.
    for before in [4200.0, 3000.0] {
        let mut t = trimmed_s21("t", 2000);
        t.setting_before_trim_w = Some(before);
        let p = plan(&input(vec![t], vec![], Some(market(40.0, 30.0, None))));
        assert_eq!(p.summary.start_committed_w, 2000.0);
        let (_, mv) = moved(&p, "t").expect("restored");
        assert_eq!(
            mv.to,
            Target::Miner(MinerTarget::Run {
                power_target_w: Some(before as u32)
            })
        );
        assert_eq!(mv.setting_before_w, None, "the ledger keeps it already");
        assert_eq!(p.summary.committed_w, before);
    }

    // Trimmed to 2,000 W from 3,500 W, then put to sleep: its wake sends 3,500 W.
    let mut slept = asleep(luxos_s21("s", Some(2000.0)));
    slept.setting_before_trim_w = Some(3500.0);
    let p = plan(&input(vec![slept], vec![], Some(market(40.0, 30.0, None))));
    assert_eq!(
        to(&p, "s"),
        Some(Target::Miner(MinerTarget::Run {
            power_target_w: Some(3500)
        }))
    );
    // Asleep at its own setting: woken without a target, as before.
    let p = plan(&input(
        vec![asleep(luxos_s21("o", Some(3000.0)))],
        vec![],
        Some(market(40.0, 30.0, None)),
    ));
    assert_eq!(
        to(&p, "o"),
        Some(Target::Miner(MinerTarget::Run {
            power_target_w: None
        }))
    );

    // Not seen: counted at the top of its range whatever the ledger keeps.
    let mut gone = luxos_s21("g", None);
    gone.seen = false;
    gone.state = MinerState::Unknown;
    gone.setting_before_trim_w = Some(3000.0);
    let p = plan(&input(vec![gone], vec![], Some(market(40.0, 30.0, None))));
    assert_eq!(p.summary.start_committed_w, 5590.0);
}

#[test]
fn unseen_devices_count_at_their_maximum_and_are_not_moved() {
    let mut gone = s19jpro("gone");
    gone.seen = false;
    gone.state = MinerState::Unknown;
    gone.intent = None;
    let mut i = input(
        vec![gone, s21("new")],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.site.cap_w = 5000.0;
    let p = plan(&i);
    assert_eq!(p.summary.start_committed_w, 3068.0 + 3500.0);
    assert!(moved(&p, "gone").is_none());
    // Only the S21 can make room: it sleeps.
    assert_eq!(to(&p, "new"), SLEEP);
    assert!(p.summary.committed_w <= 5000.0);
}

#[test]
fn pins_hold_and_pins_over_the_cap_shed_everything_else_and_say_so() {
    let mut pinned = s19jpro("pinned");
    pinned.pin = Some(MinerTarget::Run {
        power_target_w: None,
    });
    let mut i = input(
        vec![pinned, s21("free")],
        vec![],
        Some(market(40.0, 500.0, None)),
    );
    let p = plan(&i);
    assert!(moved(&p, "pinned").is_none());
    assert_eq!(to(&p, "free"), SLEEP);
    i.market = Some(market(40.0, 10.0, None));
    i.site.cap_w = 2000.0;
    let p = plan(&i);
    assert_eq!(to(&p, "free"), SLEEP);
    assert!(moved(&p, "pinned").is_none());
    assert!(p.warnings.contains(&Warning::LimitUnreachable {
        limit_w: 2000.0,
        achievable_w: 3068.0
    }));
    assert_eq!(p.summary.lowest_achievable_w, 3068.0);
    // A pin that needs power the cap lacks is held back.
    let mut wake = asleep(s19jpro("wake"));
    wake.pin = Some(MinerTarget::Run {
        power_target_w: None,
    });
    i.miners = vec![wake];
    let p = plan(&i);
    assert!(p.phases.is_empty());
    assert!(matches!(
        p.warnings[0],
        Warning::HeldBackOverCap { devices: 1, .. }
    ));
}

#[test]
fn protected_devices_never_move() {
    let mut i = input(
        vec![s19jpro("a"), s19jpro("b")],
        vec![],
        Some(market(40.0, 500.0, None)),
    );
    i.miners[0].protected = true;
    i.policy = policy_with("[protected]\ndevices = [\"b\"]\n");
    assert!(plan(&i).phases.is_empty());
}

#[test]
fn idle_gpu_hosts_are_drained_and_their_power_goes_to_mining() {
    // Demand 0, buffer half the hosts (rounded down: 1): one host stays released, the
    // other is drained (drain delay: no history).
    let mut i = input(
        vec![asleep(s21("m1")), asleep(s21("m2")), asleep(s21("m3"))],
        vec![h100_host("g1", true), h100_host("g2", true)],
        Some(market(40.0, 30.0, Some(0))),
    );
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.5;
    // Two hosts at 10.2 kW; cap 22 kW leaves room for one S21 until a host drains.
    i.site.cap_w = 22_000.0;
    let p = plan(&i);
    let kinds: Vec<PhaseKind> = p.phases.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PhaseKind::Curtail,
            PhaseKind::LowerGpuCaps,
            PhaseKind::Grant
        ]
    );
    assert_eq!(
        to(&p, "host/g2"),
        Some(Target::Workload {
            state: WorkloadState::Drained
        })
    );
    assert_eq!(to(&p, "g2-gpu0"), Some(Target::Gpu { power_cap_w: 200 }));
    assert_eq!(
        moved(&p, "g2-gpu0").map(|(ph, _)| ph.kind),
        Some(PhaseKind::LowerGpuCaps)
    );
    assert!(moved(&p, "host/g1").is_none());
    // Host accounted at base + caps: 4.6 + 8 × 0.7 = 10.2 kW serving, 6.2 kW drained.
    assert_eq!(p.summary.start_committed_w, 20_400.0);
    assert_eq!(p.phases[1].committed_after_w, 16_400.0);
    // 22 kW − 16.4 kW = 5.6 kW: one S21.
    assert_eq!(p.phases[2].moves.len(), 1);
    assert!(
        p.phases
            .iter()
            .all(|ph| ph.committed_w <= 22_000.0 || ph.kind.releases_power())
    );
    let e: Vec<&str> = p.explanations.iter().map(|e| e.text.as_str()).collect();
    assert!(
        e.iter()
            .any(|t| t.starts_with("AI demand 0 GPUs, 1 interruptible hosts kept")),
        "{e:?}"
    );
}

/// Which hosts a demand change moves, among hosts otherwise equal: the workload manager's
/// allocated GPUs decide (drain the idle, re-release a drained one whose jobs still run),
/// where the host index decided alone.
#[test]
fn a_demand_drop_drains_idle_hosts_and_a_rise_releases_one_still_running_jobs() {
    // The hosts that `demand` GPUs move to `state`, given each host's allocated GPUs (the
    // hosts serving when `serving`), with no buffer and room under the cap for all.
    let moved = |serving: bool, demand: u32, allocated: &[Option<u32>], state: WorkloadState| {
        let names = ["g1", "g2", "g3", "g4"];
        let mut i = input(
            vec![],
            names[..allocated.len()]
                .iter()
                .map(|h| h100_host(h, serving))
                .collect(),
            Some(market(40.0, 30.0, Some(demand))),
        );
        i.policy.economic.ai_buffer_hosts = 0;
        i.policy.economic.ai_buffer_fraction = 0.0;
        i.site.cap_w = 100_000.0;
        for (h, a) in i.gpu_hosts.iter_mut().zip(allocated) {
            h.gpus_allocated = *a;
        }
        let p = plan(&i);
        names[..allocated.len()]
            .iter()
            .copied()
            .filter(|h| to(&p, &format!("host/{h}")) == Some(Target::Workload { state }))
            .collect::<Vec<_>>()
    };
    let drained = |allocated: [Option<u32>; 4]| moved(true, 16, &allocated, WorkloadState::Drained);
    // 16 GPUs wanted of 32: two hosts kept. Jobs on g3 and g4: g1 and g2 drain.
    assert_eq!(
        drained([Some(0), Some(0), Some(8), Some(4)]),
        vec!["g1", "g2"]
    );
    assert_eq!(
        drained([Some(2), Some(0), Some(8), Some(0)]),
        vec!["g2", "g4"]
    );
    // Unknown (no workload manager read): by index, as before.
    assert_eq!(drained([None, None, Some(8), None]), vec!["g2", "g4"]);
    assert_eq!(drained([None; 4]), vec!["g3", "g4"]);

    // 8 GPUs wanted, both hosts drained, g2's jobs still in their grace: g2 is released.
    let released =
        |allocated: [Option<u32>; 2]| moved(false, 8, &allocated, WorkloadState::Released);
    assert_eq!(released([Some(0), Some(8)]), vec!["g2"]);
    assert_eq!(released([None, None]), vec!["g1"]);
}

/// A drained host (6.2 kW) and two S21s (7 kW) under a 14 kW cap, no AI buffer; 8 GPUs of demand
/// want the host serving (10.2 kW), which needs one S21 asleep first.
fn drained_host_wanted_two_s21s_cap_14_kw() -> PlanInput {
    let mut i = input(
        vec![s21("m1"), s21("m2")],
        vec![h100_host("g1", false)],
        Some(market(40.0, 30.0, Some(8))),
    );
    i.site.cap_w = 14_000.0;
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    i
}

#[test]
fn demand_rising_curtails_miners_then_raises_caps_then_releases_hosts() {
    let i = drained_host_wanted_two_s21s_cap_14_kw();
    let p = plan(&i);
    let kinds: Vec<PhaseKind> = p.phases.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PhaseKind::Curtail,
            PhaseKind::Grant,
            PhaseKind::ReleaseHosts
        ]
    );
    assert_eq!(p.phases[0].moves.len(), 1);
    assert_eq!(p.phases[1].moves.len(), 8);
    assert_eq!(
        to(&p, "host/g1"),
        Some(Target::Workload {
            state: WorkloadState::Released
        })
    );
    assert_eq!(p.phases[1].committed_w, 3500.0 + 10_200.0);
}

#[test]
fn a_host_is_drained_only_after_demand_stayed_low_for_the_drain_delay() {
    let mut i = input(
        vec![],
        vec![h100_host("g1", true), h100_host("g2", true)],
        Some(market(40.0, 30.0, Some(16))),
    );
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    let p = plan(&i);
    assert!(p.phases.is_empty());
    // Demand falls to 8 GPUs: one host is enough, but the last 15 minutes needed two.
    i.memory = p.memory;
    i.market = Some(market(40.0, 30.0, Some(8)));
    i.now = t0() + Duration::minutes(5);
    let p = plan(&i);
    assert!(p.phases.is_empty(), "{:?}", p.phases);
    // Demand stayed low from minute 5: the host is drained at minute 20, and the plan says so.
    assert_eq!(p.revisit_at, Some(t0() + Duration::minutes(20)));
    i.memory = p.memory;
    i.now = t0() + Duration::minutes(16);
    let p = plan(&i);
    assert!(p.phases.is_empty(), "{:?}", p.phases);
    assert_eq!(p.revisit_at, Some(t0() + Duration::minutes(20)));
    i.memory = p.memory;
    i.now = t0() + Duration::minutes(20);
    let p = plan(&i);
    assert_eq!(
        to(&p, "host/g2"),
        Some(Target::Workload {
            state: WorkloadState::Drained
        })
    );
    assert!(moved(&p, "host/g1").is_none());
}

#[test]
fn firm_hosts_are_always_powered() {
    let mut h = h100_host("firm", false);
    h.contract = AiContract::Firm { usd_per_mwh: 190.0 };
    let p = plan(&input(vec![], vec![h], Some(market(40.0, 900.0, Some(0)))));
    assert_eq!(
        to(&p, "host/firm"),
        Some(Target::Workload {
            state: WorkloadState::Released
        })
    );
    assert!(matches!(
        moved(&p, "host/firm").map(|(_, m)| m.reason),
        Some(Reason::Firm)
    ));
}

#[test]
fn without_a_market_the_plan_holds_and_only_sheds() {
    let mut i = input(
        vec![asleep(s21("off")), s19jpro("old"), s21("new")],
        vec![h100_host("g", true)],
        None,
    );
    let p = plan(&i);
    assert!(p.phases.is_empty());
    assert_eq!(p.mode, PlanMode::SafeHold);
    assert!(p.warnings.contains(&Warning::MarketUnusable));
    // A lower cap sheds the least efficient miner; nothing wakes.
    i.site.cap_w = 3500.0 + 10_200.0 + 100.0;
    let p = plan(&i);
    assert_eq!(to(&p, "old"), SLEEP);
    assert_eq!(p.moves().count(), 1);
    i.policy.market_failure.action = policy::SafeAction::CurtailMining;
    let p = plan(&i);
    assert_eq!(to(&p, "old"), SLEEP);
    assert_eq!(to(&p, "new"), SLEEP);
    assert!(moved(&p, "host/g").is_none());
}

#[test]
fn a_schedule_window_curtails_mining_ahead_of_its_start() {
    let mut i = input(
        vec![s21("a")],
        vec![h100_host("g", true)],
        Some(market(40.0, 30.0, None)),
    );
    i.policy = policy_with(
        "[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nstart = \"07:05\"\nend = \"09:00\"\ncurtail_mining = true\n",
    );
    // 12:00Z = 07:00 CDT: the window opens in 5 minutes, within the 10-minute lead.
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert!(moved(&p, "host/g").is_none());
    assert!(
        p.explanations[0]
            .text
            .starts_with("schedule window `4cp`: sleeping 1 miners"),
        "{:?}",
        p.explanations
    );
}

#[test]
fn a_demand_response_event_lowers_the_limit_from_its_lead_and_reports_the_achievable() {
    let mut gone = s21("gone");
    gone.seen = false;
    let mut i = input(
        vec![gone, s21("a"), s21("b")],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.demand_response.push(DemandResponse {
        event_id: "dr-1".into(),
        target_power_w: 3000.0,
        deadline: t0() + Duration::minutes(20),
        ends_at: t0() + Duration::hours(2),
    });
    assert!(plan(&i).phases.is_empty());
    i.now = t0() + Duration::minutes(11);
    let p = plan(&i);
    assert_eq!(
        p.limit.source,
        CapSource::DemandResponse {
            event_id: "dr-1".into()
        }
    );
    // The unseen miner counts at its maximum, so the target cannot be met: the two seen ones
    // sleep, and the unseen one is sent to sleep too (its agent reaches it), still counted
    // at its maximum until a reading shows it asleep.
    assert_eq!(p.moves().count(), 3);
    assert_eq!(to(&p, "gone"), SLEEP);
    assert!(matches!(
        moved(&p, "gone").map(|(_, m)| &m.reason),
        Some(Reason::Cap { limit_w, .. }) if *limit_w == 3000.0
    ));
    assert_eq!(p.summary.committed_w, 3500.0);
    assert!(p.warnings.contains(&Warning::LimitUnreachable {
        limit_w: 3000.0,
        achievable_w: 3500.0
    }));
    assert!(
        p.warnings[0].to_string().contains("achievable 4 kW"),
        "{}",
        p.warnings[0]
    );
    // Its agent gone (or unable to reach it), no intent can reach it: it holds.
    i.miners[0].reachable_by_agent = false;
    let p = plan(&i);
    assert_eq!(p.moves().count(), 2);
    assert!(moved(&p, "gone").is_none());
}

fn unseen(mut m: MinerUnit) -> MinerUnit {
    m.seen = false;
    m.state = MinerState::Unknown;
    m
}

#[test]
fn an_unseen_miner_is_sent_to_sleep_when_pinned_asleep_and_never_woken() {
    let pinned_asleep = |m: MinerUnit| MinerUnit {
        pin: Some(MinerTarget::Sleep),
        ..m
    };
    let away = MinerUnit {
        reachable_by_agent: false,
        ..pinned_asleep(unseen(s21("away")))
    };
    let kept = MinerUnit {
        protected: true,
        ..pinned_asleep(unseen(s21("kept")))
    };
    let woken = MinerUnit {
        pin: Some(MinerTarget::Run {
            power_target_w: None,
        }),
        ..unseen(asleep(s21("woken")))
    };
    let i = input(
        vec![
            pinned_asleep(unseen(s21("pinned"))),
            away,
            kept,
            woken,
            unseen(s21("free")),
            pinned_asleep(s21("seen")),
        ],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    let p = plan(&i);
    assert_eq!(to(&p, "pinned"), SLEEP);
    assert_eq!(to(&p, "seen"), SLEEP);
    for id in ["away", "kept", "woken", "free"] {
        assert!(moved(&p, id).is_none(), "{id} moved");
    }
    // The unseen ones count at their maximum before and after; only the seen one makes room.
    assert_eq!(p.summary.start_committed_w, 6.0 * 3500.0);
    assert_eq!(p.summary.committed_w, 5.0 * 3500.0);
    assert_eq!(
        p.explanations[0].text,
        "operator override: sleeping 2 miners (4 kW; 1 not seen, counted at their maximum until read)"
    );
    // Once the intent is confirmed it stays asleep, still counted at its maximum.
    let mut i = i;
    i.miners[0] = asleep(i.miners[0].clone());
    i.miners[0].seen = false;
    let p = plan(&i);
    assert!(moved(&p, "pinned").is_none());
    assert_eq!(p.summary.start_committed_w, 6.0 * 3500.0);
}

#[test]
fn unseen_miners_sleep_with_the_seen_ones_in_a_schedule_window_and_a_safe_curtail() {
    let mut i = input(
        vec![s21("a"), unseen(s21("gone"))],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.policy = policy_with(
        "[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nstart = \"07:05\"\nend = \"09:00\"\ncurtail_mining = true\n",
    );
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert_eq!(to(&p, "gone"), SLEEP);
    assert_eq!(
        moved(&p, "gone").map(|(_, m)| &m.reason),
        Some(&Reason::Schedule)
    );
    // Outside the window, on economics alone, the unseen miner holds.
    i.now = t0() + Duration::hours(5);
    assert!(moved(&plan(&i), "gone").is_none());
    // No market and the policy curtails mining: both sleep.
    i.market = None;
    i.policy = PolicyDocument::default();
    i.policy.market_failure.action = policy::SafeAction::CurtailMining;
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert_eq!(
        moved(&p, "gone").map(|(_, m)| &m.reason),
        Some(&Reason::SafeMode)
    );
}

#[test]
fn negative_prices_run_every_load() {
    let p = plan(&input(
        vec![asleep(s19jpro("a"))],
        vec![h100_host("g1", false), h100_host("g2", false)],
        Some(market(40.0, -20.0, Some(0))),
    ));
    assert_eq!(to(&p, "a"), RUN);
    assert_eq!(
        to(&p, "host/g1"),
        Some(Target::Workload {
            state: WorkloadState::Released
        })
    );
    assert_eq!(
        to(&p, "host/g2"),
        Some(Target::Workload {
            state: WorkloadState::Released
        })
    );
}

#[test]
fn a_device_in_transition_counts_at_the_higher_end_until_confirmed() {
    let mut going = s21("going");
    going.intent = Some(HeldIntent {
        target: MinerTarget::Sleep,
        phase: IntentPhase::Applied,
        retrying: false,
    });
    let mut i = input(
        vec![going, asleep(s21("waiting"))],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.site.cap_w = 4000.0;
    // The sleep is not confirmed: no room for the other S21 yet.
    let p = plan(&i);
    assert!(p.phases.is_empty(), "{:?}", p.phases);
    assert_eq!(p.summary.start_committed_w, 3500.0);
    i.miners[0].intent = Some(HeldIntent {
        target: MinerTarget::Sleep,
        phase: IntentPhase::Confirmed,
        retrying: false,
    });
    i.miners[0].state = MinerState::Sleeping;
    // Confirmed asleep: room for one S21 (the first in order, which is the same model).
    let p = plan(&i);
    assert_eq!(p.moves().count(), 1);
    assert_eq!(p.summary.committed_w, 3500.0);
}

#[test]
fn the_same_input_gives_the_same_plan_and_id() {
    let i = input(
        vec![s19jpro("a"), asleep(s21("b"))],
        vec![h100_host("g", false)],
        Some(market(40.0, 70.0, None)),
    );
    let (a, b) = (plan(&i), plan(&i.clone()));
    assert_eq!(a, b);
    assert!(a.plan_id.starts_with("plan-20260701T120000Z-"));
    let mut j = i.clone();
    j.market = Some(market(40.0, 10.0, None));
    assert_ne!(plan(&j).plan_id, a.plan_id);
    let json = serde_json::to_string(&a).unwrap_or_default();
    let back: Plan = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(back.plan_id, a.plan_id);
    assert_eq!(back.phases.len(), a.phases.len());
}

#[test]
fn revisit_at_is_when_a_dwell_would_release_a_move() {
    // Energy far above the S19j Pro's breakeven; it moved 100 s ago (dwell 300 s).
    let mut m = s19jpro("a");
    m.last_change_at = Some(t0() - Duration::seconds(100));
    let mut i = input(
        vec![m, s21("steady")],
        vec![],
        Some(market(40.0, 80.0, None)),
    );
    let p = plan(&i);
    assert!(p.phases.is_empty());
    assert_eq!(p.revisit_at, Some(t0() + Duration::seconds(200)));
    // And the plan says so, in words: what waits, for how long.
    assert_eq!(p.waiting.len(), 1, "{:?}", p.waiting);
    let w = &p.waiting[0];
    assert_eq!(
        (w.model.as_str(), w.action, w.devices),
        ("S19j Pro", Action::Sleep, 1)
    );
    assert_eq!(w.power_w, 3068.0);
    assert_eq!(w.until, t0() + Duration::seconds(200));
    assert_eq!(
        w.text,
        "S19j Pro: 1 miner (3 kW) would sleep at today's prices but changed within the 300 s \
         dwell; the first may move at 12:03:20 UTC"
    );
    // A dwell that holds back no move is no reason to look again, nor to wait.
    i.market = Some(market(40.0, 30.0, None));
    assert_eq!(plan(&i).revisit_at, None);
    assert!(plan(&i).waiting.is_empty());
    // Once the dwell is over the move is made, and nothing is left to wait for.
    i.market = Some(market(40.0, 80.0, None));
    i.now = t0() + Duration::seconds(200);
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert_eq!(p.revisit_at, None);
}

#[test]
fn revisit_at_is_the_next_ramp_step() {
    let mut i = input(
        vec![asleep(s21("a")), asleep(s21("b"))],
        vec![],
        Some(market(40.0, 30.0, None)),
    );
    i.policy.economic.ramp_limit_w_per_min = 4000.0;
    let p = plan(&i);
    assert_eq!(p.phases.len(), 2);
    assert_eq!(p.revisit_at, Some(t0() + Duration::minutes(1)));
}

#[test]
fn revisit_at_is_when_a_demand_response_lead_starts_or_its_event_ends() {
    let mut i = input(vec![s21("a")], vec![], Some(market(40.0, 30.0, None)));
    i.demand_response.push(DemandResponse {
        event_id: "dr-1".into(),
        target_power_w: 1000.0,
        deadline: t0() + Duration::minutes(30),
        ends_at: t0() + Duration::hours(2),
    });
    // Default lead 600 s: shedding starts 20 minutes from now.
    assert_eq!(plan(&i).revisit_at, Some(t0() + Duration::minutes(20)));
    i.now = t0() + Duration::minutes(20);
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    assert_eq!(p.revisit_at, Some(t0() + Duration::hours(2)));
}

#[test]
fn revisit_at_is_when_a_schedule_window_comes_into_its_lead_or_ends() {
    let mut i = input(vec![s21("a")], vec![], Some(market(40.0, 30.0, None)));
    // 12:00Z = 07:00 CDT; the window opens at 08:00 CDT (13:00Z), planned for from 12:50Z.
    i.policy = policy_with(
        "[[schedule]]\nname = \"4cp\"\ntime_zone = \"America/Chicago\"\nstart = \"08:00\"\nend = \"09:00\"\ncurtail_mining = true\n",
    );
    assert_eq!(
        plan(&i).revisit_at,
        Some(t0() + Duration::minutes(50)),
        "lead of the window"
    );
    i.now = t0() + Duration::minutes(50);
    let p = plan(&i);
    assert_eq!(to(&p, "a"), SLEEP);
    // Next: 08:50 CDT (the next day's lead is later), when the window's end comes into the lead
    // (the look-ahead stops seeing it) — at the latest the window's end at 09:00.
    let r = p.revisit_at.unwrap_or_default();
    assert!(
        r > i.now && r <= t0() + Duration::hours(2),
        "{r} after {}",
        i.now
    );
}

#[test]
fn a_miner_on_its_way_to_sleep_makes_the_room_a_grant_waits_for() {
    let mut i = drained_host_wanted_two_s21s_cap_14_kw();
    let p = plan(&i);
    let slept: Vec<&str> = p
        .moves()
        .filter(|(_, m)| m.to == Target::Miner(MinerTarget::Sleep))
        .map(|(_, m)| m.device_id.as_str())
        .collect();
    assert_eq!(slept.len(), 1);
    let going = slept[0].to_owned();
    // Replanned while that sleep is still in flight: the other S21 does not sleep as well,
    // and the caps wait (the sleeping one still counts at full power).
    for m in &mut i.miners {
        if m.device_id == going {
            m.intent = Some(HeldIntent {
                target: MinerTarget::Sleep,
                phase: IntentPhase::Applied,
                retrying: false,
            });
            m.last_change_at = Some(t0());
        }
    }
    i.now = t0() + Duration::seconds(30);
    let p = plan(&i);
    assert!(p.phases.is_empty(), "{:?}", p.phases);
    assert_eq!(p.summary.grants_waiting, 1);
    assert_eq!(p.summary.start_committed_w, 7000.0 + 6200.0);
    // Confirmed: now the caps rise.
    for m in &mut i.miners {
        if m.device_id == going {
            m.intent = Some(HeldIntent {
                target: MinerTarget::Sleep,
                phase: IntentPhase::Confirmed,
                retrying: false,
            });
            m.state = MinerState::Sleeping;
        }
    }
    let p = plan(&i);
    assert_eq!(p.summary.grants_waiting, 0);
    assert_eq!(p.phases[0].kind, PhaseKind::Grant);
    assert_eq!(p.phases[0].moves.len(), 8);
    assert!(
        p.moves()
            .all(|(_, m)| m.to != Target::Miner(MinerTarget::Sleep))
    );
}

#[test]
fn a_drained_host_whose_caps_were_left_up_has_them_lowered() {
    let mut h = h100_host("g1", false);
    for g in &mut h.gpus {
        g.cap_w = Some(700.0);
    }
    h.gpus[0].cap_w = None;
    let mut i = input(vec![], vec![h], Some(market(40.0, 30.0, Some(0))));
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    let p = plan(&i);
    assert_eq!(p.phases.len(), 1);
    assert_eq!(p.phases[0].kind, PhaseKind::LowerGpuCaps);
    assert_eq!(p.phases[0].moves.len(), 8);
    assert!(
        p.phases[0]
            .moves
            .iter()
            .all(|m| m.to == Target::Gpu { power_cap_w: 200 })
    );
    assert_eq!(p.summary.start_committed_w, 10_200.0);
    assert_eq!(p.summary.committed_w, 6_200.0);
}

/// A host with work for 4 of its 8 GPUs at 0.06 USD/GPU-hour adds 4 kW for 0.24 USD/h: 60
/// USD/MWh, 30 above energy, against the S21s' 65. Ranked on all 8 GPUs (120 USD/MWh) it would
/// take the cap's room from a miner that earns more; ranked on its work it does not.
#[test]
fn a_host_with_part_of_its_gpus_wanted_is_ranked_on_that_work_not_on_all_its_gpus() {
    let mut m = market(40.0, 30.0, Some(4));
    m.ai_usd_per_gpu_hour = Some(0.06);
    let mut i = input(
        vec![s21("m1"), s21("m2")],
        vec![h100_host("g1", false)],
        Some(m),
    );
    i.site.cap_w = 14_000.0;
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    let p = plan(&i);
    assert_eq!(p.moves().count(), 0, "{:?}", p.phases);
    // With the room (no cap in the way), the host's own margin still releases it.
    i.site.cap_w = 20_000.0;
    let p = plan(&i);
    assert!(
        p.moves().any(|(_, m)| m.device_id == "host/g1"),
        "{:?}",
        p.phases
    );
    assert!(p.moves().all(|(_, m)| !m.device_id.starts_with('m')));
}

/// The brain e2e's start: a drained host with its caps still up does not fit beside the miners
/// under the cap, but it will once its caps are lowered. The plan lowers the caps; no miner
/// sleeps for room the host is about to give back.
#[test]
fn no_miner_sleeps_for_room_a_drained_host_lowering_its_caps_gives_back() {
    let mut h = h100_host("g1", false);
    for g in &mut h.gpus {
        g.cap_w = Some(700.0);
    }
    // Host at 10.2 kW with caps up, 6.2 kW with caps down; two S21s 7 kW: 17.2 > 14 > 13.2.
    let mut i = input(
        vec![s21("m1"), s21("m2")],
        vec![h],
        Some(market(40.0, 30.0, Some(0))),
    );
    i.site.cap_w = 14_000.0;
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    let p = plan(&i);
    let kinds: Vec<PhaseKind> = p.phases.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec![PhaseKind::LowerGpuCaps], "{:?}", p.phases);
    assert!(p.moves().all(|(_, m)| !m.device_id.starts_with("miner/")));
    assert_eq!(p.summary.committed_w, 13_200.0);
}

#[test]
fn the_summary_splits_committed_power_now_by_load_class() {
    let mut going = s21("going");
    going.intent = Some(HeldIntent {
        target: MinerTarget::Sleep,
        phase: IntentPhase::Applied,
        retrying: false,
    });
    let mut gone = s19jpro("gone");
    gone.seen = false;
    let mut draining = h100_host("g2", true);
    draining.state = HostState::Transition { to_serving: false };
    let p = plan(&input(
        vec![going, gone, asleep(s21("off"))],
        vec![h100_host("g1", false), draining],
        Some(market(40.0, 30.0, None)),
    ));
    // In transition at the higher end, unseen at maximum, asleep at its sleep power (0 W here).
    assert_eq!(p.summary.start_mining_w, 3500.0 + 3068.0);
    // Drained 6.2 kW; draining at full 10.2 kW until confirmed.
    assert_eq!(p.summary.start_ai_w, 6200.0 + 10_200.0);
    assert_eq!(
        p.summary.start_committed_w,
        p.summary.start_mining_w + p.summary.start_ai_w
    );
}

#[test]
fn a_host_is_worth_its_revenue_per_mwh_it_adds_over_being_drained() {
    // 8 GPUs × 2 USD/h = 16 USD/h. Serving draws 10.2 kW, drained 6.2 kW: serving adds 4 kW,
    // so it pays at any energy price below 4,000 USD/MWh (not 16 / 10.2 kW = 1,569).
    let mut i = input(
        vec![],
        vec![h100_host("g1", true)],
        Some(market(40.0, 2000.0, Some(8))),
    );
    i.policy.economic.ai_buffer_hosts = 0;
    i.policy.economic.ai_buffer_fraction = 0.0;
    assert!(plan(&i).phases.is_empty());
    i.market = Some(market(40.0, 4100.0, Some(8)));
    let p = plan(&i);
    assert_eq!(
        to(&p, "host/g1"),
        Some(Target::Workload {
            state: WorkloadState::Drained
        })
    );
    let Some((_, m)) = moved(&p, "host/g1") else {
        panic!("no move")
    };
    let Reason::Economic {
        value_usd_per_mwh, ..
    } = m.reason
    else {
        panic!("{m:?}")
    };
    assert!((value_usd_per_mwh - 4000.0).abs() < 1e-9);
    // Drained, serving earns 16 USD/h for 4 kW more at 4,100 USD/MWh: 0.4 USD/h saved.
    assert!(
        (p.summary.margin_usd_per_h - (-6.2 * 4.1)).abs() < 1e-9,
        "{:?}",
        p.summary
    );
}

/// AI demand's memory: a step stamped at the plan's own instant counts, as it does an instant
/// later (found by the long run of `nothing_changes_before_revisit_at`: a plan at t0 kept no
/// host while a plan 1 ms later, from the same memory, released one).
#[test]
fn a_need_stamped_now_is_kept_as_it_is_an_instant_later() {
    use super::decide::AiNeeds;
    let delay = Duration::seconds(600);
    let later = t0() + Duration::milliseconds(1);
    let at_t0 = AiNeeds::new(&[(t0(), 3)], t0(), delay, 0);
    assert_eq!(at_t0.kept, 3);
    assert_eq!(at_t0.falls_at, Some(t0() + delay));
    // The memory that plan leaves: the step of 3 ends at t0, where 0 begins.
    assert_eq!(at_t0.history, vec![(t0(), 3), (t0(), 0)]);
    let next = AiNeeds::new(&at_t0.history, later, delay, 0);
    assert_eq!((next.kept, next.falls_at), (3, Some(t0() + delay)));
    // Had the plan at t0 not been kept (nothing changed), the step of 3 runs until now.
    assert_eq!(AiNeeds::new(&[(t0(), 3)], later, delay, 0).kept, 3);
}

/// A wake the agent gave up on (stock firmware that cannot say which mode to wake into) leaves
/// the miner asleep: the planner does not believe it on its way to mining, so when mining pays
/// it plans a new wake (the hold after a failure is the engine's, through `protected`), and
/// until the miner is read after the failure it counts at its mining draw.
#[test]
fn a_wake_the_agent_gave_up_on_is_planned_again_and_counted_at_full_until_read() {
    let refused = |retrying| {
        let mut m = asleep(s21("m"));
        m.intent = Some(HeldIntent {
            target: MinerTarget::Run {
                power_target_w: None,
            },
            phase: IntentPhase::Failed,
            retrying,
        });
        m
    };
    let wakes = |i: &PlanInput| {
        plan(i)
            .moves()
            .filter(|(_, m)| {
                m.device_id == "m" && matches!(m.to, Target::Miner(MinerTarget::Run { .. }))
            })
            .count()
    };
    let mut i = input(vec![refused(false)], vec![], Some(market(40.0, 30.0, None)));
    i.site.cap_w = 10_000.0;
    let p = plan(&i);
    assert_eq!(wakes(&i), 1, "{:?}", p.phases);
    let (_, m) = p.moves().find(|(_, m)| m.device_id == "m").unwrap();
    assert_eq!(m.from, Some(Target::Miner(MinerTarget::Sleep)));
    // Not read since the failure: it may have woken after all, so it counts at full.
    assert_eq!(p.summary.start_committed_w, 3500.0);
    // Read since (the engine then passes no intent): asleep, at its sleeping draw (0 W here).
    i.miners[0].intent = None;
    assert_eq!(plan(&i).summary.start_committed_w, 0.0);
    assert_eq!(wakes(&i), 1);
    // The agent still retrying: the wake is on its way, nothing new is planned.
    i.miners[0] = refused(true);
    assert_eq!(wakes(&i), 0, "{:?}", plan(&i).phases);
    // Held after the failure (the engine marks it protected): not moved.
    i.miners[0] = refused(false);
    i.miners[0].protected = true;
    assert_eq!(wakes(&i), 0);
}

/// The mirror: a sleep the agent gave up on leaves the miner mining, and a price spike plans a
/// new sleep instead of believing it asleep.
#[test]
fn a_sleep_the_agent_gave_up_on_is_planned_again_when_curtailing() {
    let mut m = s19jpro("m");
    m.intent = Some(HeldIntent {
        target: MinerTarget::Sleep,
        phase: IntentPhase::Rejected,
        retrying: false,
    });
    let i = input(vec![m], vec![], Some(market(40.0, 400.0, None)));
    let p = plan(&i);
    let sleeps: Vec<_> = p
        .moves()
        .filter(|(_, m)| m.device_id == "m" && m.to == Target::Miner(MinerTarget::Sleep))
        .collect();
    assert_eq!(sleeps.len(), 1, "{:?}", p.phases);
    assert_eq!(
        sleeps[0].1.from,
        Some(Target::Miner(MinerTarget::Run {
            power_target_w: None
        }))
    );
}
