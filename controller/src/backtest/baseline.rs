//! What the backtest's margin is measured against, per trace row and without transitions:
//! a static site (every GPU host powered, miners on in the rest of the cap, most efficient
//! first) and a hindsight bound (loads taken greedily by margin per watt under the cap in force,
//! the last one fractionally). Both keep the same reserve as the planner.

use serde::Serialize;

use super::sim::cap_at;
use super::site::{Contract, Site};
use crate::trace::{Trace, TraceRow};

/// Money over a whole trace, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub margin_usd: f64,
    pub mining_revenue_usd: f64,
    pub ai_revenue_usd: f64,
    pub energy_cost_usd: f64,
}

impl Totals {
    fn add(&mut self, mining_usd_h: f64, ai_usd_h: f64, draw_w: f64, row: &TraceRow, hours: f64) {
        let energy = row.energy_usd_per_mwh * draw_w / 1e6;
        self.mining_revenue_usd += mining_usd_h * hours;
        self.ai_revenue_usd += ai_usd_h * hours;
        self.energy_cost_usd += energy * hours;
        self.margin_usd += (mining_usd_h + ai_usd_h - energy) * hours;
    }
}

fn hours(trace: &Trace, i: usize) -> f64 {
    trace.interval_len(i).num_milliseconds() as f64 / 3.6e6
}

fn mining_usd_h(row: &TraceRow, ths: f64) -> f64 {
    row.hashprice_usd_per_ph_day * ths / 1000.0 / 24.0
}

/// Hosts serve whatever the demand; miners fill the rest of the cap, most efficient first.
pub fn static_site(site: &Site, trace: &Trace) -> Totals {
    sum(&static_site_rows(site, trace))
}

/// Perfect foresight, no switching costs: per row, loads by margin per watt while positive and
/// the cap allows, the last one fractionally.
pub fn hindsight_bound(site: &Site, trace: &Trace) -> Totals {
    sum(&hindsight_bound_rows(site, trace))
}

fn sum(rows: &[Totals]) -> Totals {
    let mut t = Totals::default();
    for r in rows {
        t.margin_usd += r.margin_usd;
        t.mining_revenue_usd += r.mining_revenue_usd;
        t.ai_revenue_usd += r.ai_revenue_usd;
        t.energy_cost_usd += r.energy_cost_usd;
    }
    t
}

/// [`static_site`] row by row.
pub fn static_site_rows(site: &Site, trace: &Trace) -> Vec<Totals> {
    let mut order: Vec<usize> = (0..site.miners.len()).collect();
    order.sort_by(|&a, &b| {
        let j = |g: usize| site.miners[g].power_w / site.miners[g].hashrate_ths;
        j(a).total_cmp(&j(b))
    });
    let mut rows = Vec::with_capacity(trace.rows().len());
    for (i, row) in trace.rows().iter().enumerate() {
        let mut t = Totals::default();
        let limit = cap_at(site, row) - site.reserve_w;
        let mut draw = 0.0;
        let mut gpus = 0.0;
        let mut firm = 0.0;
        for h in &site.gpu_hosts {
            let n = f64::from(h.count);
            draw += n * h.serving_w();
            match h.contract {
                Contract::Firm => {
                    firm += n * h.firm_usd_per_mwh.unwrap_or(0.0) * h.serving_w() / 1e6
                }
                Contract::Interruptible => gpus += n * f64::from(h.gpus),
            }
        }
        draw += site
            .miners
            .iter()
            .map(|m| f64::from(m.count) * m.sleep_w)
            .sum::<f64>();
        let mut ths = 0.0;
        for &g in &order {
            let m = &site.miners[g];
            let extra = m.power_w - m.sleep_w;
            let fit = ((limit - draw) / extra)
                .floor()
                .clamp(0.0, f64::from(m.count));
            draw += fit * extra;
            ths += fit * m.hashrate_ths;
        }
        let demand = row.ai_gpu_demand.map_or(f64::INFINITY, f64::from);
        let ai = row.ai_usd_per_gpu_hour * gpus.min(demand) + firm;
        t.add(mining_usd_h(row, ths), ai, draw, row, hours(trace, i));
        rows.push(t);
    }
    rows
}

/// One kind of load for the bound: `count` alike, each adding `extra_w` and earning `usd_h`.
struct Item {
    count: f64,
    extra_w: f64,
    usd_h: f64,
    mining: bool,
}

/// [`hindsight_bound`] row by row.
pub fn hindsight_bound_rows(site: &Site, trace: &Trace) -> Vec<Totals> {
    let mut rows = Vec::with_capacity(trace.rows().len());
    let mut items: Vec<Item> = Vec::new();
    for (i, row) in trace.rows().iter().enumerate() {
        let mut t = Totals::default();
        let limit = cap_at(site, row) - site.reserve_w;
        items.clear();
        let mut base = 0.0;
        let mut firm = 0.0;
        let mut demand = row.ai_gpu_demand.map_or(f64::INFINITY, f64::from);
        for h in &site.gpu_hosts {
            let n = f64::from(h.count);
            if h.contract == Contract::Firm {
                base += n * h.serving_w();
                firm += n * h.firm_usd_per_mwh.unwrap_or(0.0) * h.serving_w() / 1e6;
                continue;
            }
            base += n * h.drained_w();
            let gpus = f64::from(h.gpus);
            let extra_w = h.serving_w() - h.drained_w();
            // Hosts with full work, one with part, the rest idle.
            let full = (demand / gpus).floor().min(n);
            let part = (demand - full * gpus).clamp(0.0, gpus);
            let part_hosts = if full < n && part > 0.0 { 1.0 } else { 0.0 };
            demand = (demand - full * gpus - part).max(0.0);
            for (count, work) in [
                (full, gpus),
                (part_hosts, part),
                (n - full - part_hosts, 0.0),
            ] {
                if count > 0.0 {
                    items.push(Item {
                        count,
                        extra_w,
                        usd_h: row.ai_usd_per_gpu_hour * work,
                        mining: false,
                    });
                }
            }
        }
        for m in &site.miners {
            base += f64::from(m.count) * m.sleep_w;
            items.push(Item {
                count: f64::from(m.count),
                extra_w: m.power_w - m.sleep_w,
                usd_h: mining_usd_h(row, m.hashrate_ths),
                mining: true,
            });
        }
        let per_w = |it: &Item| (it.usd_h - row.energy_usd_per_mwh * it.extra_w / 1e6) / it.extra_w;
        items.sort_by(|a, b| per_w(b).total_cmp(&per_w(a)));
        let mut room = limit - base;
        let (mut mining, mut ai, mut draw) = (0.0, firm, base);
        for it in &items {
            if per_w(it) <= 0.0 || room <= 0.0 {
                break;
            }
            let n = it.count.min(room / it.extra_w);
            room -= n * it.extra_w;
            draw += n * it.extra_w;
            if it.mining {
                mining += n * it.usd_h;
            } else {
                ai += n * it.usd_h;
            }
        }
        t.add(mining, ai, draw, row, hours(trace, i));
        rows.push(t);
    }
    rows
}
