//! The planner's view of the fleet, built from what the controller knows: the registry (what
//! agents declared and last read), the ledger (the intents issued and where they stand), the
//! overrides in force and the devices whose last move failed. Pure: the same knowledge gives the
//! same units.
//!
//! What counts as *seen*: the agent's session is live and the device's last reading is
//! reachable, from this session (not restored from an earlier one), and younger than
//! `stale_after`. Anything else is unseen and the planner counts it at its maximum.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use pivot_proto::model::{IntentPhase, MinerState, Target, WorkloadState};

use crate::fleet::{AgentEntry, Confirmation, GpuSlot, MinerSlot};
use crate::market::FirmContract;
use crate::overrides::Pins;
use crate::planner::{
    AiContract, GpuHostUnit, GpuUnit, HeldIntent, HostPin, HostState, MinerUnit, PowerTargetRange,
};
use crate::store::{DeviceIntent, Override};

/// What the mapping needs besides the fleet.
#[derive(Debug, Clone)]
pub struct UnitSettings<'a> {
    pub now: DateTime<Utc>,
    /// A reading older than this is not believed.
    pub stale_after: Duration,
    /// The GPU cap a serving host runs at; `None` = each GPU's default cap.
    pub full_service_cap_w: Option<u32>,
    /// Host base draw per GPU where the agent declares none (an 8×H100 server: ~575 W per GPU).
    pub unknown_base_w_per_gpu: f64,
    pub firm: &'a [FirmContract],
}

/// The planner's units: one per miner, one per host with GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Units {
    pub miners: Vec<MinerUnit>,
    pub gpu_hosts: Vec<GpuHostUnit>,
}

fn fresh(connected: bool, at: DateTime<Utc>, restored: bool, s: &UnitSettings<'_>) -> bool {
    connected && !restored && s.now - at <= s.stale_after
}

fn held(di: Option<&DeviceIntent>) -> Option<(Target, HeldIntent<()>)> {
    let di = di?;
    let (phase, retrying) = di
        .status
        .as_ref()
        .map_or((IntentPhase::Pending, false), |s| (s.phase, s.retrying));
    Some((
        di.intent.target,
        HeldIntent {
            target: (),
            phase,
            retrying,
        },
    ))
}

/// Builds the units from the fleet and the desired state.
pub fn units(
    agents: &BTreeMap<String, AgentEntry>,
    intents: &BTreeMap<String, DeviceIntent>,
    pins: &[Override],
    failed: &BTreeSet<String>,
    s: &UnitSettings<'_>,
) -> Units {
    let mut out = Units::default();
    let pins = &Pins::new(pins);
    for a in agents.values() {
        for slot in a.miners.values() {
            out.miners.push(miner(a, slot, intents, pins, failed, s));
        }
        if !a.gpus.is_empty() {
            out.gpu_hosts.push(gpu_host(a, intents, pins, failed, s));
        }
    }
    out
}

