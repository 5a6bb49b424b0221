//! Property tests over random fleets, markets, policies and previous states: the safety
//! invariants and the planning rules hold for every input, not just the worked examples.

use chrono::Duration;
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget, Target};
use proptest::prelude::*;

use super::tests::{h100_host, input, miner, t0};
use super::*;

#[derive(Debug, Clone)]
struct MinerSpec {
    power_w: f64,
    ths: f64,
    state: u8,
    intent: u8,
    phase: u8,
    seen: bool,
    /// Its agent connected and reaching it (matters only when it is not seen).
    connected: bool,
    pin: u8,
    protected: bool,
    changed_s_ago: Option<i64>,
    trim: Option<f64>,
    /// The top of its power-target range over its rating (LuxOS's profiles reach 1.6 times it).
    headroom: f64,
    /// What it reports it is set to, as a fraction of its rating.
    set: Option<f64>,
    /// What the ledger keeps as its setting from before Pivot first trimmed it, a fraction.
    kept: Option<f64>,
}

fn miner_spec() -> impl Strategy<Value = MinerSpec> {
    (
        (1000.0..4000.0f64, 40.0..300.0f64, 0u8..5, 0u8..4, 0u8..6),
        (
            prop::bool::weighted(0.9),
            0u8..12,
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.7),
        ),
        (
            prop::option::of(0i64..900),
            prop::option::weighted(0.3, 0.3..0.9f64),
            prop_oneof![Just(1.0), Just(1.1), 1.0..1.6f64],
            prop::option::weighted(0.7, prop_oneof![Just(1.0), 0.3..1.6f64]),
            prop::option::weighted(0.2, 0.5..1.5f64),
        ),
    )
        .prop_map(
            |(
                (power_w, ths, state, intent, phase),
                (seen, pin, protected, connected),
                (changed_s_ago, trim, headroom, set, kept),
            )| MinerSpec {
                power_w,
                ths,
                state,
                intent,
                phase,
                seen,
                connected,
                pin,
                protected,
                changed_s_ago,
                trim,
                headroom,
                kept,
                set,
            },
        )
}

#[derive(Debug, Clone)]
struct HostSpec {
    serving: bool,
    state: u8,
    firm: bool,
    pin: u8,
    changed_s_ago: Option<i64>,
    /// GPUs its workload manager has allocated (0–8), when read.
    gpus_allocated: Option<u32>,
}

fn host_spec() -> impl Strategy<Value = HostSpec> {
    (
        any::<bool>(),
        0u8..6,
        prop::bool::weighted(0.2),
        0u8..10,
        prop::option::of(0i64..1800),
        prop::option::of(0u32..=8),
    )
        .prop_map(
            |(serving, state, firm, pin, changed_s_ago, gpus_allocated)| HostSpec {
                serving,
                state,
                firm,
                pin,
                changed_s_ago,
                gpus_allocated,
            },
        )
}

#[derive(Debug, Clone)]
struct World {
    miners: Vec<MinerSpec>,
    hosts: Vec<HostSpec>,
    market: Option<(f64, f64, Option<u32>)>,
    cap_w: f64,
    reserve_w: f64,
    band: f64,
    floor: f64,
    dwell_s: u64,
    ramp_w: f64,
    buffer: u32,
    curtail_on_failure: bool,
    last_grant_s_ago: Option<i64>,
    needed_history: Vec<(i64, u32)>,
}

