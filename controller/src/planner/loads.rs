//! Each controllable unit reduced to the figures the merit order needs: its committed power now
//! (DESIGN.md invariant 1 and 3), off and on, its value per MWh, and what it may not do.
//! One pass over the fleet; no strings are copied.

use chrono::{DateTime, Duration, Utc};
use pivot_proto::model::{IntentPhase, MinerState, MinerTarget};

use super::input::{
    AiContract, GpuHostUnit, HostPin, HostState, MinerUnit, PlanInput, PowerTargetRange,
};

/// A miner's or host's power level: what a move changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Level {
    Off,
    Full,
    /// A miner at a power target below its maximum, W.
    Trim(f64),
}

impl Level {
    pub(super) fn same_as(self, other: Level) -> bool {
        match (self, other) {
            (Level::Trim(a), Level::Trim(b)) => (a - b).abs() < 1.0,
            (a, b) => std::mem::discriminant(&a) == std::mem::discriminant(&b),
        }
    }

    pub(super) fn is_on(self) -> bool {
        !matches!(self, Level::Off)
    }
}

/// Why the planner may not choose a unit's level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fixed {
    /// Unseen, faulted, of unknown state, or protected: stays as it is, at its committed power.
    Hold,
    /// Operator override.
    Pin(Level),
    /// Firm AI contract: serves.
    Firm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    Miner(usize),
    Host(usize),
}

/// The figures of one unit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub unit: Unit,
    /// The level it is at or heading to (its intent, else its observed state).
    pub level_now: Level,
    /// Committed now: in transition at the higher of before and after, unseen at maximum.
    pub now_w: f64,
    /// Committed once the intent in flight (if any) is confirmed: the level it is heading to.
    /// Only the fit's choice of levels counts on it; grants wait for `now_w` to make room.
    pub settled_w: f64,
    /// Committed once off (asleep / drained) and confirmed.
    pub off_w: f64,
    /// Committed once on at full and confirmed.
    pub full_w: f64,
    /// Lowest power target (miners with a range), else `full_w`.
    pub min_on_w: f64,
    pub step_w: Option<f64>,
    /// Revenue while on at full power, USD/h (miners: hashprice × hashrate; hosts: GPU-hours
    /// within demand; firm: the contract rate on its draw).
    pub revenue_usd_per_h: f64,
    /// Gross value of running it per MWh of the power it adds over being off (`full_w −
    /// off_w`): what its margin is compared on, since a drained host still draws its base and
    /// its GPUs' minimum caps, and what the room under a cap is shared by.
    pub value_usd_per_mwh: f64,
    /// Hosts: value if every GPU had work (what a buffer host is worth when demand comes).
    pub potential_usd_per_mwh: f64,
    /// Hosts: GPUs within AI demand on this host.
    pub gpus_in_demand: u32,
    pub fixed: Option<Fixed>,
    /// Miners held because they cannot be seen (or read in no known state) whose agent is
    /// connected and reached them at its last poll, neither protected nor pinned to run: a
    /// sleep may still be sent to them, since it only lowers power (see
    /// [`super::input::MinerUnit::reachable_by_agent`] and `decide::sleep_unseen_miners`).
    /// Asleep, they still count at their maximum (`off_w` = `now_w`) until a reading shows them
    /// asleep.
    pub sleeps_unseen: bool,
    /// Dwell passed and no intent in flight: economic moves allowed.
    pub may_move: bool,
    /// An intent of it is on its way (the unit waits for it whatever its dwell).
    pub in_flight: bool,
    /// When the dwell of a unit inside it ends (`None`: not inside its dwell).
    pub dwell_until: Option<DateTime<Utc>>,
    /// Hosts: among those AI demand (plus buffer, through the drain delay) keeps.
    pub selected: bool,
    /// Miners' efficiency, J/TH (ranks miners when prices are unknown).
    pub j_per_th: f64,
    /// Miners: the owner's setting a trim keeps in the ledger, to be restored to (`None`: the
    /// ledger keeps one already, or there is none to keep).
    pub keep_setting_w: Option<f64>,
    /// Miners: the setting it reports is not its full-power one (a trim of Pivot's left on it
    /// while it slept), so going to full power sends `full_w` even from asleep.
    pub setting_off_full: bool,
}