fn miner(
    a: &AgentEntry,
    slot: &MinerSlot,
    intents: &BTreeMap<String, DeviceIntent>,
    pins: &Pins<'_>,
    failed: &BTreeSet<String>,
    s: &UnitSettings<'_>,
) -> MinerUnit {
    let id = &slot.info.device_id;
    let inv = &slot.info.inventory;
    let seen_obs = slot
        .obs
        .as_ref()
        .filter(|o| o.reachable && fresh(a.connected, o.observed_at, o.restored, s));
    let power_target = slot
        .info
        .power_target_range_w()
        .map(|(min_w, max_w)| PowerTargetRange {
            min_w,
            max_w,
            step_w: None,
        });
    let di = intents.get(id).filter(|d| d.host_id == a.host_id);
    // An intent the agent gave up on says nothing once the miner has been read since: the
    // reading says where it is (the planner counts it at both ends until then).
    let read_since = |d: &DeviceIntent| {
        seen_obs
            .zip(d.status.as_ref())
            .is_some_and(|(o, st)| o.observed_at > st.at)
    };
    let intent = held(di)
        .and_then(|(t, h)| match t {
            Target::Miner(target) => Some(HeldIntent {
                target,
                phase: h.phase,
                retrying: h.retrying,
            }),
            _ => None,
        })
        .filter(|i| !(i.given_up() && di.is_some_and(read_since)));
    let model = if inv.model.is_empty() {
        "unknown model".to_owned()
    } else {
        inv.model.clone()
    };
    let pin = pins
        .pin_for(id, &a.host_id, |t| matches!(t, Target::Miner(_)), true)
        .and_then(|o| match o.pin {
            Target::Miner(m) => Some(m),
            _ => None,
        });
    // A confirmation is a read-back newer than the last telemetry: it wins, so the planner never
    // decides on a reading older than the newest one (a miner put to sleep seconds ago must not
    // still count at its mining draw until the next telemetry).
    let (mut state, mut measured) = (
        seen_obs.map_or(MinerState::Unknown, |o| o.state),
        seen_obs.and_then(|o| o.power_w),
    );
    if let (Some(o), Some(d)) = (seen_obs, di)
        && let Some(c) = Confirmation::of(d).filter(|c| c.at > o.observed_at)
    {
        state = c.state;
        measured = c.power_w.or(measured);
    }
    MinerUnit {
        device_id: id.clone(),
        host_id: a.host_id.clone(),
        group: model.clone(),
        model,
        nameplate_power_w: slot.info.nameplate_power_w.or(slot.info.power_target_max_w),
        nameplate_hashrate_ths: inv.nameplate_hashrate_ths,
        efficiency_j_per_th: slot.last_mining_j_per_th,
        sleep_power_w: slot.last_sleeping_w,
        state,
        measured_power_w: measured,
        seen: seen_obs.is_some(),
        // A reading refused as implausible leaves no observation: such a miner is reachable.
        reachable_by_agent: a.connected && slot.obs.as_ref().is_none_or(|o| o.reachable),
        power_target,
        power_target_set_w: seen_obs.and_then(|o| o.power_target_w),
        setting_before_trim_w: di.and_then(|d| d.setting_before_w),
        intent,
        last_change_at: di.map(|d| d.issued_at),
        // A device whose last move failed holds where it is, counted as it is, until the
        // memory of the failure fades: the next device in merit order is moved instead.
        protected: failed.contains(id),
        pin,
    }
}

fn gpu_unit(
    g: &GpuSlot,
    connected: bool,
    intent: Option<&DeviceIntent>,
    s: &UnitSettings<'_>,
) -> GpuUnit {
    let inv = &g.info.inventory;
    let min = f64::from(inv.power_cap_min_w);
    let max = f64::from(inv.power_cap_max_w);
    let default = if inv.power_cap_default_w > 0 {
        inv.power_cap_default_w
    } else {
        inv.power_cap_max_w
    };
    let full = f64::from(s.full_service_cap_w.unwrap_or(default)).clamp(min, max);
    let seen = g
        .obs
        .as_ref()
        .filter(|o| fresh(connected, o.observed_at, o.restored, s));
    let mut cap_w = seen.and_then(|o| o.enforced_power_limit_w);
    // A confirmed cap newer than the reading is the newest read-back.
    if let (Some(o), Some(d)) = (seen, intent)
        && let Target::Gpu { power_cap_w } = d.intent.target
        && d.status
            .as_ref()
            .is_some_and(|st| st.phase == IntentPhase::Confirmed && st.at > o.observed_at)
    {
        cap_w = Some(f64::from(power_cap_w));
    }
    GpuUnit {
        device_id: g.info.device_id.clone(),
        min_cap_w: min,
        max_cap_w: max,
        full_service_cap_w: full,
        cap_w,
    }
}

