//! The decision: the cap in force, which GPU hosts AI demand keeps, what each load wants on its
//! margin (floor, band, dwell), and the merit-order fit under the cap.

use chrono::{DateTime, Duration, Utc};

use super::input::{AiContract, PlanInput};
use super::loads::{Fixed, Level, Load, Unit};
use super::output::{CapSource, Limit, PlanMode, Reason, Warning};
use crate::policy::{SafeAction, ScheduleEffect};

/// The cap in force now: the site's, the lowest DR target due within the shed lead, the lowest
/// schedule window cap; each less the reserve.
pub(super) fn shed_lead(input: &PlanInput) -> Duration {
    Duration::seconds(i64::try_from(input.policy.economic.shed_lead_s).unwrap_or(i64::MAX))
}

pub(super) fn limit(input: &PlanInput, schedule: &ScheduleEffect) -> Limit {
    let lead = shed_lead(input);
    let mut cap_w = input.site.cap_w;
    let mut source = CapSource::Site;
    for e in &input.demand_response {
        let starts = e.deadline.checked_sub_signed(lead).unwrap_or(e.deadline);
        let valid = e.target_power_w.is_finite() && e.target_power_w >= 0.0;
        if valid && input.now >= starts && input.now < e.ends_at && e.target_power_w < cap_w {
            cap_w = e.target_power_w;
            source = CapSource::DemandResponse {
                event_id: e.event_id.clone(),
            };
        }
    }
    if let Some((cap, window)) = &schedule.cap
        && *cap < cap_w
    {
        cap_w = *cap;
        source = CapSource::Schedule {
            window: window.clone(),
        };
    }
    let reserve_w = input.site.reserve_w.max(0.0);
    Limit {
        cap_w,
        reserve_w,
        limit_w: cap_w - reserve_w,
        source,
    }
}