impl Load {
    pub(super) fn level_power(&self, level: Level) -> f64 {
        match level {
            Level::Off => self.off_w,
            Level::Full => self.full_w,
            Level::Trim(w) => w,
        }
    }

    /// A revenue per hour as USD per MWh of the power the load adds when on.
    pub(super) fn per_mwh_added(&self, usd_per_h: f64) -> f64 {
        usd_per_h / ((self.full_w - self.off_w).max(1.0) / 1e6)
    }

    pub(super) fn is_miner(&self) -> bool {
        matches!(self.unit, Unit::Miner(_))
    }
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|w| w.is_finite() && *w > 0.0)
}

fn non_negative(v: Option<f64>) -> Option<f64> {
    v.filter(|w| w.is_finite() && *w >= 0.0)
}

/// The dwell as of one plan's `now`, worked out once for every unit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dwell {
    length: Duration,
    /// A unit that changed after this is still inside its dwell.
    since: DateTime<Utc>,
}

impl Dwell {
    pub(super) fn new(input: &PlanInput) -> Dwell {
        let length = dwell(input);
        Dwell {
            length,
            since: input
                .now
                .checked_sub_signed(length)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// When a unit that last changed at `last` leaves its dwell, if it is still inside it.
    fn until(&self, last: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let last = last.filter(|t| *t > self.since)?;
        Some(
            last.checked_add_signed(self.length)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }
}

pub(super) fn dwell(input: &PlanInput) -> Duration {
    Duration::seconds(i64::try_from(input.policy.economic.min_dwell_s).unwrap_or(i64::MAX))
}

/// Efficiency a miner is ranked and valued at.
pub(super) fn miner_j_per_th(m: &MinerUnit, unknown: f64) -> f64 {
    positive(m.efficiency_j_per_th)
        .or_else(|| Some(positive(m.nameplate_power_w)? / positive(m.nameplate_hashrate_ths)?))
        .unwrap_or(unknown)
}

fn miner_level(target: MinerTarget, full_w: f64) -> Level {
    match target {
        MinerTarget::Sleep => Level::Off,
        MinerTarget::Run {
            power_target_w: None,
        } => Level::Full,
        MinerTarget::Run {
            power_target_w: Some(w),
        } => {
            let w = f64::from(w);
            if w >= full_w - 0.5 {
                Level::Full
            } else {
                Level::Trim(w)
            }
        }
    }
}

/// The setting a miner with a range runs at when it is at full power: the owner's. Pivot's
/// trim in force hides it from the reading, so then it is the setting from before the first
/// trim, kept in the ledger ([`MinerUnit::setting_before_trim_w`]); otherwise what the miner
/// reports. `None` for a miner not seen (counted at the top of its range), without a range, or
/// under a power target of Pivot's with nothing kept (counted as before).
pub(super) fn own_setting_w(m: &MinerUnit, range: Option<PowerTargetRange>) -> Option<f64> {
    if !m.seen || range.is_none() {
        return None;
    }
    let pivot_target = m.intent.is_some_and(|i| {
        matches!(
            i.target,
            MinerTarget::Run {
                power_target_w: Some(_)
            }
        )
    });
    positive(m.setting_before_trim_w).or_else(|| {
        if pivot_target {
            None
        } else {
            positive(m.power_target_set_w)
        }
    })
}

/// The largest share of a miner's full draw the site's sleeping-miner assumption may stand for.
const ASSUMED_SLEEP_SHARE_MAX: f64 = 0.25;

/// What a miner of `full_w` draws asleep, as the planner counts it: what it was last read
/// drawing asleep (`read_w`); until it has been, the site's assumption — at most a quarter of its
/// full draw, since the assumption (100 W by default) is a large ASIC's control board and fans:
/// on a 17 W Bitaxe it left a sleep saving nothing, so the planner never slept one at any price.
pub fn sleeping_w(read_w: Option<f64>, full_w: f64, a: &crate::fleet::Assumptions) -> f64 {
    non_negative(read_w)
        .unwrap_or_else(|| a.sleeping_miner_w.min(full_w * ASSUMED_SLEEP_SHARE_MAX))
        .min(full_w)
}

pub(super) fn miner_load(
    i: usize,
    m: &MinerUnit,
    input: &PlanInput,
    hashprice: f64,
    dwell: &Dwell,
) -> Load {
    let a = &input.assumptions;
    let range = m.power_target.filter(|r| {
        r.min_w.is_finite() && r.max_w.is_finite() && r.min_w > 0.0 && r.min_w <= r.max_w
    });
    let measured = non_negative(m.measured_power_w);
    let own_w = own_setting_w(m, range);
    // Full power is the miner's own setting when it has a range and reports one (above its
    // rating, an owner's overclock; below, an owner's tune-down: Pivot never sets it above
    // either); else its rated draw, or what it reports it is set to when that is more. The top
    // of a power-target range is an overclock (LuxOS's highest profile draws 1.6 times the stock
    // one), so it counts only for a miner whose setting is unknown or unseen — a miner woken
    // without a target runs at its setting, whatever that is.
    let set_w = positive(m.power_target_set_w);
    let full_w = match (positive(m.nameplate_power_w), range, own_w) {
        (_, Some(r), Some(own)) => own.max(r.min_w),
        (Some(w), Some(r), None) => set_w.map_or(w.max(r.max_w), |s| w.max(s)),
        (Some(w), None, _) => w,
        (None, Some(r), None) => r.max_w.max(set_w.unwrap_or(0.0)),
        (None, None, _) => a.unknown_miner_max_w,
    };
    let off_w = sleeping_w(m.sleep_power_w, full_w, a);
    let observed_level = match m.state {
        MinerState::Mining | MinerState::Ramping => Some(Level::Full),
        MinerState::Sleeping => Some(Level::Off),
        MinerState::Faulted | MinerState::Unknown => None,
    };
    // An intent the agent gave up on leaves the miner where it reads (a wake refused for good
    // leaves it asleep, and only a new intent wakes it); its power still counts at the larger
    // of both ends until a reading after the failure says which (below, and MinerUnit::intent).
    let level_now = match m.intent {
        Some(i) if !i.given_up() => miner_level(i.target, full_w),
        _ => observed_level.unwrap_or(Level::Full),
    };
    let power = |l: Level| match l {
        Level::Off => off_w,
        Level::Full => full_w,
        Level::Trim(w) => w,
    };
    let controllable = m.seen && observed_level.is_some();
    let now_w = if !controllable {
        full_w.max(measured.unwrap_or(0.0))
    } else {
        let observed_w = power(observed_level.unwrap_or(Level::Full));
        let w = match m.intent {
            None => observed_w,
            Some(i) if !i.unconfirmed() => power(level_now),
            Some(i) => power(miner_level(i.target, full_w)).max(observed_w),
        };
        // A reading above the plan's figure is believed; a low one is not (a miner that should
        // draw may read 0 W while it ramps).
        w.max(measured.unwrap_or(0.0))
    };
    let protected = m.protected || input.policy.protected.covers(&m.device_id, &m.group);
    // (A pin to run wins over a cap for a seen miner too: it is not slept for one.)
    let sleeps_unseen = !controllable
        && !protected
        && m.reachable_by_agent
        && !matches!(m.pin, Some(MinerTarget::Run { .. }));
    let fixed = if sleeps_unseen && matches!(m.pin, Some(MinerTarget::Sleep)) {
        Some(Fixed::Pin(Level::Off))
    } else if !controllable || protected {
        Some(Fixed::Hold)
    } else {
        m.pin.map(|p| Fixed::Pin(miner_level(p, full_w)))
    };
    let in_flight = m
        .intent
        .is_some_and(|i| matches!(i.phase, IntentPhase::Pending | IntentPhase::Applied));
    let settled_w = if controllable && in_flight {
        power(level_now)
    } else {
        now_w
    };
    let j_per_th = miner_j_per_th(m, input.policy.economic.unknown_miner_j_per_th);
    let dwell_until = dwell.until(m.last_change_at);
    // Hashprice per PH/day × TH/s (W ÷ J/TH) ÷ 1000 ÷ 24.
    let revenue = hashprice * full_w / j_per_th / 24_000.0;
    let (min_on_w, step_w) = match range {
        Some(r) => (r.min_w.min(full_w), positive(r.step_w)),
        None => (full_w, None),
    };
    let mut load = Load {
        unit: Unit::Miner(i),
        level_now,
        now_w,
        settled_w,
        off_w,
        full_w,
        min_on_w,
        step_w,
        revenue_usd_per_h: revenue,
        value_usd_per_mwh: 0.0,
        potential_usd_per_mwh: 0.0,
        gpus_in_demand: 0,
        fixed,
        sleeps_unseen,
        may_move: !in_flight && dwell_until.is_none(),
        in_flight,
        dwell_until,
        selected: false,
        j_per_th,
        keep_setting_w: own_w.filter(|_| positive(m.setting_before_trim_w).is_none()),
        setting_off_full: own_w.is_some()
            && positive(m.setting_before_trim_w).is_some()
            && set_w.is_some_and(|s| (s - full_w).abs() >= 1.0),
    };
    load.value_usd_per_mwh = load.per_mwh_added(revenue);
    load.potential_usd_per_mwh = load.value_usd_per_mwh;
    if !controllable {
        // Nothing about it is believed: a sleep sent to it makes no room until a reading shows
        // it asleep (DESIGN.md invariant 3), so asleep it counts as it does now.
        load.off_w = load.now_w;
    }
    load
}

/// GPU caps at a level, clamped to each GPU's range.
fn host_power(h: &GpuHostUnit, serve: bool) -> f64 {
    h.base_power_w
        + h.gpus
            .iter()
            .map(|g| {
                if serve {
                    g.full_service_cap_w
                        .clamp(g.min_cap_w, g.max_cap_w.max(g.min_cap_w))
                } else {
                    g.min_cap_w
                }
            })
            .sum::<f64>()
}

pub(super) fn host_load(i: usize, h: &GpuHostUnit, input: &PlanInput, dwell: &Dwell) -> Load {
    let full_w = host_power(h, true);
    let off_w = host_power(h, false);
    let max_w = (h.base_power_w + h.gpus.iter().map(|g| g.max_cap_w).sum::<f64>())
        .max(positive(h.max_power_w).unwrap_or(0.0));
    let caps_now = h.base_power_w
        + h.gpus
            .iter()
            .map(|g| non_negative(g.cap_w).unwrap_or(g.max_cap_w))
            .sum::<f64>();
    let measured = non_negative(h.measured_power_w).unwrap_or(0.0);
    let (level_now, now_w) = match h.state {
        HostState::Serving => (Level::Full, caps_now.max(measured)),
        HostState::Drained => (Level::Off, caps_now.max(measured)),
        HostState::Transition { to_serving } => (
            if to_serving { Level::Full } else { Level::Off },
            caps_now.max(full_w).max(measured),
        ),
        HostState::Unseen => (Level::Full, max_w.max(measured)),
    };
    let protected = h.protected || input.policy.protected.covers(&h.host_id, &h.group);
    let fixed = if h.state == HostState::Unseen || protected {
        Some(Fixed::Hold)
    } else if let Some(pin) = h.pin {
        Some(Fixed::Pin(match pin {
            HostPin::Serve => Level::Full,
            HostPin::Drain => Level::Off,
        }))
    } else if matches!(h.contract, AiContract::Firm { .. }) {
        Some(Fixed::Firm)
    } else {
        None
    };
    let in_flight = matches!(h.state, HostState::Transition { .. });
    let settled_w = match h.state {
        HostState::Transition { to_serving: true } => full_w,
        HostState::Transition { to_serving: false } => off_w,
        // A drained host whose caps are still up has them lowered by the plan (a release phase,
        // confirmed before any grant): it settles at its drained figure, and no miner need
        // sleep to make room it is about to give back.
        HostState::Drained if caps_now > off_w + 0.5 => off_w,
        _ => now_w,
    };
    let dwell_until = dwell.until(h.last_change_at);
    Load {
        unit: Unit::Host(i),
        level_now,
        now_w,
        settled_w,
        off_w,
        full_w,
        min_on_w: full_w,
        step_w: None,
        revenue_usd_per_h: 0.0,
        value_usd_per_mwh: 0.0,
        potential_usd_per_mwh: 0.0,
        gpus_in_demand: 0,
        fixed,
        sleeps_unseen: false,
        may_move: !in_flight && dwell_until.is_none(),
        in_flight,
        dwell_until,
        selected: false,
        j_per_th: 0.0,
        keep_setting_w: None,
        setting_off_full: false,
    }
}
