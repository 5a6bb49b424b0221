//! The planner: who gets the site's power. A pure function — no I/O, no clock — from the site's
//! state, the market and the policy to a [`Plan`] of ordered, break-before-make phases.
//!
//! # How to call it
//!
//! ```text
//! let input = PlanInput {
//!     now,                                   // the controller's clock, passed in
//!     site: SiteLimits { cap_w, reserve_w },
//!     demand_response: events_not_ended,     // from the store (API-created)
//!     market: Some(MarketView { .. }),       // None when the market sources are unusable
//!     policy: running_policy_document,       // policy::validate()'s output
//!     assumptions: config.agents.assumptions(),
//!     miners: registry → Vec<MinerUnit>,     // one per miner device
//!     gpu_hosts: registry → Vec<GpuHostUnit>,// one per host with GPUs
//!     memory: previous_plan.memory,          // PlannerMemory::default() at first
//! };
//! let plan = planner::plan(&input);
//! ```
//!
//! Then execute `plan.phases` in order: send each phase's moves as intents (group by
//! `Move::host_id`), wait until they are confirmed (or timed out) and the phase's `not_before` has
//! come, then send the next phase. Store the plan (it is serde) and keep `plan.memory` for the
//! next call. A new plan supersedes the old one: phases of the old plan not yet sent are
//! dropped, and devices already moving are counted by the new plan at the higher of before and
//! after (their `HeldIntent` is unconfirmed).
//!
//! `plan.explanations[].text` are sentences for the audit log and pivotctl; `plan.warnings`
//! say when the cap in force cannot be met (`LimitUnreachable` carries the achievable figure a
//! DR reply needs) and when pinned or firm devices were held back.
//!
//! # Rules (DESIGN.md "The economics" and "Safety invariants")
//!
//! - The limit is the lowest of the site cap, every demand-response target due within
//!   `shed_lead_s` of its deadline, and schedule-window caps (windows also count from
//!   `shed_lead_s` before they open), less the reserve.
//! - Fixed first: unseen, faulted and protected devices hold where they are, at their committed
//!   power (unseen at maximum); pins and firm AI hosts take their level first. A sleep needs no
//!   proof, so an unseen (or faulted) miner whose agent is connected and reached it at its last
//!   poll is still sent to sleep when pinned asleep, in a schedule window or safe mode that
//!   curtails mining, or when the limit cannot be met with every other load off; it counts at
//!   its maximum until a reading shows it asleep, so no grant is made on it. If pins alone
//!   exceed the limit everything else is shed and a warning says so; a pin or firm host that
//!   would need power the limit lacks is held back (warning), never granted over the cap.
//! - Then every other load in merit order of margin per MWh (value − energy price), each load
//!   running while its margin is at least `min_margin_usd_per_mwh` with a band around it
//!   (`hysteresis_usd_per_mwh`: a running load stops below floor − band/2, a stopped one starts
//!   above floor + band/2; the same band makes a swap under a binding cap need more than the
//!   band's gain). A device moves on economics only once `min_dwell_s` has passed since its
//!   last change and no intent of it is in flight; caps override both.
//!   Miners' value = hashprice × 1000 ÷ (24 × J/TH); least efficient go first. An interruptible
//!   GPU host is worth price per GPU-hour × GPUs within demand ÷ its draw (base + caps) in MW.
//!   A miner with a power-target range is trimmed to fit the last room.
//! - AI demand keeps demand + `ai_buffer_hosts` + `ai_buffer_fraction` of the interruptible
//!   hosts (rounded down) released (hosts already serving first); the count kept is the most
//!   needed over the last `ai_drain_delay_s`, so a host is drained only after demand has stayed low that long. Buffer hosts are ranked on
//!   their value with work.
//! - No usable market: `market_failure.action` — `hold` keeps every level and never adds load
//!   (a lower cap still sheds, least efficient miners first); `curtail-mining` also sleeps miners.
//! - Phases: curtail (miners sleep / lower targets, hosts drained of jobs) → lower GPU caps →
//!   grant steps (GPU caps raised, then miners woken, most valuable first), each step at most
//!   `ramp_limit_w_per_min` and a minute after the one before → release hosts whose caps rose.
//!   Every phase carries its committed power (in transition at the higher of before and
//!   after); a grant phase never exceeds the limit.

mod decide;
pub mod explain;
mod input;
mod loads;
mod output;
pub(crate) mod phases;
mod revisit;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use input::HELD_PHASES;
pub use input::{
    AiContract, DemandResponse, GpuHostUnit, GpuUnit, HeldIntent, HostPin, HostState, MarketView,
    MinerUnit, PlanInput, PowerTargetRange, SiteLimits,
};
pub use output::{
    Action, CapSource, Explanation, Limit, Move, Phase, PhaseKind, Plan, PlanMode, PlannerMemory,
    Reason, Summary, Waiting, Warning,
};

pub use loads::sleeping_w;
use loads::{Level, Unit};
use pivot_proto::model::{MinerTarget, Target, WorkloadState};