/// Chooses the interruptible hosts AI demand keeps (demand + buffer, the most needed over the
/// drain delay) and sets each host's value. Returns the hosts kept.
pub(super) fn select_ai_hosts(
    input: &PlanInput,
    loads: &mut [Load],
    host_loads: &[usize],
) -> (u32, AiNeeds) {
    let e = &input.policy.economic;
    let Some(market) = input.market else {
        return (
            0,
            AiNeeds {
                kept: 0,
                history: input.memory.ai_hosts_needed.clone(),
                falls_at: None,
            },
        );
    };
    let price = market
        .ai_usd_per_gpu_hour
        .unwrap_or(e.ai_spot_price_usd_per_gpu_hour);
    let gpus = |l: &Load| match l.unit {
        Unit::Host(h) => u32::try_from(input.gpu_hosts[h].gpus.len()).unwrap_or(u32::MAX),
        Unit::Miner(_) => 0,
    };
    let is_interruptible = |l: &Load| match l.unit {
        Unit::Host(h) => input.gpu_hosts[h].contract == AiContract::Interruptible,
        Unit::Miner(_) => false,
    };
    let mut remaining = market.ai_gpu_demand.unwrap_or(u32::MAX);
    // Fixed hosts that serve take demand first: they serve anyway.
    for &li in host_loads {
        let l = &mut loads[li];
        let serving = match l.fixed {
            Some(Fixed::Hold) => l.level_now.is_on(),
            Some(Fixed::Pin(level)) => level.is_on(),
            _ => false,
        };
        if serving && is_interruptible(l) {
            l.gpus_in_demand = gpus(l).min(remaining);
            remaining -= l.gpus_in_demand;
        }
    }
    // Candidates: those serving first (no move to keep them), then the cheapest draw per GPU,
    // then those whose jobs hold the most GPUs (an idle host drains with nothing to requeue; a
    // draining one still running jobs is released again first).
    let mut candidates: Vec<usize> = host_loads
        .iter()
        .copied()
        .filter(|&li| loads[li].fixed.is_none() && is_interruptible(&loads[li]))
        .collect();
    candidates.sort_by(|&a, &b| {
        let (la, lb) = (&loads[a], &loads[b]);
        let per_gpu = |l: &Load| l.full_w / f64::from(gpus(l).max(1));
        let allocated = |l: &Load| match l.unit {
            Unit::Host(h) => input.gpu_hosts[h].gpus_allocated.unwrap_or(0),
            Unit::Miner(_) => 0,
        };
        lb.level_now
            .is_on()
            .cmp(&la.level_now.is_on())
            .then(per_gpu(la).total_cmp(&per_gpu(lb)))
            .then(allocated(lb).cmp(&allocated(la)))
            .then(a.cmp(&b))
    });
    let mut needed = 0u32;
    let mut covered = remaining;
    for &li in &candidates {
        if covered == 0 {
            break;
        }
        needed += 1;
        covered = covered.saturating_sub(gpus(&loads[li]));
    }
    // The share of the interruptible hosts, rounded down: a site of a few hosts keeps none by
    // it (clamped first: the cast is exact).
    let hosts = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
    let share = (e.ai_buffer_fraction * f64::from(hosts)).floor();
    let share = if share.is_finite() {
        share.clamp(0.0, f64::from(hosts)) as u32
    } else {
        0
    };
    needed = needed
        .saturating_add(e.ai_buffer_hosts)
        .saturating_add(share);
    let delay = Duration::seconds(i64::try_from(e.ai_drain_delay_s).unwrap_or(i64::MAX));
    let needs = AiNeeds::new(&input.memory.ai_hosts_needed, input.now, delay, needed);
    let kept = needs.kept;
    for (rank, &li) in candidates.iter().enumerate() {
        let l = &mut loads[li];
        let n = gpus(l);
        l.selected = u32::try_from(rank).unwrap_or(u32::MAX) < kept;
        if l.selected {
            l.gpus_in_demand = n.min(remaining);
            remaining -= l.gpus_in_demand;
        }
    }
    for &li in host_loads {
        let l = &mut loads[li];
        if let Unit::Host(h) = l.unit {
            let (revenue, potential) = match input.gpu_hosts[h].contract {
                AiContract::Firm { usd_per_mwh } => {
                    let r = usd_per_mwh * l.full_w / 1e6;
                    (r, r)
                }
                AiContract::Interruptible => (
                    price * f64::from(l.gpus_in_demand),
                    price * f64::from(gpus(l)),
                ),
            };
            l.revenue_usd_per_h = revenue;
            l.value_usd_per_mwh = l.per_mwh_added(revenue);
            l.potential_usd_per_mwh = l.per_mwh_added(potential);
        }
    }
    (kept, needs)
}

/// How many interruptible hosts AI demand needed over the drain delay. The memory is a step
/// function: each entry holds from its time until the next entry's (the last until now), so a
/// plan that was skipped because nothing changed counts as if it had been made.
pub(super) struct AiNeeds {
    /// The most needed while the drain delay looks back (`needed` now included).
    pub kept: u32,
    /// The history to remember: the steps still inside the drain delay, then `(now, needed)`.
    pub history: Vec<(DateTime<Utc>, u32)>,
    /// When `kept` falls if nothing else changes: the end of the last step that needed it, plus
    /// the delay (`None` when `kept` is what is needed now).
    pub falls_at: Option<DateTime<Utc>>,
}

