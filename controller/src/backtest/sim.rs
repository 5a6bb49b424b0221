//! The backtest's clock and executor: replans at every trace row and on a timer, runs each plan's
//! phases in order (phase N+1 only once phase N's modelled transitions have ended and its
//! `not_before` has come), and books what the fleet draws and earns between events.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::fleet::{ASSUMPTIONS, Fleet, Kind, Level, Rates, Unit, level_of, rates};
use super::site::Site;
use super::{Interval, Options, Report};
use crate::planner::{
    self, DemandResponse, MarketView, Plan, PlanInput, PlannerMemory, SiteLimits,
};
use crate::trace::{Trace, TraceRow};

/// Runs of consecutive rows with the same lower cap, as the DR events the planner sees.
fn dr_events(trace: &Trace) -> Vec<DemandResponse> {
    let mut events: Vec<DemandResponse> = Vec::new();
    let rows = trace.rows();
    for (i, r) in rows.iter().enumerate() {
        let Some(cap) = r.cap_w else { continue };
        let end = r.time + trace.interval_len(i);
        match events.last_mut() {
            Some(e) if e.ends_at == r.time && e.target_power_w == cap => e.ends_at = end,
            _ => events.push(DemandResponse {
                event_id: format!("trace-{i}"),
                target_power_w: cap,
                deadline: r.time,
                ends_at: end,
            }),
        }
    }
    events
}

struct Executor {
    plan: Option<Plan>,
    next_phase: usize,
    /// Units touched by the phase in flight.
    in_phase: Vec<usize>,
}

struct Books {
    totals: Rates,
    row_max_draw_w: f64,
    row_mining_wh: f64,
    row_ai_wh: f64,
    row_margin_usd: f64,
    row_mining_usd: f64,
    row_ai_usd: f64,
}

/// Sums the fleet's rates from scratch (once a row, so float drift cannot build up).
fn total_rates(site: &Site, units: &[Unit]) -> Rates {
    let mut r = Rates::default();
    for u in units {
        r += rates(site, u.kind, u.drawn);
    }
    r
}

/// The static site's configuration at a cap: every host serving, miners most efficient first
/// within `limit_w`. Used as the backtest's starting state and as the static baseline.
pub(super) fn static_levels(site: &Site, units: &[Unit], limit_w: f64) -> Vec<Level> {
    let mut levels = vec![Level::Off; units.len()];
    let mut used: f64 = 0.0;
    let mut miners: Vec<usize> = Vec::new();
    for (i, u) in units.iter().enumerate() {
        match u.kind {
            Kind::Host(_) => {
                levels[i] = Level::Full;
                used += rates(site, u.kind, Level::Full).draw_w;
            }
            Kind::Miner(_) => {
                used += rates(site, u.kind, Level::Off).draw_w;
                miners.push(i);
            }
        }
    }
    let jth = |i: usize| match units[i].kind {
        Kind::Miner(g) => site.miners[g].power_w / site.miners[g].hashrate_ths,
        Kind::Host(_) => 0.0,
    };
    miners.sort_by(|&a, &b| jth(a).total_cmp(&jth(b)).then(a.cmp(&b)));
    for i in miners {
        let extra = rates(site, units[i].kind, Level::Full).draw_w
            - rates(site, units[i].kind, Level::Off).draw_w;
        if used + extra <= limit_w {
            used += extra;
            levels[i] = Level::Full;
        }
    }
    levels
}

pub(super) fn cap_at(site: &Site, row: &TraceRow) -> f64 {
    row.cap_w.unwrap_or(site.cap_w)
}