fn gpu_host(
    a: &AgentEntry,
    intents: &BTreeMap<String, DeviceIntent>,
    pins: &Pins<'_>,
    failed: &BTreeSet<String>,
    s: &UnitSettings<'_>,
) -> GpuHostUnit {
    let mine = |id: &str| intents.get(id).filter(|d| d.host_id == a.host_id);
    let gpus: Vec<GpuUnit> = a
        .gpus
        .values()
        .map(|g| gpu_unit(g, a.connected, mine(&g.info.device_id), s))
        .collect();
    let host_device = format!("host/{}", a.host_id);
    let has_workload = !a.host.workload_managers.is_empty();
    let gpu_intents: Vec<Option<(Target, HeldIntent<()>)>> =
        gpus.iter().map(|g| held(mine(&g.device_id))).collect();
    let workload = held(mine(&host_device));
    let any_seen = a.gpus.values().any(|g| {
        g.obs
            .as_ref()
            .is_some_and(|o| fresh(a.connected, o.observed_at, o.restored, s))
    });
    // Whether every GPU was read after the last intent the agent gave up on (until then the
    // host counts as on its way, at the larger of both ends).
    let given_up_at = gpus
        .iter()
        .map(|g| g.device_id.as_str())
        .chain(std::iter::once(host_device.as_str()))
        .filter_map(|id| {
            let d = mine(id)?;
            let (_, h) = held(Some(d))?;
            h.given_up().then_some(d.status.as_ref()?.at)
        })
        .max();
    let read_since_given_up = given_up_at.is_some_and(|t| {
        a.gpus
            .values()
            .all(|g| g.obs.as_ref().is_some_and(|o| o.observed_at > t))
    });
    let state = host_state(
        &gpus,
        &gpu_intents,
        workload,
        a,
        any_seen,
        read_since_given_up,
    );
    let last_change_at = gpus
        .iter()
        .map(|g| g.device_id.as_str())
        .chain(std::iter::once(host_device.as_str()))
        .filter_map(|id| mine(id).map(|d| d.issued_at))
        .max();
    let contract = s
        .firm
        .iter()
        .find(|c| c.hosts.iter().any(|h| h == &a.host_id))
        .map_or(AiContract::Interruptible, |c| AiContract::Firm {
            usd_per_mwh: c.usd_per_mwh,
        });
    let host_pin = pins
        .on(&host_device)
        .find(|o| matches!(o.pin, Target::Workload { .. }));
    let pin = host_pin.and_then(|o| match o.pin {
        Target::Workload {
            state: WorkloadState::Released,
        } => Some(HostPin::Serve),
        Target::Workload {
            state: WorkloadState::Drained,
        } => Some(HostPin::Drain),
        _ => None,
    });
    // A GPU cap pinned by hand (on a GPU or its host) is outside what the planner moves: the
    // host holds where it is.
    let gpu_pinned = gpus.iter().any(|g| {
        pins.pin_for(
            &g.device_id,
            &a.host_id,
            |t| matches!(t, Target::Gpu { .. }),
            false,
        )
        .is_some()
    });
    let failed_here =
        gpus.iter().any(|g| failed.contains(&g.device_id)) || failed.contains(&host_device);
    let base = a
        .host_power
        .base_w
        .unwrap_or(s.unknown_base_w_per_gpu * gpus.len() as f64);
    GpuHostUnit {
        host_id: a.host_id.clone(),
        group: "GPU host".to_owned(),
        gpus,
        base_power_w: base,
        max_power_w: a.host_power.max_w,
        measured_power_w: a
            .host_reading
            .as_ref()
            .and_then(|h| h.power_w)
            .filter(|_| a.connected),
        gpus_allocated: a
            .host_reading
            .as_ref()
            .and_then(|h| h.workload.as_ref())
            .filter(|w| has_workload && a.connected && w.read_error.is_empty())
            .map(|w| w.gpus_allocated),
        workload_device_id: has_workload.then_some(host_device),
        contract,
        state,
        last_change_at,
        protected: gpu_pinned || failed_here,
        pin,
    }
}

