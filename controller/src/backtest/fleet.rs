//! The modelled fleet: one unit per miner and per GPU host of a SITE.toml, what each draws and
//! earns in each state (the model, exactly), and the planner's view of it.

use chrono::{DateTime, Utc};
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget, Target, WorkloadState};

use super::site::{Contract, HOST_TRANSITION_S, MINER_TRANSITION_S, Site};
use crate::fleet::Assumptions;
use crate::planner::{
    AiContract, GpuHostUnit, GpuUnit, HeldIntent, HostState, MinerUnit, PowerTargetRange,
};

/// What a unit draws and earns as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Off,
    Full,
    /// A miner at a power target, W.
    Trim(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Index into `site.miners`.
    Miner(usize),
    /// Index into `site.gpu_hosts`.
    Host(usize),
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub kind: Kind,
    /// What it draws and earns as now.
    pub drawn: Level,
    /// What it was told to be.
    pub target: Level,
    /// When its transition ends (it draws and earns as `drawn` until then).
    pub ends_at: Option<DateTime<Utc>>,
    pub changed_at: Option<DateTime<Utc>>,
    pub transition_s: i64,
    /// Index into the planner input's miners or hosts.
    pub input_index: usize,
}

/// Rates of one unit in one state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub draw_w: f64,
    pub mining_w: f64,
    pub ai_w: f64,
    /// Hashrate earning, TH/s.
    pub hashrate_ths: f64,
    /// Interruptible GPUs serving.
    pub serving_gpus: f64,
    /// Firm AI revenue, USD/h.
    pub firm_usd_per_h: f64,
}

impl std::ops::AddAssign for Rates {
    fn add_assign(&mut self, o: Rates) {
        self.draw_w += o.draw_w;
        self.mining_w += o.mining_w;
        self.ai_w += o.ai_w;
        self.hashrate_ths += o.hashrate_ths;
        self.serving_gpus += o.serving_gpus;
        self.firm_usd_per_h += o.firm_usd_per_h;
    }
}

pub fn rates(site: &Site, kind: Kind, level: Level) -> Rates {
    match kind {
        Kind::Miner(g) => {
            let m = &site.miners[g];
            let (w, ths) = match level {
                Level::Off => (m.sleep_w, 0.0),
                Level::Full => (m.power_w, m.hashrate_ths),
                Level::Trim(p) => (p, m.hashrate_ths * p / m.power_w),
            };
            Rates {
                draw_w: w,
                mining_w: w,
                hashrate_ths: ths,
                ..Rates::default()
            }
        }
        Kind::Host(g) => {
            let h = &site.gpu_hosts[g];
            let serving = !matches!(level, Level::Off) || h.contract == Contract::Firm;
            let w = if serving {
                h.serving_w()
            } else {
                h.drained_w()
            };
            let mut r = Rates {
                draw_w: w,
                ai_w: w,
                ..Rates::default()
            };
            match (h.contract, serving) {
                (Contract::Firm, _) => {
                    r.firm_usd_per_h = h.firm_usd_per_mwh.unwrap_or(0.0) * w / 1e6
                }
                (Contract::Interruptible, true) => r.serving_gpus = f64::from(h.gpus),
                (Contract::Interruptible, false) => {}
            }
            r
        }
    }
}

/// The units of a site (miners first, then hosts, in file order) and the planner's view of them.
pub struct Fleet {
    pub units: Vec<Unit>,
    pub miners: Vec<MinerUnit>,
    pub hosts: Vec<GpuHostUnit>,
}

pub const ASSUMPTIONS: Assumptions = Assumptions {
    unknown_miner_max_w: 3500.0,
    sleeping_miner_w: 0.0,
};