pub(super) fn run(site: &Site, trace: &Trace, opts: &Options) -> Report {
    let mut fleet = Fleet::new(site);
    let rows = trace.rows();
    let first_limit = cap_at(site, &rows[0]).min(site.cap_w) - site.reserve_w;
    let start_levels = static_levels(site, &fleet.units, first_limit);
    for (u, level) in fleet.units.iter_mut().zip(start_levels) {
        u.drawn = level;
        u.target = level;
    }
    // Moves name miners by device id and GPUs and hand-offs by their host.
    let mut miner_of: HashMap<String, usize> = HashMap::new();
    let mut host_of: HashMap<String, usize> = HashMap::new();
    for (i, u) in fleet.units.iter().enumerate() {
        match u.kind {
            Kind::Miner(_) => miner_of.insert(fleet.miners[u.input_index].device_id.clone(), i),
            Kind::Host(_) => host_of.insert(fleet.hosts[u.input_index].host_id.clone(), i),
        };
    }
    let events = dr_events(trace);
    let notice = opts.dr_notice;
    // Events the planner has heard of at `t` (from `notice` before their deadline to their end).
    let visible_at = |t: DateTime<Utc>, into: &mut Vec<usize>| {
        into.clear();
        into.extend(
            events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.deadline - notice <= t && t < e.ends_at)
                .map(|(i, _)| i),
        );
    };
    // When the set of events heard of changes next after `t`.
    let next_heard = |t: DateTime<Utc>| {
        events
            .iter()
            .flat_map(|e| [e.deadline - notice, e.ends_at])
            .filter(|u| *u > t)
            .min()
    };
    let mut input = PlanInput {
        now: trace.start(),
        site: SiteLimits {
            cap_w: site.cap_w,
            reserve_w: site.reserve_w,
        },
        demand_response: Vec::new(),
        market: None,
        policy: opts.policy.clone(),
        assumptions: ASSUMPTIONS,
        miners: std::mem::take(&mut fleet.miners),
        gpu_hosts: std::mem::take(&mut fleet.hosts),
        memory: PlannerMemory::default(),
    };
    let mut exec = Executor {
        plan: None,
        next_phase: 0,
        in_phase: Vec::new(),
    };
    let mut moving: Vec<usize> = Vec::new();
    let mut report = Report::default();
    let end = trace.end();
    let mut t = trace.start();
    let mut next_replan = t;
    let mut heard: Vec<usize> = Vec::new();
    let mut heard_now: Vec<usize> = Vec::new();
    let mut revisit_at: Option<DateTime<Utc>> = None;
    for (ri, row) in rows.iter().enumerate() {
        let row_end = row.time + trace.interval_len(ri);
        let cap_w = cap_at(site, row);
        let mut books = Books {
            totals: total_rates(site, &fleet.units),
            row_max_draw_w: 0.0,
            row_mining_wh: 0.0,
            row_ai_wh: 0.0,
            row_margin_usd: 0.0,
            row_mining_usd: 0.0,
            row_ai_usd: 0.0,
        };
        let mut replan_now = true;
        while t < row_end {
            // Transitions that end now.
            let mut ended = false;
            moving.retain(|&i| {
                let u = &mut fleet.units[i];
                match u.ends_at {
                    Some(e) if e <= t => {
                        let before = rates(site, u.kind, u.drawn);
                        u.drawn = u.target;
                        u.ends_at = None;
                        let after = rates(site, u.kind, u.drawn);
                        books.totals += sub(after, before);
                        report.device_switches += 1;
                        ended = true;
                        false
                    }
                    Some(_) => true,
                    None => false,
                }
            });
            visible_at(t, &mut heard_now);
            let tick = t >= next_replan;
            // A plan part-way through its phases has changed the fleet since it was made (its
            // intents went out): a tick replans it, as the controller does.
            let executing = exec
                .plan
                .as_ref()
                .is_some_and(|p| exec.next_phase < p.phases.len());
            // Inputs that changed make a plan at once; a timer tick makes one only once time
            // alone may have changed the answer (or on every tick when told not to skip).
            let due = replan_now
                || ended
                || heard_now != heard
                || (tick
                    && (!opts.skip_idle_replans
                        || executing
                        || revisit_at.is_some_and(|r| r <= t)));
            if tick {
                next_replan = t + opts.replan_every;
            }
            if due {
                fleet.miners = std::mem::take(&mut input.miners);
                fleet.hosts = std::mem::take(&mut input.gpu_hosts);
                fleet.refresh_view(site);
                input.miners = std::mem::take(&mut fleet.miners);
                input.gpu_hosts = std::mem::take(&mut fleet.hosts);
                input.now = t;
                input.market = Some(MarketView {
                    hashprice_usd_per_ph_day: row.hashprice_usd_per_ph_day,
                    energy_usd_per_mwh: row.energy_usd_per_mwh,
                    ai_usd_per_gpu_hour: Some(row.ai_usd_per_gpu_hour),
                    ai_gpu_demand: row.ai_gpu_demand,
                });
                std::mem::swap(&mut heard, &mut heard_now);
                input.demand_response.clear();
                input
                    .demand_response
                    .extend(heard.iter().map(|&i| events[i].clone()));
                let plan = planner::plan(&input);
                input.memory = plan.memory.clone();
                revisit_at = plan.revisit_at;
                report.plans += 1;
                exec.plan = Some(plan);
                exec.next_phase = 0;
                exec.in_phase.clear();
                next_replan = t + opts.replan_every;
                replan_now = false;
            }
            // Start every phase that may start now.
            let mut waiting_until: Option<DateTime<Utc>> = None;
            while let Some(plan) = &exec.plan {
                let done = exec
                    .in_phase
                    .iter()
                    .all(|&i| fleet.units[i].ends_at.is_none_or(|e| e <= t));
                let Some(phase) = plan.phases.get(exec.next_phase) else {
                    break;
                };
                if !done {
                    break;
                }
                if let Some(nb) = phase.not_before
                    && nb > t
                {
                    waiting_until = Some(nb);
                    break;
                }
                exec.in_phase.clear();
                for m in &phase.moves {
                    let unit = miner_of
                        .get(&m.device_id)
                        .or_else(|| host_of.get(&m.host_id))
                        .copied();
                    let Some(ui) = unit else { continue };
                    let u = &mut fleet.units[ui];
                    let Some(level) = level_of(site, u.kind, m.to) else {
                        continue;
                    };
                    if level != u.target {
                        u.target = level;
                        u.changed_at = Some(t);
                        if level == u.drawn {
                            // Called back before it got there: it never left.
                            u.ends_at = None;
                        } else {
                            u.ends_at = Some(t + Duration::seconds(u.transition_s));
                            moving.push(ui);
                        }
                    }
                    if u.ends_at.is_some() {
                        exec.in_phase.push(ui);
                    }
                }
                exec.in_phase.sort_unstable();
                exec.in_phase.dedup();
                exec.next_phase += 1;
                // A transition of zero seconds ends at once.
                if exec
                    .in_phase
                    .iter()
                    .any(|&i| fleet.units[i].ends_at.is_some_and(|e| e <= t))
                {
                    break;
                }
            }
            moving.sort_unstable();
            moving.dedup();
            let next_end = moving.iter().filter_map(|&i| fleet.units[i].ends_at).min();
            let mut next = row_end.min(next_replan).min(end);
            for e in [next_end, next_heard(t)].into_iter().flatten() {
                next = next.min(e);
            }
            if let Some(w) = waiting_until {
                next = next.min(w);
            }
            if next <= t {
                // Something ends at `t` itself: book nothing, go round again.
                if next_end.is_some_and(|e| e <= t) {
                    continue;
                }
                next = t + Duration::seconds(1);
            }
            let hours = (next - t).num_milliseconds() as f64 / 3.6e6;
            book(&mut report, &mut books, row, hours);
            t = next;
        }
        let hours = trace.interval_len(ri).num_milliseconds() as f64 / 3.6e6;
        if books.row_max_draw_w > cap_w + 1e-6 {
            report.cap_violations += 1;
        }
        report.intervals.push(Interval {
            time: row.time,
            mining_w: books.row_mining_wh / hours,
            ai_w: books.row_ai_wh / hours,
            cap_w,
            margin_usd_per_h: books.row_margin_usd / hours,
            mining_usd_per_h: books.row_mining_usd / hours,
            ai_usd_per_h: books.row_ai_usd / hours,
        });
    }
    report.margin_usd = report.mining_revenue_usd + report.ai_revenue_usd - report.energy_cost_usd;
    report
}