/// Plans the site. Same input, same plan (including its id).
pub fn plan(input: &PlanInput) -> Plan {
    let schedule = input.policy.schedule_at(input.now);
    let limit = decide::limit(input, &schedule);
    let mode = decide::mode(input);
    let hashprice = input.market.map_or(0.0, |m| m.hashprice_usd_per_ph_day);
    let dwell = loads::Dwell::new(input);
    let mut loads = Vec::with_capacity(input.miners.len() + input.gpu_hosts.len());
    for (i, m) in input.miners.iter().enumerate() {
        loads.push(loads::miner_load(i, m, input, hashprice, &dwell));
    }
    let first_host = loads.len();
    for (i, h) in input.gpu_hosts.iter().enumerate() {
        loads.push(loads::host_load(i, h, input, &dwell));
    }
    let host_loads: Vec<usize> = (first_host..loads.len()).collect();
    let (hosts_kept, needs) = decide::select_ai_hosts(input, &mut loads, &host_loads);
    let cx = decide::Context {
        input,
        mode,
        schedule: &schedule,
        ai_demand: input.market.and_then(|m| m.ai_gpu_demand),
        hosts_kept,
    };
    let wants: Vec<decide::Want> = loads.iter().map(|l| decide::want(l, &cx)).collect();
    let fit = decide::fit(&loads, &wants, limit.limit_w, mode);
    let (phases, granted_at) = phases::build(input, &loads, &fit.decisions);
    let explanations = explain::explain(&cx, &loads, &fit.decisions);

    let energy = input.market.map_or(0.0, |m| m.energy_usd_per_mwh);
    let (mut start_mining_w, mut start_ai_w) = (0.0, 0.0);
    for l in &loads {
        match l.unit {
            Unit::Miner(_) => start_mining_w += l.now_w,
            Unit::Host(_) => start_ai_w += l.now_w,
        }
    }
    let start_committed_w = start_mining_w + start_ai_w;
    let mut s = Summary {
        start_committed_w,
        start_mining_w,
        start_ai_w,
        committed_w: phases
            .last()
            .map_or(start_committed_w, |p| p.committed_after_w),
        mining_w: 0.0,
        ai_w: 0.0,
        miners_running: 0,
        miners_sleeping: 0,
        hosts_serving: 0,
        hosts_drained: 0,
        margin_usd_per_h: 0.0,
        lowest_achievable_w: fit.lowest_achievable_w,
        grants_waiting: fit.grants_waiting,
        moves: u32::try_from(phases.iter().map(|p| p.moves.len()).sum::<usize>())
            .unwrap_or(u32::MAX),
    };
    for (l, d) in loads.iter().zip(&fit.decisions) {
        let moved = !d.level.same_as(l.level_now);
        let w = if moved {
            l.level_power(d.level)
        } else {
            l.now_w
        };
        let on = d.level.is_on();
        match l.unit {
            Unit::Miner(_) => {
                s.mining_w += w;
                if on {
                    s.miners_running += 1
                } else {
                    s.miners_sleeping += 1
                }
            }
            Unit::Host(_) => {
                s.ai_w += w;
                if on {
                    s.hosts_serving += 1
                } else {
                    s.hosts_drained += 1
                }
            }
        }
        if on && input.market.is_some() {
            // A trimmed miner's hashrate scales with its power.
            s.margin_usd_per_h += match d.level {
                Level::Trim(p) if l.full_w > 0.0 => l.revenue_usd_per_h * p / l.full_w,
                _ => l.revenue_usd_per_h,
            };
        }
    }
    s.margin_usd_per_h -= energy * s.committed_w / 1e6;
    let mut warnings = fit.warnings;
    if input.market.is_none() {
        warnings.push(Warning::MarketUnusable);
    }
    let waiting = revisit::waiting(&cx, &loads, &wants);
    let revisit_at = revisit::revisit_at(&cx, &waiting, &phases, &needs);
    let memory = PlannerMemory {
        ai_hosts_needed: needs.history,
        last_grant_at: granted_at.or(input.memory.last_grant_at),
    };
    Plan {
        plan_id: plan_id(input, &phases),
        at: input.now,
        mode,
        limit,
        phases,
        summary: s,
        explanations,
        warnings,
        memory,
        revisit_at,
        waiting,
    }
}

/// FNV-1a over the time and every move: stable across runs and platforms.
fn plan_id(input: &PlanInput, phases: &[Phase]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&input.now.timestamp_micros().to_le_bytes());
    for p in phases {
        eat(&p.index.to_le_bytes());
        for m in &p.moves {
            eat(m.device_id.as_bytes());
            let (tag, value): (u8, u32) = match m.to {
                Target::Miner(MinerTarget::Sleep) => (1, 0),
                Target::Miner(MinerTarget::Run { power_target_w }) => {
                    (2, power_target_w.unwrap_or(0))
                }
                Target::Gpu { power_cap_w } => (3, power_cap_w),
                Target::Workload {
                    state: WorkloadState::Released,
                } => (4, 1),
                Target::Workload {
                    state: WorkloadState::Drained,
                } => (4, 0),
            };
            eat(&[tag]);
            eat(&value.to_le_bytes());
        }
    }
    format!("plan-{}-{h:016x}", input.now.format("%Y%m%dT%H%M%SZ"))
}