impl AiNeeds {
    pub(super) fn new(
        memory: &[(DateTime<Utc>, u32)],
        now: DateTime<Utc>,
        delay: Duration,
        needed: u32,
    ) -> AiNeeds {
        let since = now
            .checked_sub_signed(delay)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // A step stamped `now` counts (a plan made at this same instant needed it): left out,
        // this plan would not keep what a plan an instant later keeps from the same memory.
        let mut past: Vec<(DateTime<Utc>, u32)> =
            memory.iter().copied().filter(|(t, _)| *t <= now).collect();
        past.sort_by_key(|(t, _)| *t);
        let mut history: Vec<(DateTime<Utc>, u32)> = Vec::with_capacity(past.len() + 1);
        let mut kept = needed;
        let mut last_end_at_kept: Option<DateTime<Utc>> = None;
        for (i, &(t, n)) in past.iter().enumerate() {
            let end = past.get(i + 1).map_or(now, |(next, _)| *next);
            if end <= since {
                continue;
            }
            if n > kept {
                kept = n;
                last_end_at_kept = Some(end);
            } else if n == kept && n > needed {
                last_end_at_kept = Some(end);
            }
            // Equal neighbours are one step.
            if history.last().is_none_or(|(_, prev)| *prev != n) {
                history.push((t, n));
            }
        }
        if history.last().is_none_or(|(_, prev)| *prev != needed) {
            history.push((now, needed));
        }
        let falls_at = last_end_at_kept.filter(|_| kept > needed).map(|end| {
            end.checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        AiNeeds {
            kept,
            history,
            falls_at,
        }
    }
}

/// What a load would do on its own, before the cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Want {
    pub on: bool,
    /// Why it is off when it wants off.
    pub off_reason: Option<Reason>,
    /// Why it runs when it wants on (for a load that starts).
    pub on_reason: Reason,
    /// Margin per MWh the fit ranks it by (band bonus for a load already on).
    pub rank: f64,
    pub margin_usd_per_mwh: f64,
    /// Economic mode: whether it would be on were it free to move (its dwell over): what a
    /// dwell holds back is where this and `on` differ (`revisit.rs`).
    pub free_on: bool,
}

pub(super) struct Context<'a> {
    pub input: &'a PlanInput,
    pub mode: PlanMode,
    pub schedule: &'a ScheduleEffect,
    pub ai_demand: Option<u32>,
    pub hosts_kept: u32,
}

pub(super) fn mode(input: &PlanInput) -> PlanMode {
    match (input.market, input.policy.market_failure.action) {
        (None, SafeAction::Hold) => PlanMode::SafeHold,
        (None, SafeAction::CurtailMining) => PlanMode::SafeCurtailMining,
        (Some(_), _) if !input.policy.economic.enabled => PlanMode::EconomicDisabled,
        (Some(_), _) => PlanMode::Economic,
    }
}

pub(super) fn want(l: &Load, cx: &Context<'_>) -> Want {
    let input = cx.input;
    let e = &input.policy.economic;
    let energy = input.market.map_or(0.0, |m| m.energy_usd_per_mwh);
    let on_now = l.level_now.is_on();
    let half_band = e.hysteresis_usd_per_mwh / 2.0;
    let scheduled_off = (l.is_miner() && cx.schedule.curtail_mining.is_some())
        || (!cx.schedule.curtail_groups.is_empty() && {
            let group = match l.unit {
                Unit::Miner(i) => input.miners[i].group.as_str(),
                Unit::Host(i) => input.gpu_hosts[i].group.as_str(),
            };
            cx.schedule.curtail_groups.iter().any(|(g, _)| g == group)
        });
    // A host AI demand keeps but has no work for (buffer, drain delay) is worth what it
    // will earn when work comes; one it does not keep is worth nothing.
    let is_buffer = !l.is_miner() && l.selected && l.gpus_in_demand == 0;
    let value = if is_buffer {
        l.potential_usd_per_mwh
    } else {
        l.value_usd_per_mwh
    };
    let margin = value - energy;
    let bonus = if on_now { half_band } else { -half_band };
    let threshold = e.min_margin_usd_per_mwh - bonus;
    let economic = Reason::Economic {
        value_usd_per_mwh: value,
        energy_usd_per_mwh: energy,
        margin_usd_per_mwh: margin,
        threshold_usd_per_mwh: threshold,
    };
    let demand = Reason::AiDemand {
        demand_gpus: cx.ai_demand,
        hosts_kept: cx.hosts_kept,
    };
    let mut w = Want {
        on: on_now,
        off_reason: None,
        on_reason: if l.is_miner() { economic } else { demand },
        rank: if input.market.is_some() {
            // A buffer host (kept, no work yet) is ranked on what it will be worth when the
            // demand it is kept for comes. A host with work is ranked on the work it has: ranked
            // on all its GPUs it would push miners off the cap that earn more than its part
            // load does (found by the Slurm hand-off e2e: 4 of 8 GPUs wanted at 0.05 USD/GPU-h
            // slept two miners earning 0.15 USD/h to earn 0.04 USD/h).
            (if is_buffer {
                l.potential_usd_per_mwh.max(value)
            } else {
                value
            }) - energy
                + bonus
        } else if l.is_miner() {
            -l.j_per_th
        } else {
            f64::MAX
        },
        margin_usd_per_mwh: margin,
        free_on: !scheduled_off && margin >= threshold,
    };
    if scheduled_off {
        w.on = false;
        w.off_reason = Some(Reason::Schedule);
        return w;
    }
    match cx.mode {
        PlanMode::SafeCurtailMining if l.is_miner() => {
            w.on = false;
            w.off_reason = Some(Reason::SafeMode);
        }
        PlanMode::SafeHold | PlanMode::SafeCurtailMining | PlanMode::EconomicDisabled => {}
        PlanMode::Economic if !l.may_move => {}
        PlanMode::Economic => {
            w.on = margin >= threshold;
            let unwanted = !l.is_miner() && !l.selected && l.fixed.is_none();
            w.off_reason = Some(if unwanted { demand } else { economic });
        }
    }
    if !w.on && w.off_reason.is_none() {
        w.off_reason = Some(economic);
    }
    w
}

