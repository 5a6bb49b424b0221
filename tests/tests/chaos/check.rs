//! The invariants the chaos run holds the site to, as judgments over what it observed: pivot-sim's
//! own view of each miner (its real draw and setpoint), what each agent holds on disk
//! (`intents.json`), and what the controller stored (`device_intents` in its SQLite file). The
//! run feeds observations in; nothing here does I/O, so each judgment is unit-tested below.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pivot_proto::model::{MinerTarget, Target};
use tokio::time::Instant;

/// What the run allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The cap in force (site cap minus reserve), W.
    pub cap_w: f64,
    /// How long the real draw may stay above the cap: the documented transition time (a miner
    /// that reboots awake comes back to its intent within one poll after its pacing).
    pub over_cap_allowed: Duration,
    /// Slack between a raise being applied and the sampler seeing it, and for the agent's
    /// read-back (`poll.settle_s`).
    pub lease_grace: chrono::Duration,
}

/// One miner as pivot-sim sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinerView {
    /// Draw at the wall now, W.
    pub power_w: f64,
    /// What it heads to in its current setting, W (0 asleep).
    pub setpoint_w: f64,
    /// Reboots since it started (a reboot of a miner whose sleep does not persist wakes it:
    /// that raise is the hardware's, not an agent's).
    pub reboots: u32,
}

/// Whether the miner's own setting went up between two looks at it, other than by a reboot.
pub fn raised(before: &MinerView, now: &MinerView) -> bool {
    now.setpoint_w > before.setpoint_w + 1.0 && now.reboots == before.reboots
}

/// An intent as one side holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldIntent {
    pub device_id: String,
    pub generation: u64,
    pub target: Target,
    pub lease_expires_at: DateTime<Utc>,
}

/// Where an intent was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Controller,
    Agent,
}

/// Counts for the report.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub draw_samples: u64,
    pub max_draw_w: f64,
    pub over_cap_episodes: u64,
    pub longest_over_cap: Duration,
    pub raises: u64,
    pub intents_seen: u64,
}

/// The judge: fed observations in order, it keeps what it needs and lists what broke.
#[derive(Debug, Default)]
pub struct Checker {
    over_cap_since: Option<Instant>,
    over_cap_reported: bool,
    targets: HashMap<(String, u64), Target>,
    generations: HashMap<(Side, String), u64>,
    pub violations: Vec<String>,
    pub tally: Tally,
}

impl Checker {
    fn violation(&mut self, what: String) {
        eprintln!("chaos: VIOLATION: {what}");
        self.violations.push(what);
    }

    /// The site's real draw at `at`: above the cap for longer than the transition time is a
    /// violation (reported once per episode).
    pub fn draw(&mut self, at: Instant, draw_w: f64, limits: &Limits) {
        self.tally.draw_samples += 1;
        self.tally.max_draw_w = self.tally.max_draw_w.max(draw_w);
        if draw_w <= limits.cap_w + 1.0 {
            if let Some(since) = self.over_cap_since.take() {
                self.tally.longest_over_cap = self.tally.longest_over_cap.max(at - since);
            }
            self.over_cap_reported = false;
            return;
        }
        let since = *self.over_cap_since.get_or_insert_with(|| {
            self.tally.over_cap_episodes += 1;
            at
        });
        let lasted = at - since;
        if lasted > limits.over_cap_allowed && !self.over_cap_reported {
            self.over_cap_reported = true;
            self.violation(format!(
                "site draw {draw_w:.0} W above the cap in force {:.0} W for {lasted:?} (allowed {:?})",
                limits.cap_w, limits.over_cap_allowed
            ));
        }
    }

    /// A miner's setting went up at `at`: the agent must hold, for it, an intent to run whose
    /// lease was valid.
    pub fn raise(
        &mut self,
        device_id: &str,
        at: DateTime<Utc>,
        held: Option<&HeldIntent>,
        limits: &Limits,
    ) {
        self.tally.raises += 1;
        match held {
            Some(h) if matches!(h.target, Target::Miner(MinerTarget::Run { .. })) => {
                if h.lease_expires_at + limits.lease_grace < at {
                    self.violation(format!(
                        "{device_id} raised at {at} under generation {} whose lease ended at {}",
                        h.generation, h.lease_expires_at
                    ));
                }
            }
            Some(h) => self.violation(format!(
                "{device_id} raised at {at} while its agent holds {:?} (generation {})",
                h.target, h.generation
            )),
            None => self.violation(format!(
                "{device_id} raised at {at} with no intent held by its agent"
            )),
        }
    }

