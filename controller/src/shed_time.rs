//! How long shedding takes on this site, measured: the controller times every phase that
//! releases power (miners to sleep, GPU caps down) from its first intent to the executor seeing
//! it confirmed, and starts a demand-response or schedule-window shed at least twice the longest
//! recent one before its deadline, whatever the policy's `shed_lead_s` says. A policy written for
//! a fleet that confirms in a minute must not miss a deadline on a site (or a loaded simulation)
//! where confirming takes longer.

use std::collections::VecDeque;

/// Recent shed phases remembered.
const KEPT: usize = 8;
/// The lead is at least this many times the longest recent shed.
const MARGIN: f64 = 2.0;
/// A lead learned from measurements never exceeds this (a phase that hung until its timeout is
/// not a measure of the fleet), seconds.
const MAX_LEARNED_LEAD_S: u64 = 6 * 3600;

/// The last few shed phases' durations, seconds on the controller's clock.
#[derive(Debug, Default, Clone)]
pub struct ShedTimes {
    recent: VecDeque<f64>,
}

impl ShedTimes {
    /// A shed phase took `seconds` to be confirmed, or at least that long when it was superseded
    /// before it was. Negative or non-finite values (a clock step) are not measures.
    pub fn record(&mut self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(seconds);
    }

    /// The longest recent shed, seconds.
    pub fn longest(&self) -> Option<f64> {
        self.recent.iter().copied().reduce(f64::max)
    }
}

/// The shed lead to plan with: the policy's, or [`MARGIN`] times the longest recent shed when
/// that is longer (bounded by [`MAX_LEARNED_LEAD_S`]), whole seconds.
pub fn effective_lead_s(policy_lead_s: u64, longest_shed_s: Option<f64>) -> u64 {
    let Some(longest) = longest_shed_s.filter(|s| s.is_finite() && *s > 0.0) else {
        return policy_lead_s;
    };
    let learned = (longest * MARGIN).ceil().min(MAX_LEARNED_LEAD_S as f64);
    // In range: finite, positive, at most MAX_LEARNED_LEAD_S.
    let learned = learned as u64;
    policy_lead_s.max(learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_measure_keeps_the_policy_lead() {
        assert_eq!(effective_lead_s(600, None), 600);
        assert_eq!(effective_lead_s(5, ShedTimes::default().longest()), 5);
    }

    #[test]
    fn a_slow_shed_lengthens_a_short_lead_and_a_fast_one_leaves_it() {
        let mut t = ShedTimes::default();
        t.record(2.0);
        t.record(12.4);
        t.record(3.0);
        assert_eq!(t.longest(), Some(12.4));
        assert_eq!(effective_lead_s(5, t.longest()), 25);
        assert_eq!(effective_lead_s(600, t.longest()), 600);
    }

    #[test]
    fn only_the_last_few_count_and_nonsense_is_ignored() {
        let mut t = ShedTimes::default();
        t.record(100.0);
        for _ in 0..KEPT {
            t.record(1.0);
        }
        t.record(f64::NAN);
        t.record(-5.0);
        t.record(f64::INFINITY);
        assert_eq!(t.longest(), Some(1.0));
        t.record(1e12);
        assert_eq!(effective_lead_s(0, t.longest()), MAX_LEARNED_LEAD_S);
    }

    proptest! {
        /// Learning only ever lengthens the lead, and only by what was measured.
        #[test]
        fn the_lead_never_shrinks(policy in 0u64..100_000, shed in proptest::option::of(-10.0f64..1e6)) {
            let lead = effective_lead_s(policy, shed);
            prop_assert!(lead >= policy);
            if lead > policy {
                let s = shed.unwrap_or(0.0);
                prop_assert!(lead as f64 >= s * MARGIN || lead == MAX_LEARNED_LEAD_S);
                prop_assert!(lead <= MAX_LEARNED_LEAD_S);
            }
        }
    }
}