fn world() -> impl Strategy<Value = World> {
    (
        (
            prop::collection::vec(miner_spec(), 0..40),
            prop::collection::vec(host_spec(), 0..5),
        ),
        prop::option::weighted(
            0.85,
            (20.0..80.0f64, -60.0..400.0f64, prop::option::of(0u32..48)),
        ),
        (0.0..200_000.0f64, 0.0..5000.0f64),
        (
            0.0..20.0f64,
            -10.0..10.0f64,
            0u64..600,
            prop_oneof![Just(0.0), 2000.0..30_000.0f64],
        ),
        (0u32..3, any::<bool>(), prop::option::of(0i64..120)),
        prop::collection::vec((0i64..1800, 0u32..6), 0..6),
    )
        .prop_map(
            |(
                (miners, hosts),
                market,
                (cap_w, reserve_w),
                (band, floor, dwell_s, ramp_w),
                (buffer, curtail_on_failure, last_grant_s_ago),
                needed_history,
            )| World {
                miners,
                hosts,
                market,
                cap_w,
                reserve_w,
                band,
                floor,
                dwell_s,
                ramp_w,
                buffer,
                curtail_on_failure,
                last_grant_s_ago,
                needed_history,
            },
        )
}

fn build(w: &World) -> PlanInput {
    let states = [
        MinerState::Mining,
        MinerState::Sleeping,
        MinerState::Ramping,
        MinerState::Faulted,
        MinerState::Unknown,
    ];
    let miners = w
        .miners
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut m = miner(
                &format!("m{i}"),
                if i % 2 == 0 { "A" } else { "B" },
                s.power_w,
                s.ths,
            );
            m.state = states[usize::from(s.state)];
            m.seen = s.seen;
            m.reachable_by_agent = s.connected;
            m.sleep_power_w = Some(15.0);
            let trim_w = s.trim.map(|f| (s.power_w * f).round());
            m.power_target = s.trim.map(|_| PowerTargetRange {
                min_w: (s.power_w * 0.3).round(),
                max_w: (s.power_w * s.headroom).round(),
                step_w: Some(50.0),
            });
            m.power_target_set_w = s.set.map(|f| (s.power_w * f).round());
            m.setting_before_trim_w = s.kept.map(|f| (s.power_w * f).round());
            let target = |k: u8| match k {
                0 => MinerTarget::Sleep,
                1 => MinerTarget::Run {
                    power_target_w: trim_w.map(phases::watts_u32),
                },
                _ => MinerTarget::Run {
                    power_target_w: None,
                },
            };
            m.intent = (s.intent < 3).then(|| HeldIntent {
                target: target(s.intent),
                phase: input::HELD_PHASES[usize::from(s.phase)].0,
                retrying: input::HELD_PHASES[usize::from(s.phase)].1,
            });
            m.pin = match s.pin {
                0 => Some(MinerTarget::Sleep),
                1 => Some(MinerTarget::Run {
                    power_target_w: None,
                }),
                _ => None,
            };
            m.protected = s.protected;
            m.last_change_at = s.changed_s_ago.map(|a| t0() - Duration::seconds(a));
            m
        })
        .collect();
    let hosts = w
        .hosts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut h = h100_host(&format!("g{i}"), s.serving);
            h.state = match s.state {
                0 => HostState::Unseen,
                1 => HostState::Transition {
                    to_serving: !s.serving,
                },
                _ => h.state,
            };
            if s.firm {
                h.contract = AiContract::Firm { usd_per_mwh: 180.0 };
            }
            h.pin = match s.pin {
                0 => Some(HostPin::Serve),
                1 => Some(HostPin::Drain),
                _ => None,
            };
            h.last_change_at = s.changed_s_ago.map(|a| t0() - Duration::seconds(a));
            h.gpus_allocated = s.gpus_allocated;
            h
        })
        .collect();
    let mut i = input(
        miners,
        hosts,
        w.market.map(|(hp, e, d)| MarketView {
            hashprice_usd_per_ph_day: hp,
            energy_usd_per_mwh: e,
            ai_usd_per_gpu_hour: Some(2.0),
            ai_gpu_demand: d,
        }),
    );
    i.site = SiteLimits {
        cap_w: w.cap_w,
        reserve_w: w.reserve_w,
    };
    let e = &mut i.policy.economic;
    e.hysteresis_usd_per_mwh = w.band;
    e.min_margin_usd_per_mwh = w.floor;
    e.min_dwell_s = w.dwell_s;
    e.ramp_limit_w_per_min = w.ramp_w;
    e.ai_buffer_hosts = w.buffer;
    e.ai_buffer_fraction = f64::from(w.buffer) * 0.1;
    if w.curtail_on_failure {
        i.policy.market_failure.action = crate::policy::SafeAction::CurtailMining;
    }
    i.memory = PlannerMemory {
        ai_hosts_needed: w
            .needed_history
            .iter()
            .map(|(a, n)| (t0() - Duration::seconds(*a), *n))
            .collect(),
        last_grant_at: w.last_grant_s_ago.map(|a| t0() - Duration::seconds(a)),
    };
    i
}

