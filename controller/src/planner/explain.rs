//! The plan's reasons in plain words: moves grouped by model, action and cause, each group with
//! the figures that decided it and a sentence for the audit log and pivotctl, e.g.
//! "energy 212 USD/MWh > S19j Pro breakeven 74: sleeping 120 miners (3.7 MW), saves 560 USD/h".

use std::collections::BTreeMap;

use super::decide::{Context, Decision};
use super::loads::{Level, Load, Unit};
use super::output::{Action, Explanation, Reason};

/// "3.7 MW", "850 kW", "120 W".
pub fn watts(w: f64) -> String {
    let a = w.abs();
    if a >= 1e6 {
        format!("{:.1} MW", w / 1e6)
    } else if a >= 1e3 {
        format!("{:.0} kW", w / 1e3)
    } else {
        format!("{w:.0} W")
    }
}

#[derive(Default)]
struct Group {
    devices: u32,
    /// Of them, miners not seen: their sleep counts for nothing until a reading shows it.
    unseen: u32,
    power_w: f64,
    gain_usd_per_h: f64,
    first: Option<Reason>,
}

fn action(l: &Load, d: &Decision) -> Action {
    let up = l.level_power(d.level) > l.level_power(l.level_now) || !l.level_now.is_on();
    match (l.unit, d.level) {
        (Unit::Host(_), Level::Off) => Action::Drain,
        (Unit::Host(_), _) => Action::Release,
        (Unit::Miner(_), Level::Off) => Action::Sleep,
        (Unit::Miner(_), _) if up => Action::Wake,
        (Unit::Miner(_), _) => Action::Trim,
    }
}

pub(super) fn explain(
    cx: &Context<'_>,
    loads: &[Load],
    decisions: &[Decision],
) -> Vec<Explanation> {
    let input = cx.input;
    let energy = input.market.map_or(0.0, |m| m.energy_usd_per_mwh);
    let mut groups: BTreeMap<(Action, &str, &'static str), Group> = BTreeMap::new();
    for (l, d) in loads.iter().zip(decisions) {
        if d.level.same_as(l.level_now) {
            continue;
        }
        let model = match l.unit {
            Unit::Miner(i) => input.miners[i].model.as_str(),
            Unit::Host(_) => "GPU host",
        };
        let a = action(l, d);
        let delta_w = l.level_power(d.level) - l.now_w;
        let g = groups.entry((a, model, d.reason.kind())).or_default();
        g.devices += 1;
        g.unseen += u32::from(l.sleeps_unseen);
        g.power_w += delta_w.abs();
        g.gain_usd_per_h += (l.value_usd_per_mwh - energy) * delta_w / 1e6;
        g.first.get_or_insert(d.reason);
    }
    groups
        .into_iter()
        .filter_map(|((a, model, kind), g)| {
            let reason = g.first?;
            let text = sentence(cx, a, model, &g, reason);
            Some(Explanation {
                model: model.to_owned(),
                action: a,
                reason: kind.to_owned(),
                devices: g.devices,
                power_w: g.power_w,
                gain_usd_per_h: g.gain_usd_per_h,
                text,
            })
        })
        .collect()
}

fn sentence(cx: &Context<'_>, a: Action, model: &str, g: &Group, reason: Reason) -> String {
    let hosts = model == "GPU host";
    let power = if g.unseen > 0 {
        format!(
            "{}; {} not seen, counted at their maximum until read",
            watts(g.power_w),
            g.unseen
        )
    } else {
        watts(g.power_w)
    };
    let noun = if hosts { "GPU hosts" } else { "miners" };
    let what = format!("{} {} {noun} ({power})", a.verb(), g.devices);
    let money = if g.gain_usd_per_h >= 0.0 {
        let verb = if matches!(a, Action::Sleep | Action::Trim | Action::Drain) {
            "saves"
        } else {
            "earns"
        };
        format!("{verb} {} USD/h", usd_per_h(g.gain_usd_per_h))
    } else {
        format!("costs {} USD/h", usd_per_h(-g.gain_usd_per_h))
    };
    match reason {
        Reason::Economic {
            value_usd_per_mwh: v,
            energy_usd_per_mwh: e,
            margin_usd_per_mwh: m,
            threshold_usd_per_mwh: t,
        } => {
            let worth = if hosts { "AI value" } else { "breakeven" };
            let cmp = if e > v { ">" } else { "<" };
            let floor = if (m >= t) == (e < v) {
                String::new()
            } else {
                format!(" (margin {m:.0} USD/MWh vs threshold {t:.0})")
            };
            format!("energy {e:.0} USD/MWh {cmp} {model} {worth} {v:.0}{floor}: {what}, {money}")
        }
        Reason::Cap {
            limit_w,
            margin_usd_per_mwh,
        } => format!(
            "cap less reserve {} reached: {what} at the lowest margin ({margin_usd_per_mwh:.0} USD/MWh), {money}",
            watts(limit_w)
        ),
        Reason::Restore { margin_usd_per_mwh } => format!(
            "room under the cap: {what} back to full power at margin {margin_usd_per_mwh:.0} USD/MWh, {money}"
        ),
        Reason::AiDemand {
            demand_gpus,
            hosts_kept,
        } => {
            let demand = demand_gpus.map_or_else(|| "all GPUs".to_owned(), |d| format!("{d} GPUs"));
            format!(
                "AI demand {demand}, {hosts_kept} interruptible hosts kept (with buffer and drain delay): {what}, {money}"
            )
        }
        Reason::Schedule => {
            let name = cx
                .schedule
                .curtail_mining
                .clone()
                .or_else(|| cx.schedule.curtail_groups.first().map(|(_, w)| w.clone()))
                .unwrap_or_default();
            format!("schedule window `{name}`: {what}, {money}")
        }
        Reason::Pin => format!("operator override: {what}"),
        Reason::Firm => format!("firm AI contract: {what}"),
        Reason::SafeMode => format!("no usable market, policy curtail-mining: {what}"),
    }
}

/// Whole dollars, or cents below 10 USD/h: a small site's gain would otherwise read "0 USD/h".
fn usd_per_h(usd_per_h: f64) -> String {
    if usd_per_h.abs() < 10.0 {
        format!("{usd_per_h:.2}")
    } else {
        format!("{usd_per_h:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::usd_per_h;

    #[test]
    fn gains_below_10_usd_per_h_show_cents() {
        assert_eq!(usd_per_h(0.4242), "0.42");
        assert_eq!(usd_per_h(0.0), "0.00");
        assert_eq!(usd_per_h(9.994), "9.99");
        assert_eq!(usd_per_h(10.0), "10");
        assert_eq!(usd_per_h(560.4), "560");
    }
}