/// Miners that cannot be seen hold where they are, but a sleep needs no proof: one whose agent
/// is connected and reached it at its last poll (`Load::sleeps_unseen`) is sent to sleep when
/// the limit cannot be met even with every other load off (a demand-response target, a cap that
/// unseen miners at their maximum already exceed), when a schedule window curtails mining, or
/// when the market failed and the policy curtails mining — as every seen miner then is. (One
/// pinned asleep is a pin, `Fixed::Pin`.) Each still counts at its maximum until a reading shows
/// it asleep, so this makes no room in the fit: no grant is made on it.
fn sleep_unseen_miners(
    loads: &[Load],
    wants: &[Want],
    limit_w: f64,
    lowest_achievable_w: f64,
    decisions: &mut [Decision],
) {
    let short = lowest_achievable_w > limit_w;
    for (i, (l, w)) in loads.iter().zip(wants).enumerate() {
        if !(l.sleeps_unseen && l.fixed == Some(Fixed::Hold) && l.level_now.is_on()) {
            continue;
        }
        let reason = match w.off_reason {
            Some(r @ (Reason::Schedule | Reason::SafeMode)) if !w.on => r,
            _ if short => Reason::Cap {
                limit_w,
                margin_usd_per_mwh: w.margin_usd_per_mwh,
            },
            _ => continue,
        };
        decisions[i] = Decision {
            level: Level::Off,
            reason,
        };
    }
}

/// A load's decided level and why it moves (if it does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Decision {
    pub level: Level,
    pub reason: Reason,
}

/// The fit's outcome.
pub(super) struct Fit {
    pub decisions: Vec<Decision>,
    pub warnings: Vec<Warning>,
    pub lowest_achievable_w: f64,
    /// Grants held back until releases already in flight are confirmed.
    pub grants_waiting: u32,
}

fn trim_to(l: &Load, room_w: f64) -> Option<f64> {
    if l.min_on_w >= l.full_w {
        return None;
    }
    let mut p = room_w.min(l.full_w);
    if let Some(step) = l.step_w {
        p = l.min_on_w + ((p - l.min_on_w) / step).floor() * step;
    } else {
        p = p.floor();
    }
    (p >= l.min_on_w && p < l.full_w).then_some(p)
}

/// An integer that sorts ascending as `rank` sorts descending (IEEE total order).
pub(super) fn descending_key(rank: f64) -> u64 {
    let bits = rank.to_bits();
    let ascending = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    !ascending
}