const EPS: f64 = 1e-6;

/// Cases per property: 400, or `PIVOT_PLANNER_CASES` for a long run (with rejects allowed in
/// proportion: a property that assumes a market rejects about a sixth of the worlds).
fn cases() -> u32 {
    std::env::var("PIVOT_PLANNER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig {
        max_global_rejects: cases().saturating_mul(4).max(1024),
        ..ProptestConfig::with_cases(cases())
    })]

    #[test]
    fn no_grant_phase_exceeds_the_limit_and_releases_come_first(w in world()) {
        let input = build(&w);
        let p = plan(&input);
        let limit = p.limit.limit_w;
        let mut granting = false;
        let mut committed = p.summary.start_committed_w;
        for ph in &p.phases {
            if ph.kind.releases_power() {
                prop_assert!(!granting, "release phase {} after a grant", ph.index);
                prop_assert!(ph.committed_w <= committed + EPS);
                prop_assert!(ph.committed_after_w <= ph.committed_w + EPS);
                for m in &ph.moves {
                    prop_assert!(m.power_after_w <= m.power_before_w + EPS, "{m:?} raises power in a release phase");
                }
            } else {
                granting = true;
                prop_assert!(ph.committed_w <= limit + EPS || ph.committed_w <= committed + EPS,
                    "phase {} commits {} over limit {}: {:?}", ph.index, ph.committed_w, limit, ph.moves);
            }
            committed = ph.committed_after_w;
        }
        let unreachable = p.warnings.iter().any(|w| matches!(w, Warning::LimitUnreachable { .. }));
        // A release an earlier plan sent still counts at its higher end until it is confirmed;
        // the plan does not shed more for it, so the limit may be met only once it is.
        let releases_in_flight = input.miners.iter().any(|m| {
            m.intent.is_some_and(|i| {
                matches!(i.phase, IntentPhase::Pending | IntentPhase::Applied)
                    && i.target != MinerTarget::Run { power_target_w: None }
            })
        }) || input
            .gpu_hosts
            .iter()
            .any(|h| h.state == HostState::Transition { to_serving: false });
        prop_assert!(p.summary.committed_w <= limit + EPS || unreachable || releases_in_flight);
        if unreachable {
            prop_assert!(p.summary.lowest_achievable_w > limit);
        }
    }

    #[test]
    fn hosts_are_released_only_after_their_caps_rose_and_capped_only_after_draining(w in world()) {
        let p = plan(&build(&w));
        for (ph, m) in p.moves() {
            let host = m.host_id.as_str();
            match m.to {
                Target::Workload { state: pivot_proto::model::WorkloadState::Released } => {
                    prop_assert_eq!(ph.kind, PhaseKind::ReleaseHosts);
                    for (earlier, c) in p.moves().filter(|(_, c)| c.host_id == host && matches!(c.to, Target::Gpu { .. })) {
                        prop_assert!(earlier.index < ph.index, "{c:?} not before {m:?}");
                    }
                }
                Target::Workload { state: pivot_proto::model::WorkloadState::Drained } => {
                    prop_assert_eq!(ph.kind, PhaseKind::Curtail);
                }
                Target::Gpu { .. } => prop_assert!(matches!(ph.kind, PhaseKind::Grant | PhaseKind::LowerGpuCaps)),
                Target::Miner(_) => prop_assert!(matches!(ph.kind, PhaseKind::Grant | PhaseKind::Curtail)),
            }
        }
        // Ramp: grant steps a minute apart, each within the limit per minute unless one device.
        let grants: Vec<&Phase> = p.phases.iter().filter(|ph| ph.kind == PhaseKind::Grant).collect();
        for pair in grants.windows(2) {
            let (a, b) = (pair[0].not_before.unwrap_or(t0()), pair[1].not_before.unwrap_or(t0()));
            prop_assert_eq!(b - a, Duration::minutes(1));
        }
    }

    #[test]
    fn the_plan_is_deterministic(w in world()) {
        let input = build(&w);
        prop_assert_eq!(plan(&input), plan(&input.clone()));
    }

    /// An unseen miner counts at its maximum before, during and after the plan, and moves only
    /// to sleep, only through an agent that reaches it, never when protected; an unseen host never
    /// moves.
    #[test]
    fn unseen_devices_count_at_their_maximum_and_move_only_to_sleep(w in world()) {
        let input = build(&w);
        let p = plan(&input);
        let mut unseen_max = 0.0;
        for m in input.miners.iter().filter(|m| !m.seen) {
            unseen_max += m.nameplate_power_w.unwrap_or(0.0);
            for (_, mv) in p.moves().filter(|(_, mv)| mv.device_id == m.device_id) {
                prop_assert_eq!(mv.to, Target::Miner(MinerTarget::Sleep));
                prop_assert!(m.reachable_by_agent && !m.protected, "{} moved", m.device_id);
                // And only when it must: pinned asleep, mining curtailed by the safe mode, or a
                // limit the plan cannot meet (the world has no schedule windows).
                let must = m.pin == Some(MinerTarget::Sleep)
                    || p.mode == PlanMode::SafeCurtailMining
                    || p.warnings.iter().any(|w| matches!(w, Warning::LimitUnreachable { .. }));
                prop_assert!(must, "{} slept unseen without cause: {:?}", m.device_id, mv.reason);
            }
        }
        for h in input.gpu_hosts.iter().filter(|h| h.state == HostState::Unseen) {
            unseen_max += h.base_power_w + h.gpus.iter().map(|g| g.max_cap_w).sum::<f64>();
            prop_assert!(p.moves().all(|(_, mv)| mv.host_id != h.host_id));
        }
        prop_assert!(p.summary.start_committed_w + EPS >= unseen_max);
        prop_assert!(p.summary.lowest_achievable_w + EPS >= unseen_max);
        prop_assert!(p.summary.committed_w + EPS >= unseen_max);
        for ph in &p.phases {
            prop_assert!(ph.committed_w + EPS >= unseen_max, "phase {:?}", ph.kind);
        }
    }

    #[test]
    fn pinned_and_protected_devices_go_only_where_pinned(w in world()) {
        let input = build(&w);
        let p = plan(&input);
        for m in &input.miners {
            let mv = p.moves().find(|(_, mv)| mv.device_id == m.device_id);
            if m.protected {
                prop_assert!(mv.is_none());
            } else if let (Some(pin), Some((_, mv))) = (m.pin, mv) {
                // Full power is `Run` with no target, or with its full-power figure.
                let full_w = full_power_w(m);
                let full = Target::Miner(MinerTarget::Run { power_target_w: Some(phases::watts_u32(full_w)) });
                prop_assert!(mv.to == Target::Miner(pin) || (pin == MinerTarget::Run { power_target_w: None } && mv.to == full), "{mv:?}");
            }
        }
    }

    /// Pivot trims and restores; it never sets a miner above its rating, or above what the
    /// miner was set to already (an operator's overclock is kept, never made), and never above
    /// the owner's own setting when it knows it: the one the miner reports while no power target
    /// of Pivot's is on it, else the one the ledger kept from before Pivot's first trim — which a
    /// first trim records.
    #[test]
    fn no_miner_is_set_above_its_rating_or_its_own_setting(w in world()) {
        let input = build(&w);
        let p = plan(&input);
        for m in &input.miners {
            let own = owners_setting_w(m);
            let most = m.nameplate_power_w.unwrap_or(0.0)
                .max(m.power_target_set_w.unwrap_or(0.0))
                .max(m.setting_before_trim_w.unwrap_or(0.0));
            let known = m.power_target_set_w.is_some() || m.setting_before_trim_w.is_some();
            for (_, mv) in p.moves().filter(|(_, mv)| mv.device_id == m.device_id) {
                if let Target::Miner(MinerTarget::Run { power_target_w: Some(t) }) = mv.to {
                    let t = f64::from(t);
                    prop_assert!(!known || t <= most + 0.5, "{mv:?} sets {t} W; rated {:?}, set {:?}", m.nameplate_power_w, m.power_target_set_w);
                    if let Some(own) = own {
                        let own = own.max(m.power_target.map_or(0.0, |r| r.min_w));
                        prop_assert!(t <= own + 0.5, "{mv:?} sets {t} W above the owner's {own} W");
                        // A first trim keeps the owner's setting for the restore.
                        if m.setting_before_trim_w.is_none() && t < own - 0.5 {
                            prop_assert_eq!(mv.setting_before_w, Some(own), "{:?}", mv);
                        }
                    }
                }
                if m.setting_before_trim_w.is_some() {
                    prop_assert_eq!(mv.setting_before_w, None, "kept already: {:?}", mv);
                }
            }
        }
    }

    #[test]
    fn without_a_market_no_load_is_added(w in world()) {
        let mut input = build(&w);
        input.market = None;
        let p = plan(&input);
        for (_, m) in p.moves() {
            prop_assert!(m.power_after_w <= m.power_before_w + EPS, "{m:?}");
            let wakes = matches!(m.to, Target::Miner(MinerTarget::Run { .. }) | Target::Workload { state: pivot_proto::model::WorkloadState::Released });
            prop_assert!(!wakes || m.power_after_w <= m.power_before_w + EPS, "{m:?}");
        }
        prop_assert!(p.summary.committed_w <= p.summary.start_committed_w + EPS);
    }

    /// Under a cap with room for everything and no schedule, a miner moves only on its margin:
    /// outside the band, with its dwell passed and no intent in flight.
    #[test]
    fn no_miner_moves_inside_the_band_or_before_its_dwell(w in world()) {
        let mut input = build(&w);
        input.site.cap_w = 1e12;
        prop_assume!(input.market.is_some());
        let p = plan(&input);
        let e = &input.policy.economic;
        let half = e.hysteresis_usd_per_mwh / 2.0;
        let dwell = Duration::seconds(i64::try_from(e.min_dwell_s).unwrap_or(0));
        for m in &input.miners {
            let Some((_, mv)) = p.moves().find(|(_, mv)| mv.device_id == m.device_id) else { continue };
            if m.pin.is_some() {
                continue;
            }
            let Reason::Economic { margin_usd_per_mwh: margin, .. } = mv.reason else {
                prop_assert!(matches!(mv.reason, Reason::Restore { .. }), "{mv:?}");
                continue;
            };
            prop_assert!(m.last_change_at.is_none_or(|t| input.now - t >= dwell), "{mv:?} inside dwell");
            prop_assert!(!m.intent.is_some_and(|i| matches!(i.phase, IntentPhase::Pending | IntentPhase::Applied)));
            match mv.to {
                Target::Miner(MinerTarget::Sleep) => prop_assert!(margin < e.min_margin_usd_per_mwh - half + EPS, "{mv:?}"),
                _ => prop_assert!(margin >= e.min_margin_usd_per_mwh + half - EPS, "{mv:?}"),
            }
        }
    }

    /// Until `revisit_at`, the same inputs give the same moves: a controller that plans again
    /// only when an input changes or `revisit_at` has come misses nothing.
    #[test]
    fn nothing_changes_before_revisit_at(w in world(), frac in 0.0..1.0f64, with_dr in any::<bool>()) {
        let mut input = build(&w);
        if with_dr {
            input.demand_response.push(DemandResponse {
                event_id: "dr".into(),
                target_power_w: w.cap_w * 0.6,
                deadline: t0() + Duration::seconds(900),
                ends_at: t0() + Duration::seconds(4000),
            });
        }
        let p = plan(&input);
        let horizon = p.revisit_at.unwrap_or(t0() + Duration::hours(6));
        prop_assert!(horizon > t0());
        let span_ms = (horizon - t0()).num_milliseconds();
        // A strictly earlier instant than revisit_at, anywhere in between.
        let later_ms = ((span_ms - 1) as f64 * frac) as i64;
        let mut again = input.clone();
        again.now = t0() + Duration::milliseconds(later_ms.max(0));
        let q = plan(&again);
        let shape = |p: &Plan| -> Vec<(PhaseKind, Vec<(String, Target)>)> {
            p.phases.iter().map(|ph| (ph.kind, ph.moves.iter().map(|m| (m.device_id.clone(), m.to)).collect())).collect()
        };
        prop_assert_eq!(shape(&p), shape(&q), "at {} (revisit_at {:?})", again.now, p.revisit_at);
        prop_assert_eq!(p.limit, q.limit);
    }

    /// The merit order's radix sort orders as a comparison sort of the ranks would (highest
    /// first, ties by index), for every float the ranks can hold.
    #[test]
    fn the_radix_sort_orders_ranks_like_a_comparison_sort(
        ranks in prop::collection::vec(prop_oneof![
            any::<f64>(),
            -1e3..1e3f64,
            Just(0.0), Just(-0.0), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(f64::MAX),
        ], 0..300),
        big in prop::bool::weighted(0.03),
    ) {
        // Past 65,536 items the sort takes 16 bits a pass.
        let ranks: Vec<f64> = if big { ranks.iter().copied().cycle().take(70_000).collect() } else { ranks };
        let mut keyed: Vec<(u64, usize)> = ranks.iter().enumerate().map(|(i, r)| (decide::descending_key(*r), i)).collect();
        decide::radix_sort(&mut keyed);
        let mut expected: Vec<usize> = (0..ranks.len()).collect();
        expected.sort_by(|&a, &b| ranks[b].total_cmp(&ranks[a]).then(a.cmp(&b)));
        let got: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
        prop_assert_eq!(got, expected);
    }
}

/// The owner's setting of a miner with a range, as the planner may know it: what it reports
/// while no power target of Pivot's is on it, else what the ledger kept; never for one unseen.
fn owners_setting_w(m: &MinerUnit) -> Option<f64> {
    let pivots = matches!(
        m.intent.map(|i| i.target),
        Some(MinerTarget::Run {
            power_target_w: Some(_)
        })
    );
    if !m.seen || m.power_target.is_none() {
        return None;
    }
    m.setting_before_trim_w
        .or(if pivots { None } else { m.power_target_set_w })
}

/// What full power is for a miner: its owner's setting when known; else its rating, or what it
/// reports it is set to when that is more; the top of its range only when its setting is unknown.
fn full_power_w(m: &MinerUnit) -> f64 {
    let np = m.nameplate_power_w.unwrap_or(0.0);
    match (m.power_target, owners_setting_w(m), m.power_target_set_w) {
        (Some(r), Some(own), _) => own.max(r.min_w),
        (Some(_), None, Some(set)) => np.max(set),
        (Some(r), None, None) => np.max(r.max_w),
        (None, _, _) => np,
    }
}