/// Where a GPU host is, from its intents (where the controller sent it) and, where it has none,
/// from what its GPUs read (a site pivot has never driven).
fn host_state(
    gpus: &[GpuUnit],
    gpu_intents: &[Option<(Target, HeldIntent<()>)>],
    workload: Option<(Target, HeldIntent<()>)>,
    a: &AgentEntry,
    any_seen: bool,
    read_since_given_up: bool,
) -> HostState {
    if !a.connected || !any_seen {
        return HostState::Unseen;
    }
    let serving_cap = |g: &GpuUnit, cap: f64| cap >= g.full_service_cap_w - 1.0;
    let all_full = || {
        gpus.iter()
            .all(|g| g.cap_w.is_some_and(|c| serving_cap(g, c)))
    };
    // An intent the agent gave up on points nowhere: once read since, and with nothing else of
    // the host still on its way (that counts at its higher end), the host is not in transition
    // (it would wait for that forever) but where it reads: serving if every GPU runs at its
    // service cap and its workload manager, if it has one, takes jobs on it.
    let held = || {
        gpu_intents
            .iter()
            .chain(std::iter::once(&workload))
            .flatten()
    };
    let given_up = held().any(|(_, h)| h.given_up());
    let on_its_way = held().any(|(_, h)| h.unconfirmed() && !h.given_up());
    if given_up && read_since_given_up && !on_its_way {
        let schedulable = a
            .host_reading
            .as_ref()
            .and_then(|h| h.workload.as_ref())
            .is_none_or(|w| w.read_error.is_empty() && w.schedulable);
        return if all_full() && schedulable {
            HostState::Serving
        } else {
            HostState::Drained
        };
    }
    // Where the intents point, and whether all of them are confirmed.
    let mut toward: Option<bool> = None;
    let mut unconfirmed = false;
    for (g, i) in gpus.iter().zip(gpu_intents) {
        if let Some((Target::Gpu { power_cap_w }, h)) = i {
            let up = serving_cap(g, f64::from(*power_cap_w));
            toward = Some(toward.map_or(up, |t| t && up));
            unconfirmed |= h.unconfirmed();
        }
    }
    if let Some((Target::Workload { state }, h)) = workload {
        let up = state == WorkloadState::Released;
        toward = Some(toward.map_or(up, |t| t && up));
        unconfirmed |= h.unconfirmed();
    }
    match toward {
        Some(to_serving) if unconfirmed => HostState::Transition { to_serving },
        Some(true) => HostState::Serving,
        Some(false) => HostState::Drained,
        // Never driven by pivot: serving if every GPU runs at its service cap (or above).
        None if all_full() => HostState::Serving,
        None => HostState::Drained,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{GpuInfo, GpuObservation, HostPower, MinerInfo, MinerObservation};
    use crate::store::StatusRecord;
    use pivot_proto::model::MinerTarget;
    use pivot_proto::model::{Intent, MinerDialect};
    use pivot_proto::v1;

    pub(super) fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    pub(super) fn settings() -> UnitSettings<'static> {
        UnitSettings {
            now: now(),
            stale_after: Duration::seconds(30),
            full_service_cap_w: None,
            unknown_base_w_per_gpu: 575.0,
            firm: &[],
        }
    }

    pub(super) fn agent(connected: bool) -> AgentEntry {
        AgentEntry {
            host_id: "h1".into(),
            agent_version: String::new(),
            connected,
            session: None,
            connected_at: now(),
            last_seen: now(),
            host: v1::HostInventory::default(),
            host_power: HostPower::default(),
            host_reading: None,
            miners: BTreeMap::new(),
            gpus: BTreeMap::new(),
        }
    }

    pub(super) fn with_miner(
        mut a: AgentEntry,
        state: MinerState,
        age_s: i64,
        restored: bool,
    ) -> AgentEntry {
        a.miners.insert(
            "m1".into(),
            MinerSlot {
                info: MinerInfo {
                    device_id: "m1".into(),
                    dialect: Some(MinerDialect::Luxos),
                    nameplate_power_w: Some(3500.0),
                    power_target_max_w: None,
                    inventory: v1::MinerInventory {
                        model: "Antminer S21".into(),
                        nameplate_hashrate_ths: Some(200.0),
                        ..Default::default()
                    },
                },
                obs: Some(MinerObservation {
                    reachable: true,
                    state,
                    power_w: Some(3400.0),
                    hashrate_ths: Some(200.0),
                    power_target_w: None,
                    observed_at: now() - Duration::seconds(age_s),
                    restored,
                    reading: v1::MinerReading::default(),
                }),
                last_mining_j_per_th: Some(17.0),
                last_sleeping_w: None,
            },
        );
        a
    }

    fn with_gpus(mut a: AgentEntry, cap: f64) -> AgentEntry {
        for i in 0..2 {
            let id = format!("gpu/G{i}");
            a.gpus.insert(
                id.clone(),
                GpuSlot {
                    info: GpuInfo {
                        device_id: id,
                        power_cap_max_w: 700.0,
                        inventory: v1::GpuInventory {
                            power_cap_min_w: 200,
                            power_cap_max_w: 700,
                            power_cap_default_w: 700,
                            ..Default::default()
                        },
                    },
                    obs: Some(GpuObservation {
                        power_w: Some(100.0),
                        enforced_power_limit_w: Some(cap),
                        observed_at: now(),
                        restored: false,
                        reading: v1::GpuReading::default(),
                    }),
                },
            );
        }
        a
    }

    pub(super) fn map(a: AgentEntry) -> BTreeMap<String, AgentEntry> {
        BTreeMap::from([(a.host_id.clone(), a)])
    }

    pub(super) fn intent(device: &str, target: Target, phase: Option<IntentPhase>) -> DeviceIntent {
        DeviceIntent {
            host_id: "h1".into(),
            intent: Intent {
                device_id: device.into(),
                generation: 1,
                lease_expires_at: now(),
                target,
                reason: String::new(),
                phase: 0,
                plan_id: "p".into(),
            },
            issued_at: now() - Duration::seconds(5),
            before_w: None,
            setting_before_w: None,
            status: phase.map(|phase| StatusRecord {
                phase,
                detail: String::new(),
                retrying: false,
                observed_power_w: None,
                at: now(),
            }),
        }
    }

    #[test]
    fn only_fresh_reachable_readings_of_a_live_session_are_seen() {
        let u = |a| {
            units(
                &map(a),
                &BTreeMap::new(),
                &[],
                &BTreeSet::new(),
                &settings(),
            )
        };
        let m = &u(with_miner(agent(true), MinerState::Mining, 5, false)).miners[0];
        assert!(m.seen);
        assert_eq!(m.state, MinerState::Mining);
        assert_eq!(m.efficiency_j_per_th, Some(17.0));
        assert_eq!(m.model, "Antminer S21");
        assert!(m.reachable_by_agent);
        // Unseen: its agent gone, its reading stale, restored from an earlier session. Only a
        // live session can carry a sleep to it.
        for (a, reachable) in [
            (
                with_miner(agent(false), MinerState::Mining, 5, false),
                false,
            ),
            (with_miner(agent(true), MinerState::Mining, 60, false), true),
            (with_miner(agent(true), MinerState::Mining, 5, true), true),
        ] {
            let m = &u(a).miners[0];
            assert!(!m.seen);
            assert_eq!(m.state, MinerState::Unknown);
            assert_eq!(m.reachable_by_agent, reachable);
        }
        // Its agent's last poll could not reach it: unseen, and no sleep is sent to it.
        let mut a = with_miner(agent(true), MinerState::Mining, 5, false);
        if let Some(o) = a.miners.get_mut("m1").and_then(|s| s.obs.as_mut()) {
            o.reachable = false;
        }
        let m = &u(a).miners[0];
        assert!(!m.seen && !m.reachable_by_agent);
    }

    #[test]
    fn intents_pins_and_failures_reach_the_miner() {
        let a = with_miner(agent(true), MinerState::Mining, 0, false);
        let intents = BTreeMap::from([(
            "m1".to_owned(),
            intent("m1", Target::Miner(MinerTarget::Sleep), None),
        )]);
        let pins = vec![Override {
            target: "miners".into(),
            pin: Target::Miner(MinerTarget::Sleep),
            expires_at: None,
            reason: String::new(),
            actor: String::new(),
            created_at: now(),
        }];
        let failed = BTreeSet::from(["m1".to_owned()]);
        let u = units(&map(a), &intents, &pins, &failed, &settings());
        let m = &u.miners[0];
        assert_eq!(
            m.intent,
            Some(HeldIntent {
                target: MinerTarget::Sleep,
                phase: IntentPhase::Pending,
                retrying: false,
            })
        );
        assert_eq!(m.pin, Some(MinerTarget::Sleep));
        assert!(m.protected);
        assert_eq!(m.last_change_at, Some(now() - Duration::seconds(5)));
    }

    /// An intent the agent gave up on reaches the planner until the miner is read after the
    /// failure (it counts at both ends meanwhile); once read, the reading alone says where it is.
    #[test]
    fn a_given_up_intent_stands_only_until_the_miner_is_read_after_it() {
        let run = Target::Miner(MinerTarget::Run {
            power_target_w: None,
        });
        let failed_at = |age_s: i64, phase, retrying| {
            let mut d = intent("m1", run, Some(phase));
            if let Some(st) = d.status.as_mut() {
                st.at = now() - Duration::seconds(age_s);
                st.retrying = retrying;
            }
            BTreeMap::from([("m1".to_owned(), d)])
        };
        // The reading is 5 s old.
        let a = map(with_miner(agent(true), MinerState::Sleeping, 5, false));
        let held = |intents: &BTreeMap<String, DeviceIntent>| {
            units(&a, intents, &[], &BTreeSet::new(), &settings()).miners[0].intent
        };
        // Failed for good 2 s ago, after the reading: it stands (given up).
        let i = held(&failed_at(2, IntentPhase::Failed, false)).unwrap();
        assert!(i.given_up());
        // Failed for good 10 s ago, before the reading: the reading says where it is.
        assert_eq!(held(&failed_at(10, IntentPhase::Failed, false)), None);
        assert_eq!(held(&failed_at(10, IntentPhase::Rejected, false)), None);
        // Still retrying, or confirmed: the intent stands whatever the reading's age.
        let i = held(&failed_at(10, IntentPhase::Failed, true)).unwrap();
        assert!(i.retrying && !i.given_up());
        assert!(held(&failed_at(10, IntentPhase::Confirmed, false)).is_some());
    }

    /// A GPU cap the agent gave up on does not leave the host on its way forever (the planner
    /// would wait for it and never move the host again): once the GPUs are read after the
    /// failure, the host is where its caps and workload manager say.
    #[test]
    fn a_host_with_a_given_up_intent_is_where_it_reads_once_read() {
        let host_with = |caps: f64, failed_s_ago: i64, schedulable: Option<bool>, g1_phase| {
            let mut a = with_gpus(agent(true), caps);
            if let Some(s) = schedulable {
                a.host.workload_managers = vec![v1::WorkloadManagerKind::Slurm as i32];
                a.host_reading = Some(v1::HostReading {
                    workload: Some(v1::WorkloadReading {
                        schedulable: s,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            // A raise to 700 W on G0 failed for good; G1's is at `g1_phase`.
            let mut g0 = intent(
                "gpu/G0",
                Target::Gpu { power_cap_w: 700 },
                Some(IntentPhase::Failed),
            );
            if let Some(st) = g0.status.as_mut() {
                st.at = now() - Duration::seconds(failed_s_ago);
            }
            let g1 = intent("gpu/G1", Target::Gpu { power_cap_w: 700 }, Some(g1_phase));
            let intents = BTreeMap::from([("gpu/G0".to_owned(), g0), ("gpu/G1".to_owned(), g1)]);
            units(&map(a), &intents, &[], &BTreeSet::new(), &settings()).gpu_hosts[0].state
        };
        let host = |caps, failed_s_ago, schedulable| {
            host_with(caps, failed_s_ago, schedulable, IntentPhase::Confirmed)
        };
        // Not read since the failure (readings are at `now`, the failure 0 s ago): on its way.
        assert_eq!(
            host(200.0, 0, None),
            HostState::Transition { to_serving: true }
        );
        // Read since, but G1's raise still on its way: in transition (counted at the top end).
        assert_eq!(
            host_with(200.0, 3, None, IntentPhase::Pending),
            HostState::Transition { to_serving: true }
        );
        // Read since: caps low, drained; caps full, serving; a drained node is not serving.
        assert_eq!(host(200.0, 3, None), HostState::Drained);
        assert_eq!(host(700.0, 3, None), HostState::Serving);
        assert_eq!(host(700.0, 3, Some(true)), HostState::Serving);
        assert_eq!(host(700.0, 3, Some(false)), HostState::Drained);
    }

    #[test]
    fn a_confirmation_newer_than_the_last_reading_wins() {
        // The miner read mining 5 s ago; its sleep was confirmed 1 s ago at 20 W.
        let a = with_miner(agent(true), MinerState::Mining, 5, false);
        let mut d = intent(
            "m1",
            Target::Miner(MinerTarget::Sleep),
            Some(IntentPhase::Confirmed),
        );
        if let Some(st) = d.status.as_mut() {
            st.at = now() - Duration::seconds(1);
            st.observed_power_w = Some(20.0);
        }
        let intents = BTreeMap::from([("m1".to_owned(), d.clone())]);
        let m = &units(
            &map(a.clone()),
            &intents,
            &[],
            &BTreeSet::new(),
            &settings(),
        )
        .miners[0];
        assert_eq!(
            (m.state, m.measured_power_w),
            (MinerState::Sleeping, Some(20.0))
        );
        // An older confirmation does not override a newer reading.
        if let Some(st) = d.status.as_mut() {
            st.at = now() - Duration::seconds(9);
        }
        let intents = BTreeMap::from([("m1".to_owned(), d)]);
        let m = &units(&map(a), &intents, &[], &BTreeSet::new(), &settings()).miners[0];
        assert_eq!(
            (m.state, m.measured_power_w),
            (MinerState::Mining, Some(3400.0))
        );
    }

    #[test]
    fn a_gpu_host_is_where_its_intents_point_or_what_its_caps_read() {
        let s = settings();
        let none = BTreeMap::new();
        let u = |a, i: &BTreeMap<String, DeviceIntent>| {
            units(&map(a), i, &[], &BTreeSet::new(), &s).gpu_hosts[0].clone()
        };
        assert_eq!(
            u(with_gpus(agent(true), 700.0), &none).state,
            HostState::Serving
        );
        assert_eq!(
            u(with_gpus(agent(true), 200.0), &none).state,
            HostState::Drained
        );
        assert_eq!(
            u(with_gpus(agent(false), 700.0), &none).state,
            HostState::Unseen
        );
        let h = u(with_gpus(agent(true), 200.0), &none);
        assert_eq!(h.base_power_w, 1150.0, "unknown base: 575 W per GPU");
        let up = BTreeMap::from([
            (
                "gpu/G0".to_owned(),
                intent(
                    "gpu/G0",
                    Target::Gpu { power_cap_w: 700 },
                    Some(IntentPhase::Confirmed),
                ),
            ),
            (
                "gpu/G1".to_owned(),
                intent(
                    "gpu/G1",
                    Target::Gpu { power_cap_w: 700 },
                    Some(IntentPhase::Applied),
                ),
            ),
        ]);
        assert_eq!(
            u(with_gpus(agent(true), 200.0), &up).state,
            HostState::Transition { to_serving: true }
        );
    }
}

/// The engine and the planner together, over random intents and readings of one miner: however
/// far its intent got (confirmed, on its way, retried, given up) and whichever came last, the
/// failure or the reading, the site counts the miner at no less than it may draw.
#[cfg(test)]
mod accounting {
    use pivot_proto::model::MinerTarget;
    use proptest::prelude::*;

    use super::tests::{agent, intent, map, now, settings, with_miner};
    use super::*;
    use crate::fleet::Assumptions;
    use crate::planner::{self, HELD_PHASES, PlanInput, PlannerMemory, SiteLimits};
    use crate::policy::PolicyDocument;

    /// The miner `with_miner` builds: its nameplate, and what it reads mining and asleep.
    const FULL_W: f64 = 3500.0;
    const MINING_READ_W: f64 = 3400.0;
    const ASLEEP_W: f64 = 20.0;

    fn committed_w(
        agents: &BTreeMap<String, AgentEntry>,
        intents: &BTreeMap<String, DeviceIntent>,
    ) -> f64 {
        let u = units(agents, intents, &[], &BTreeSet::new(), &settings());
        let input = PlanInput {
            now: now(),
            site: SiteLimits {
                cap_w: 1e9,
                reserve_w: 0.0,
            },
            demand_response: Vec::new(),
            market: None,
            policy: PolicyDocument::default(),
            assumptions: Assumptions {
                unknown_miner_max_w: FULL_W,
                sleeping_miner_w: ASLEEP_W,
            },
            miners: u.miners,
            gpu_hosts: u.gpu_hosts,
            memory: PlannerMemory::default(),
        };
        planner::plan(&input).summary.start_committed_w
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn a_miner_counts_at_no_less_than_it_may_draw(
            mining in any::<bool>(),
            read_s_ago in 0i64..20,
            intent_spec in prop::option::of((any::<bool>(), 0..HELD_PHASES.len(), -20i64..20)),
        ) {
            let state = if mining { MinerState::Mining } else { MinerState::Sleeping };
            let mut a = with_miner(agent(true), state, read_s_ago, false);
            if let Some(o) = a.miners.get_mut("m1").and_then(|m| m.obs.as_mut()) {
                o.power_w = Some(if mining { MINING_READ_W } else { ASLEEP_W });
                o.hashrate_ths = Some(if mining { 200.0 } else { 0.0 });
            }
            let agents = map(a);
            let observed_w = if mining { FULL_W } else { ASLEEP_W };
            let read_w = if mining { MINING_READ_W } else { ASLEEP_W };
            let (intents, floor_w) = match intent_spec {
                None => (BTreeMap::new(), observed_w),
                Some((run, phase, status_s_ago)) => {
                    let (phase, retrying) = HELD_PHASES[phase];
                    let (target, target_w) = if run {
                        (MinerTarget::Run { power_target_w: None }, FULL_W)
                    } else {
                        (MinerTarget::Sleep, ASLEEP_W)
                    };
                    let at = now() - Duration::seconds(status_s_ago);
                    let mut d = intent("m1", Target::Miner(target), Some(phase));
                    if let Some(st) = d.status.as_mut() {
                        st.retrying = retrying;
                        st.at = at;
                    }
                    let given_up = phase == IntentPhase::Rejected
                        || (phase == IntentPhase::Failed && !retrying);
                    let read_after = now() - Duration::seconds(read_s_ago) > at;
                    let floor = match phase {
                        // Confirmed, and read since: at least the draw it read (a reading
                        // that contradicts the confirmation is believed at its measured draw).
                        IntentPhase::Confirmed if read_after => read_w,
                        IntentPhase::Confirmed => target_w,
                        _ if given_up && read_after => observed_w,
                        _ => target_w.max(observed_w),
                    };
                    (BTreeMap::from([("m1".to_owned(), d)]), floor)
                }
            };
            let got = committed_w(&agents, &intents);
            prop_assert!(got + 1e-6 >= floor_w, "counted {got} W, may draw {floor_w} W; intent {intent_spec:?}, mining {mining}, read {read_s_ago} s ago");
        }
    }
}