/// Sorts `(key, index)` pairs by key, equal keys in the order given: a least-significant-digit
/// radix sort (a byte a pass below 65,536 items, 16 bits above), skipping the digits every key
/// shares (most of a rank's exponent). Linear, where a comparison sort of 100,000 loads costs
/// the planner a sixth of its time.
pub(super) fn radix_sort(items: &mut Vec<(u64, usize)>) {
    if items.len() < 2 {
        return;
    }
    let bits: u32 = if items.len() < 1 << 16 { 8 } else { 16 };
    let mask = (1u64 << bits) - 1;
    let mut spare = vec![(0u64, 0usize); items.len()];
    let mut starts = vec![0usize; 1 << bits];
    let mut shift = 0;
    while shift < 64 {
        // At most 16 bits once masked: the cast cannot truncate.
        let digit = |k: u64| ((k >> shift) & mask) as usize;
        starts.fill(0);
        for &(k, _) in items.iter() {
            starts[digit(k)] += 1;
        }
        if starts[digit(items[0].0)] != items.len() {
            let mut sum = 0;
            for s in &mut starts {
                let n = *s;
                *s = sum;
                sum += n;
            }
            for &item in items.iter() {
                let d = digit(item.0);
                spare[starts[d]] = item;
                starts[d] += 1;
            }
            std::mem::swap(items, &mut spare);
        }
        shift += bits;
    }
}

/// Keeps back the grants that the power committed now cannot take yet: with this plan's
/// releases confirmed and every unit still in transition at the higher end, grants are made in
/// `priority` order while they fit under `limit_w`; the first that does not, and all after it,
/// stay where they are. They wait for the next plan, once the releases in flight are confirmed.
fn defer_grants_without_room(
    loads: &[Load],
    decisions: &mut [Decision],
    priority: &[usize],
    limit_w: f64,
) -> u32 {
    let after = |l: &Load, d: &Decision| {
        if d.level.same_as(l.level_now) {
            l.now_w
        } else {
            l.level_power(d.level)
        }
    };
    let is_grant = |l: &Load, d: &Decision| {
        let a = after(l, d);
        let lowers = a < l.now_w || (a <= l.now_w && !d.level.is_on());
        !d.level.same_as(l.level_now) && !lowers
    };
    // Same test as the phases: a move that does not lower committed power is a grant.
    let mut committed = 0.0;
    for (l, d) in loads.iter().zip(decisions.iter()) {
        committed += if is_grant(l, d) { l.now_w } else { after(l, d) };
    }
    let mut room = limit_w - committed;
    let mut deferring = false;
    let mut deferred = 0u32;
    for &i in priority {
        let (l, d) = (&loads[i], decisions[i]);
        if !is_grant(l, &d) {
            continue;
        }
        let extra = after(l, &d) - l.now_w;
        if !deferring && extra <= room + 1e-6 {
            room -= extra;
        } else {
            deferring = true;
            deferred = deferred.saturating_add(1);
            decisions[i].level = l.level_now;
        }
    }
    deferred
}