fn sub(a: Rates, b: Rates) -> Rates {
    Rates {
        draw_w: a.draw_w - b.draw_w,
        mining_w: a.mining_w - b.mining_w,
        ai_w: a.ai_w - b.ai_w,
        hashrate_ths: a.hashrate_ths - b.hashrate_ths,
        serving_gpus: a.serving_gpus - b.serving_gpus,
        firm_usd_per_h: a.firm_usd_per_h - b.firm_usd_per_h,
    }
}

/// The model, for `hours` at `row`'s prices.
pub(super) fn earnings(r: &Rates, row: &TraceRow) -> (f64, f64, f64) {
    let mining = row.hashprice_usd_per_ph_day * r.hashrate_ths / 1000.0 / 24.0;
    let demand = row.ai_gpu_demand.map_or(f64::INFINITY, f64::from);
    let ai = row.ai_usd_per_gpu_hour * r.serving_gpus.min(demand) + r.firm_usd_per_h;
    let energy = row.energy_usd_per_mwh * r.draw_w / 1e6;
    (mining, ai, energy)
}

fn book(report: &mut Report, books: &mut Books, row: &TraceRow, hours: f64) {
    if hours <= 0.0 {
        return;
    }
    let r = books.totals;
    let (mining, ai, energy) = earnings(&r, row);
    report.mining_revenue_usd += mining * hours;
    report.ai_revenue_usd += ai * hours;
    report.energy_cost_usd += energy * hours;
    books.row_margin_usd += (mining + ai - energy) * hours;
    books.row_mining_usd += mining * hours;
    books.row_ai_usd += ai * hours;
    books.row_mining_wh += r.mining_w * hours;
    books.row_ai_wh += r.ai_w * hours;
    books.row_max_draw_w = books.row_max_draw_w.max(r.draw_w);
}