impl Fleet {
    pub fn new(site: &Site) -> Fleet {
        let mut units = Vec::new();
        let mut miners = Vec::new();
        let mut hosts = Vec::new();
        for (g, m) in site.miners.iter().enumerate() {
            for i in 0..m.count {
                units.push(Unit {
                    kind: Kind::Miner(g),
                    drawn: Level::Full,
                    target: Level::Full,
                    ends_at: None,
                    changed_at: None,
                    transition_s: i64::from(m.transition_s.unwrap_or(MINER_TRANSITION_S)),
                    input_index: miners.len(),
                });
                miners.push(MinerUnit {
                    device_id: format!("m{g}-{i}"),
                    host_id: format!("miners-{g}"),
                    model: m.model.clone(),
                    group: m.label().to_owned(),
                    nameplate_power_w: Some(m.power_w),
                    nameplate_hashrate_ths: Some(m.hashrate_ths),
                    efficiency_j_per_th: Some(m.power_w / m.hashrate_ths),
                    sleep_power_w: Some(m.sleep_w),
                    state: MinerState::Mining,
                    measured_power_w: None,
                    seen: true,
                    reachable_by_agent: true,
                    power_target: m.power_target_min_w.map(|min_w| PowerTargetRange {
                        min_w,
                        max_w: m.power_w,
                        step_w: None,
                    }),
                    power_target_set_w: None,
                    setting_before_trim_w: None,
                    intent: None,
                    last_change_at: None,
                    protected: false,
                    pin: None,
                });
            }
        }
        for (g, h) in site.gpu_hosts.iter().enumerate() {
            for i in 0..h.count {
                let host_id = format!("h{g}-{i}");
                units.push(Unit {
                    kind: Kind::Host(g),
                    drawn: Level::Full,
                    target: Level::Full,
                    ends_at: None,
                    changed_at: None,
                    transition_s: i64::from(h.transition_s.unwrap_or(HOST_TRANSITION_S)),
                    input_index: hosts.len(),
                });
                hosts.push(GpuHostUnit {
                    gpus: (0..h.gpus)
                        .map(|k| GpuUnit {
                            device_id: format!("{host_id}-gpu{k}"),
                            min_cap_w: h.gpu_min_w,
                            max_cap_w: h.gpu_power_w,
                            full_service_cap_w: h.gpu_power_w,
                            cap_w: Some(h.gpu_power_w),
                        })
                        .collect(),
                    gpus_allocated: None,
                    workload_device_id: Some(format!("host/{host_id}")),
                    host_id,
                    group: h.label().to_owned(),
                    base_power_w: h.host_base_w,
                    max_power_w: None,
                    measured_power_w: None,
                    contract: match h.contract {
                        Contract::Firm => AiContract::Firm {
                            usd_per_mwh: h.firm_usd_per_mwh.unwrap_or(0.0),
                        },
                        Contract::Interruptible => AiContract::Interruptible,
                    },
                    state: HostState::Serving,
                    last_change_at: None,
                    protected: false,
                    pin: None,
                });
            }
        }
        Fleet {
            units,
            miners,
            hosts,
        }
    }

    /// Writes each unit's state into the planner's view (no allocation).
    pub fn refresh_view(&mut self, site: &Site) {
        for u in &self.units {
            let moving = u.ends_at.is_some();
            match u.kind {
                Kind::Miner(_) => {
                    let m = &mut self.miners[u.input_index];
                    m.state = if u.drawn == Level::Off {
                        MinerState::Sleeping
                    } else {
                        MinerState::Mining
                    };
                    m.intent = Some(HeldIntent {
                        target: miner_target(u.target),
                        phase: if moving {
                            IntentPhase::Applied
                        } else {
                            IntentPhase::Confirmed
                        },
                        retrying: false,
                    });
                    m.last_change_at = u.changed_at;
                }
                Kind::Host(g) => {
                    let spec = &site.gpu_hosts[g];
                    let h = &mut self.hosts[u.input_index];
                    let on = |l: Level| l != Level::Off;
                    h.state = if moving {
                        HostState::Transition {
                            to_serving: on(u.target),
                        }
                    } else if on(u.drawn) {
                        HostState::Serving
                    } else {
                        HostState::Drained
                    };
                    let cap = if on(u.target) {
                        spec.gpu_power_w
                    } else {
                        spec.gpu_min_w
                    };
                    for gpu in &mut h.gpus {
                        gpu.cap_w = Some(cap);
                    }
                    h.last_change_at = u.changed_at;
                }
            }
        }
    }
}

fn miner_target(l: Level) -> MinerTarget {
    match l {
        Level::Off => MinerTarget::Sleep,
        Level::Full => MinerTarget::Run {
            power_target_w: None,
        },
        Level::Trim(p) => MinerTarget::Run {
            power_target_w: Some(crate::planner::phases::watts_u32(p)),
        },
    }
}

/// The level a move asks of its unit; `None` for a target of the other kind of unit.
pub fn level_of(site: &Site, kind: Kind, to: Target) -> Option<Level> {
    Some(match (kind, to) {
        (Kind::Miner(_), Target::Miner(MinerTarget::Sleep)) => Level::Off,
        (Kind::Miner(g), Target::Miner(MinerTarget::Run { power_target_w })) => {
            match power_target_w {
                Some(p) if f64::from(p) < site.miners[g].power_w - 0.5 => Level::Trim(f64::from(p)),
                _ => Level::Full,
            }
        }
        (Kind::Host(g), Target::Gpu { power_cap_w }) => {
            if f64::from(power_cap_w) >= site.gpu_hosts[g].gpu_power_w - 0.5 {
                Level::Full
            } else {
                Level::Off
            }
        }
        (
            Kind::Host(_),
            Target::Workload {
                state: WorkloadState::Released,
            },
        ) => Level::Full,
        (
            Kind::Host(_),
            Target::Workload {
                state: WorkloadState::Drained,
            },
        ) => Level::Off,
        _ => return None,
    })
}