/// Firm and pinned loads first; then the rest in merit order while the cap allows (a miner with
/// a power target trimmed to fit). No load that is off is turned on in a safe-hold plan.
pub(super) fn fit(loads: &[Load], wants: &[Want], limit_w: f64, mode: PlanMode) -> Fit {
    let mut decisions: Vec<Decision> = loads
        .iter()
        .map(|l| Decision {
            level: l.level_now,
            reason: Reason::Pin,
        })
        .collect();
    let mut warnings = Vec::new();
    // The levels are chosen on what each load will draw once the intents in flight are
    // confirmed (a miner on its way to sleep makes room; a second one need not sleep for it).
    // What each load costs if left off: a load that is off and stays so keeps its settled
    // figure; one turned off counts at its off power once the release is confirmed, which
    // grants wait for.
    let off_cost = |l: &Load| {
        if l.level_now.is_on() {
            l.off_w
        } else {
            l.settled_w
        }
    };
    let cost_at = |l: &Load, level: Level| {
        if level.same_as(l.level_now) {
            l.settled_w
        } else {
            l.level_power(level)
        }
    };
    let mut used = 0.0;
    let mut grants: Vec<(usize, Level, Reason)> = Vec::new();
    // Loads in the order their grants are entitled to room (pins and firm, then merit order).
    let mut priority: Vec<usize> = Vec::with_capacity(loads.len());
    for (i, l) in loads.iter().enumerate() {
        match l.fixed {
            None => used += off_cost(l),
            Some(Fixed::Hold) => used += l.now_w,
            Some(Fixed::Pin(_) | Fixed::Firm) => {
                let (level, reason) = match l.fixed {
                    Some(Fixed::Pin(level)) => (level, Reason::Pin),
                    _ => (Level::Full, Reason::Firm),
                };
                let target = cost_at(l, level);
                if target <= l.settled_w || level.same_as(l.level_now) {
                    used += target;
                    decisions[i] = Decision { level, reason };
                    priority.push(i);
                } else {
                    used += l.settled_w;
                    grants.push((i, level, reason));
                }
            }
        }
    }
    let lowest_achievable_w = used;
    sleep_unseen_miners(loads, wants, limit_w, lowest_achievable_w, &mut decisions);
    let mut budget = limit_w - used;
    let mut held = (0u32, 0.0);
    for (i, level, reason) in grants {
        let l = &loads[i];
        priority.push(i);
        let extra = cost_at(l, level) - l.settled_w;
        let safe = matches!(mode, PlanMode::SafeHold | PlanMode::SafeCurtailMining);
        if extra <= budget && !safe {
            budget -= extra;
            decisions[i] = Decision { level, reason };
        } else {
            held.0 += 1;
            held.1 += extra;
        }
    }
    if held.0 > 0 {
        warnings.push(Warning::HeldBackOverCap {
            devices: held.0,
            power_w: held.1,
        });
    }
    // Loads that want off take no room: only the others need the merit order. Sort
    // (key, index) pairs once, the rank as an integer key (highest first, then by index).
    let mut order: Vec<(u64, usize)> = Vec::with_capacity(loads.len());
    for (i, (l, w)) in loads.iter().zip(wants).enumerate() {
        if l.fixed.is_some() {
            continue;
        }
        if w.on {
            order.push((descending_key(w.rank), i));
        } else {
            decisions[i] = Decision {
                level: Level::Off,
                reason: w.off_reason.unwrap_or(Reason::Pin),
            };
        }
    }
    radix_sort(&mut order);
    for (_, i) in order {
        priority.push(i);
        let (l, w) = (&loads[i], &wants[i]);
        let off = off_cost(l);
        let off_decision = Decision {
            level: Level::Off,
            reason: w.off_reason.unwrap_or(Reason::Pin),
        };
        // Stay at the level it has (a trimmed miner stays trimmed in a hold), or go to full.
        let hold_level = matches!(
            mode,
            PlanMode::SafeHold | PlanMode::SafeCurtailMining | PlanMode::EconomicDisabled
        ) || !l.may_move;
        let goal = if hold_level && l.level_now.is_on() {
            l.level_now
        } else {
            Level::Full
        };
        let extra = cost_at(l, goal) - off;
        let starts = !l.level_now.is_on();
        let on_reason = if starts {
            w.on_reason
        } else {
            Reason::Restore {
                margin_usd_per_mwh: w.margin_usd_per_mwh,
            }
        };
        let cap_reason = Reason::Cap {
            limit_w,
            margin_usd_per_mwh: w.margin_usd_per_mwh,
        };
        if starts && matches!(mode, PlanMode::SafeHold | PlanMode::SafeCurtailMining) {
            decisions[i] = off_decision;
        } else if extra <= budget {
            budget -= extra;
            decisions[i] = Decision {
                level: goal,
                reason: on_reason,
            };
        } else if let Some(p) = trim_to(l, budget + off).filter(|p| {
            // Holding, a miner may be trimmed down, never up.
            !hold_level || (!starts && *p <= l.level_power(l.level_now))
        }) {
            budget -= p - off;
            decisions[i] = Decision {
                level: Level::Trim(p),
                reason: cap_reason,
            };
        } else {
            decisions[i] = Decision {
                level: Level::Off,
                reason: cap_reason,
            };
        }
    }
    let grants_waiting = defer_grants_without_room(loads, &mut decisions, &priority, limit_w);
    if lowest_achievable_w > limit_w {
        warnings.push(Warning::LimitUnreachable {
            limit_w,
            achievable_w: lowest_achievable_w,
        });
    }
    Fit {
        decisions,
        warnings,
        lowest_achievable_w,
        grants_waiting,
    }
}
