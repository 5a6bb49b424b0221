//! When to look again: the earliest time at which the same inputs could give another plan by
//! the passage of time alone. Every rule that reads the clock is here: a dwell running out (for
//! a unit whose move it holds back), the drain delay letting go of hosts, a ramp step falling
//! due, a schedule window or a demand-response lead or event starting or ending.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::decide::{self, AiNeeds, Context, Want};
use super::explain::watts;
use super::loads::{Level, Load, Unit};
use super::output::{Action, Phase, PlanMode, Waiting};

pub(super) fn revisit_at(
    cx: &Context<'_>,
    waiting: &[Waiting],
    phases: &[Phase],
    needs: &AiNeeds,
) -> Option<DateTime<Utc>> {
    let input = cx.input;
    let now = input.now;
    let mut earliest: Option<DateTime<Utc>> = None;
    let consider = |earliest: &mut Option<DateTime<Utc>>, t: Option<DateTime<Utc>>| {
        if let Some(t) = t.filter(|t| *t > now)
            && earliest.is_none_or(|e| t < e)
        {
            *earliest = Some(t);
        }
    };
    for p in phases {
        consider(&mut earliest, p.not_before);
    }
    consider(&mut earliest, needs.falls_at);
    let lead = decide::shed_lead(input);
    for e in &input.demand_response {
        consider(&mut earliest, e.deadline.checked_sub_signed(lead));
        consider(&mut earliest, Some(e.ends_at));
    }
    consider(&mut earliest, input.policy.schedule_changes_after(now));
    // Only a dwell that holds back a move the unit would make counts.
    consider(&mut earliest, waiting.iter().map(|w| w.until).min());
    earliest
}

/// What the dwell holds back: the moves units would make at today's prices but may not yet,
/// grouped by model and action, in words; each group's `until` is when the first of it may
/// move. One pass over the units inside their dwell, no list of them kept (at 100,000 devices
/// thousands are).
pub(super) fn waiting(cx: &Context<'_>, loads: &[Load], wants: &[Want]) -> Vec<Waiting> {
    if cx.mode != PlanMode::Economic {
        return Vec::new();
    }
    let input = cx.input;
    let mut groups: BTreeMap<(Action, &str), Waiting> = BTreeMap::new();
    for (l, w) in loads.iter().zip(wants) {
        let Some(until) = l.dwell_until else { continue };
        if l.in_flight || l.fixed.is_some() {
            continue;
        }
        let trimmed = matches!(l.level_now, Level::Trim(_));
        if !(w.free_on != w.on || (w.free_on && trimmed)) {
            continue;
        }
        let (model, action) = match (l.unit, w.free_on) {
            (Unit::Miner(i), true) => (input.miners[i].model.as_str(), Action::Wake),
            (Unit::Miner(i), false) => (input.miners[i].model.as_str(), Action::Sleep),
            (Unit::Host(_), true) => ("GPU host", Action::Release),
            (Unit::Host(_), false) => ("GPU host", Action::Drain),
        };
        let g = groups.entry((action, model)).or_insert_with(|| Waiting {
            model: model.to_owned(),
            action,
            devices: 0,
            power_w: 0.0,
            until,
            text: String::new(),
        });
        g.devices += 1;
        let at_w = l.level_power(l.level_now);
        g.power_w += if w.free_on {
            l.full_w - at_w
        } else {
            at_w - l.off_w
        }
        .max(0.0);
        g.until = g.until.min(until);
    }
    let dwell_s = input.policy.economic.min_dwell_s;
    groups
        .into_values()
        .map(|mut g| {
            let (noun, verb) = match g.action {
                Action::Wake => ("miner", "wake"),
                Action::Sleep => ("miner", "sleep"),
                Action::Release => ("host", "serve AI"),
                Action::Drain => ("host", "drain"),
                Action::Trim => ("miner", "trim"),
            };
            g.text = format!(
                "{}: {} {noun}{} ({}) would {verb} at today's prices but changed within the {dwell_s} s dwell; the first may move at {}",
                g.model,
                g.devices,
                if g.devices == 1 { "" } else { "s" },
                watts(g.power_w),
                g.until.format("%H:%M:%S UTC"),
            );
            g
        })
        .collect()
}