    /// What one side holds now: a generation never names two targets, and neither side's
    /// generation for a device ever goes down (an intent written is never lost).
    pub fn intents(&mut self, side: Side, held: &[HeldIntent]) {
        for h in held {
            self.tally.intents_seen += 1;
            let key = (h.device_id.clone(), h.generation);
            match self.targets.get(&key) {
                Some(t) if *t != h.target => {
                    let t = *t;
                    self.violation(format!(
                        "{} generation {} names {:?} on the {side:?} side but {t:?} before",
                        h.device_id, h.generation, h.target
                    ));
                }
                Some(_) => {}
                None => {
                    self.targets.insert(key, h.target);
                }
            }
            let newest = self
                .generations
                .entry((side, h.device_id.clone()))
                .or_insert(0);
            if h.generation < *newest {
                let was = *newest;
                self.violation(format!(
                    "{} went back from generation {was} to {} on the {side:?} side (an intent lost)",
                    h.device_id, h.generation
                ));
            } else {
                *newest = h.generation;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        cap_w: 10_000.0,
        over_cap_allowed: Duration::from_secs(5),
        lease_grace: chrono::Duration::seconds(2),
    };

    fn intent(device: &str, generation: u64, target: Target, lease_s: i64) -> HeldIntent {
        HeldIntent {
            device_id: device.into(),
            generation,
            target,
            lease_expires_at: Utc::now() + chrono::Duration::seconds(lease_s),
        }
    }

    const RUN: Target = Target::Miner(MinerTarget::Run {
        power_target_w: None,
    });
    const SLEEP: Target = Target::Miner(MinerTarget::Sleep);

    #[test]
    fn over_the_cap_is_allowed_only_for_the_transition_time() {
        let mut c = Checker::default();
        let t0 = Instant::now();
        c.draw(t0, 12_000.0, &LIMITS);
        c.draw(t0 + Duration::from_secs(4), 12_000.0, &LIMITS);
        c.draw(t0 + Duration::from_secs(5), 9_000.0, &LIMITS);
        assert!(c.violations.is_empty());
        c.draw(t0 + Duration::from_secs(6), 12_000.0, &LIMITS);
        c.draw(t0 + Duration::from_secs(12), 12_000.0, &LIMITS);
        c.draw(t0 + Duration::from_secs(13), 12_000.0, &LIMITS);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        assert_eq!(c.tally.over_cap_episodes, 2);
    }

    #[test]
    fn a_raise_needs_a_run_intent_with_a_valid_lease() {
        let mut c = Checker::default();
        let now = Utc::now();
        c.raise("m", now, Some(&intent("m", 3, RUN, 30)), &LIMITS);
        assert!(c.violations.is_empty());
        c.raise("m", now, Some(&intent("m", 3, RUN, -10)), &LIMITS);
        c.raise("m", now, Some(&intent("m", 3, SLEEP, 30)), &LIMITS);
        c.raise("m", now, None, &LIMITS);
        assert_eq!(c.violations.len(), 3, "{:?}", c.violations);
        let asleep = MinerView {
            power_w: 50.0,
            setpoint_w: 0.0,
            reboots: 0,
        };
        let awake = MinerView {
            setpoint_w: 3500.0,
            ..asleep
        };
        assert!(raised(&asleep, &awake));
        assert!(!raised(&awake, &asleep));
        assert!(!raised(
            &asleep,
            &MinerView {
                reboots: 1,
                ..awake
            }
        ));
    }

    #[test]
    fn a_generation_reused_for_another_target_or_going_back_is_caught() {
        let mut c = Checker::default();
        c.intents(Side::Controller, &[intent("m", 4, SLEEP, 30)]);
        c.intents(Side::Agent, &[intent("m", 4, SLEEP, 30)]);
        c.intents(Side::Agent, &[intent("m", 5, RUN, 30)]);
        assert!(c.violations.is_empty());
        c.intents(Side::Controller, &[intent("m", 5, SLEEP, 30)]);
        c.intents(Side::Agent, &[intent("m", 4, SLEEP, 30)]);
        assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
    }
}
