//! When to look again: the earliest time at which the same inputs could give another plan by
//! the passage of time alone. Every rule that reads the clock is here: a dwell running out (for
//! a unit whose move it holds back), the drain delay letting go of hosts, a ramp step falling
//! due, a schedule window or a demand-response lead or event starting or ending.

use chrono::{DateTime, Utc};

use super::decide::{self, AiNeeds, Context, Want};
use super::loads::{Level, Load};
use super::output::{Phase, PlanMode};

pub(super) fn revisit_at(
    cx: &Context<'_>,
    loads: &[Load],
    wants: &[Want],
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
    if cx.mode == PlanMode::Economic {
        for (l, w) in loads.iter().zip(wants) {
            let Some(until) = l.dwell_until else { continue };
            if l.in_flight || l.fixed.is_some() || earliest.is_some_and(|e| until >= e) {
                continue;
            }
            // Only a dwell that holds back a move the unit would make counts.
            let free = decide::want(
                &Load {
                    may_move: true,
                    ..*l
                },
                cx,
            );
            let trimmed = matches!(l.level_now, Level::Trim(_));
            if free.on != w.on || (free.on && trimmed) {
                consider(&mut earliest, Some(until));
            }
        }
    }
    earliest
}
